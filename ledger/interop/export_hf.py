"""The ``hf`` and ``peft`` exports: the folders ``from_pretrained`` loads.

This module owns two layouts. ``hf`` is what ``PreTrainedModel.save_pretrained``
writes: the files a commit holds under ``hf_files`` (``config.json``,
``generation_config.json``, tokenizer / processor files, custom code for
``auto_map`` models: see ``ledger.adapters._hf_files.hf_files``) and the model's
weights as ``model.safetensors``, or as ``model-00001-of-0000N.safetensors``
shards with ``model.safetensors.index.json`` above ``max_shard_size``. ``peft``
is what ``PeftModel.save_pretrained`` writes: ``adapter_config.json`` and
``adapter_model.safetensors`` holding only the adapter's tensors, named as
PEFT names them on disk. Neither imports transformers or peft; both read a
checked-out state and never write inside a ledger.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from ledger.errors import ExportError
from ledger.interop.source import ExportJob, prepare_dir, readable
from ledger.state.files import File

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_RESERVED = {WEIGHTS, INDEX, ADAPTER_WEIGHTS}


def model_tensors(state: Mapping[Any, Any], key: str, rev: str) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` state dict under ``state[key]`` (a committed model).

    Raises:
        ExportError: there is no such key, or it holds something other than tensors.

    Example:
        >>> model_tensors({"model": {"w": torch.ones(1)}}, "model", "HEAD")
        {'w': tensor([1.])}
    """
    sub = state.get(key)
    if not isinstance(sub, Mapping) or not sub:
        have = ", ".join(repr(k) for k in state) or "nothing"
        raise ExportError(
            f"commit {rev} has no model state dict under {key!r} (it has {have}); "
            f"commit the model as {{{key!r}: model, ...}} or pass model_key="
        )
    out: dict[str, torch.Tensor] = {}
    for name, value in sub.items():
        if not isinstance(value, torch.Tensor):
            raise ExportError(
                f"state[{key!r}][{name!r}] in commit {rev} is a {type(value).__name__}, not a "
                "tensor: a from_pretrained folder holds only tensors; export it as --format torch"
            )
        out[str(name)] = value
    return out


def commit_files(state: Mapping[Any, Any], key: str, rev: str) -> dict[str, File]:
    """The ``File`` values under ``state[key]`` by relative path (nested mappings joined by ``/``).

    Raises:
        ExportError: a name is absolute, climbs out with ``..``, or a value is not a File.

    Example:
        >>> commit_files({"hf_files": {"config.json": File(b"{}")}}, "hf_files", "HEAD")
        {'config.json': File(2 bytes, blake3 6e46dd10defc)}
    """
    found: dict[str, File] = {}

    def walk(value: Any, prefix: str) -> None:
        if isinstance(value, File):
            found[_safe_name(prefix, rev)] = value
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, f"{prefix}/{k}" if prefix else str(k))
        else:
            raise ExportError(
                f"state[{key!r}] {prefix!r} in commit {rev} is a {type(value).__name__}; "
                "only ledger.File values belong there"
            )

    sub = state.get(key, {})
    walk(sub, "")
    return found


def _safe_name(name: str, rev: str) -> str:
    parts = PurePosixPath(name).parts
    if not name or name.startswith("/") or "\\" in name or any(p in ("..", ".") for p in parts):
        raise ExportError(
            f"file name {name!r} in commit {rev} is not a plain relative path; "
            "it would be written outside the export folder"
        )
    return name


def write_files(files: Mapping[str, File], out: Path) -> None:
    """Write each file at its relative path under ``out``, refusing names of weight files."""
    for name, f in files.items():
        if name in _RESERVED or name.endswith(".safetensors"):
            raise ExportError(
                f"the committed file {name!r} would overwrite the exported weights; rename it"
            )
        f.write(out / name)


def unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies where needed, tied names cloned (safetensors refuses shared storage).

    Every name is kept: ``from_pretrained`` finds tied weights under both names
    and ties them again as the model's config says.

    Example:
        >>> w = torch.ones(2)
        >>> sorted(unshared({"a": w, "b": w}))
        ['a', 'b']
    """
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*")


def shard_bytes(size: int | str) -> int:
    """Bytes from a size: an int, or text like ``5GB`` (decimal, as the Hub), ``512MiB``, ``3000``.

    Raises:
        ExportError: not a positive size in one of those units.

    Example:
        >>> shard_bytes("5GB"), shard_bytes("1KiB"), shard_bytes(3000)
        (5000000000, 1024, 3000)
    """
    n: float = -1
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    elif isinstance(size, str) and (m := _SIZE.fullmatch(size)) and m[2].upper() in _UNITS:
        n = float(m[1]) * _UNITS[m[2].upper()]
    if n < 1:
        raise ExportError(f"max_shard_size={size!r} is not a size; use e.g. 5GB, 500MB, 2GiB")
    return int(n)


def save_sharded(
    tensors: Mapping[str, torch.Tensor],
    out: Path,
    *,
    max_shard_size: int | str,
    metadata: Mapping[str, str],
    wrote: Callable[[int], None] | None = None,
) -> list[str]:
    """Write ``tensors`` as ``model.safetensors`` or shards plus index; the names written.

    ``wrote`` is told the tensor bytes of each shard once it is written.

    Sharding is ``huggingface_hub.split_torch_state_dict_into_shards`` (what
    ``save_pretrained`` uses), so shard names and the index match it.

    Example:
        >>> save_sharded({"w": torch.ones(2)}, Path("out"), max_shard_size="5GB", metadata={})  # doctest: +SKIP
        ['model.safetensors']
    """
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    tensors = unshared(tensors)
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=shard_bytes(max_shard_size))
    meta = {"format": "pt", **metadata}
    for name, names in split.filename_to_tensors.items():
        save_file({n: tensors[n] for n in names}, str(out / name), metadata=meta)
        readable(out / name)
        if wrote is not None:
            wrote(sum(tensors[n].nbytes for n in names))
    written = list(split.filename_to_tensors)
    if split.is_sharded:
        index = {"metadata": {**split.metadata, **metadata}, "weight_map": split.tensor_to_filename}
        (out / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        written.append(INDEX)
    return written


def write_hf(
    job: ExportJob,
    *,
    model_key: str = "model",
    files_key: str = "hf_files",
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Write the ``save_pretrained`` layout of a checked-out state into ``job.out``.

    Raises:
        ExportError: the commit holds no ``config.json`` under ``files_key`` or
            no model under ``model_key``, or ``out`` is not empty (without ``force``).

    Example:
        >>> write_hf(ExportJob(lg.checkout("v1"), lg.get("v1"), Path("hf-out")))  # doctest: +SKIP
    """
    state, commit, out = job.state, job.commit, job.out
    rev = job.rev
    files = commit_files(state, files_key, rev)
    if "config.json" not in files:
        raise ExportError(
            f"commit {rev} holds no config.json under {files_key!r}, so from_pretrained could "
            "not load an export of it; commit the model with its files: "
            f"{{'model': model, {files_key!r}: hf_files(model, tokenizer)}} "
            "(ledger.adapters._hf_files; the Transformers adapter does this itself)"
        )
    if ADAPTER_CONFIG in files:
        raise ExportError(
            f"commit {rev} holds a PEFT model (its files include {ADAPTER_CONFIG}), whose "
            "weights from_pretrained cannot load as a model; export it with --format peft "
            "and load it onto its base, or commit model.merge_and_unload() for a full model"
        )
    tensors = model_tensors(state, model_key, rev)
    shard_bytes(max_shard_size)  # refused before anything is written
    prepare_dir(out, force=job.force)
    write_files(files, out)
    save_sharded(
        tensors,
        out,
        max_shard_size=max_shard_size,
        metadata={"ledger.commit": commit.id},
        wrote=job.wrote,
    )


def adapter_tensors(tensors: Mapping[str, torch.Tensor], adapter: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors of a PEFT model's state dict, named as PEFT saves them.

    PEFT keeps an adapter's parameters under a module named after it
    (``...q_proj.lora_A.default.weight``) and saves them without that name
    (``...q_proj.lora_A.weight``); the frozen base (``base_layer``) is not part
    of the adapter.

    Example:
        >>> sorted(adapter_tensors({"m.lora_A.default.weight": torch.ones(1),
        ...                         "m.base_layer.weight": torch.ones(1)}, "default"))
        ['m.lora_A.weight']
    """
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        parts = name.split(".")
        if adapter in parts[:-1]:
            out[".".join(p for p in parts if p != adapter)] = t
    return out


def write_peft(
    job: ExportJob,
    *,
    model_key: str = "model",
    files_key: str = "hf_files",
    adapter_name: str = "default",
) -> None:
    """Write a PEFT adapter folder (``adapter_config.json``, ``adapter_model.safetensors``).

    Raises:
        ExportError: the commit holds no ``adapter_config.json`` or no tensors of
            adapter ``adapter_name``.

    Example:
        >>> write_peft(ExportJob(lg.checkout("HEAD"), lg.get("HEAD"), Path("adapter")))  # doctest: +SKIP
    """
    state, out = job.state, job.out
    rev = job.rev
    files = commit_files(state, files_key, rev)
    if ADAPTER_CONFIG not in files:
        raise ExportError(
            f"commit {rev} holds no {ADAPTER_CONFIG} under {files_key!r}; commit the PEFT model "
            f"with {{'model': peft_model, {files_key!r}: hf_files(peft_model)}}"
        )
    tensors = adapter_tensors(model_tensors(state, model_key, rev), adapter_name)
    if not tensors:
        raise ExportError(
            f"state[{model_key!r}] in commit {rev} holds no tensors of adapter {adapter_name!r}; "
            "pass adapter_name= (the name given to get_peft_model / add_adapter)"
        )
    prepare_dir(out, force=job.force)
    files[ADAPTER_CONFIG].write(out / ADAPTER_CONFIG)
    from safetensors.torch import save_file

    save_file(unshared(tensors), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    readable(out / ADAPTER_WEIGHTS)
    job.wrote(sum(t.nbytes for t in tensors.values()))
