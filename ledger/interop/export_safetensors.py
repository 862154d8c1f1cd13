"""The ``safetensors`` export: a commit's whole state as safetensors files plus metadata.json.

This module owns the layout of ``ledger checkout --out`` and of a Hub push's
``weights/`` (see docs/cli.md, docs/interop.md): one ``<key>.safetensors``
per top-level key of the state that holds tensors, every ``ledger.File``
written as a file under its ``/`` path, and ``metadata.json`` with the
commit and every other value. It reads a checked-out state (or a
:class:`CommitReader`, which checks one out) and must never write inside a
ledger.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import torch

from ledger.errors import ExportError
from ledger.history.records import Commit
from ledger.interop.source import CommitReader, prepare_dir, readable
from ledger.progress import ProgressFn, tell
from ledger.state.files import File
from ledger.state.rng import RNG_KEY

METADATA_FILE = "metadata.json"
FILES_DIR = "files"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class OutDir(msgspec.Struct):
    """What an export wrote: safetensors file name -> top-level key, File leaves, and counts."""

    commit: str
    out: str
    files: dict[str, str]
    tensors: int
    values: int
    file_values: dict[str, str] = {}


def _holds_tensors(value: Any) -> bool:
    """Whether ``value`` is or holds a tensor-like leaf or a :class:`File` (kept apart)."""
    if isinstance(value, torch.Tensor | np.ndarray | torch.Generator | File):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensors(v) for v in value)
    return False


def _as_tensor(value: torch.Tensor | np.ndarray | torch.Generator) -> torch.Tensor:
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.detach().cpu()


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    """(path, leaf, is_tensor or File); a subtree without either is one leaf, kept whole."""
    if not _holds_tensors(value):
        yield path, value, False
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{path}/{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}/{i}" if path else str(i))
    else:
        yield path, value, True


def _file_name(key: str, taken: set[str]) -> str:
    stem = _UNSAFE.sub("_", key).lstrip(".") or "_"
    name, n = f"{stem}.safetensors", 2
    while name in taken or name == METADATA_FILE:
        name, n = f"{stem}-{n}.safetensors", n + 1
    return name


def _plain(obj: Any) -> Any:
    """JSON for what msgspec cannot encode itself: paths, numpy scalars."""
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


def write_safetensors_dir(
    state: Mapping[Any, Any],
    commit: Commit,
    out: Path,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> OutDir:
    """Write a checked-out state as safetensors files and ``metadata.json`` into ``out``.

    ``progress(done, total, "parts")`` is told each top-level key written (``ledger.progress``).

    Each top-level key whose subtree holds tensors becomes ``<key>.safetensors``
    (tensor names are the ``/``-joined path below the key; a bare tensor is named
    after the key). Tensors are made contiguous; tensors sharing storage are
    cloned, which safetensors requires. ``__rng__`` is left out. Each
    :class:`File` is written as a file at its ``/`` path (each part made safe; a
    top-level one under ``files/``), listed in ``metadata.json`` under
    ``file_values``. Every other
    value goes into ``metadata.json`` under its full ``/`` path (a subtree without
    tensors kept whole), next to the commit's metadata.

    Raises:
        ExportError: ``out`` is not empty (and not ``force``), or safetensors
            refuses a tensor (the top-level key is named).

    Example:
        >>> write_safetensors_dir(lg.checkout("v1"), lg.get("v1"), Path("export"))  # doctest: +SKIP
        OutDir(commit='0d9f...', out='export', files={'model.safetensors': 'model'}, ...)
    """
    from safetensors.torch import save_file

    prepare_dir(out, force=force)
    files: dict[str, str] = {}
    file_values: dict[str, str] = {}
    values: dict[str, Any] = {}
    n_tensors = 0
    parts = [key for key in state if key != RNG_KEY]
    for done, key in enumerate(parts):
        tell(progress, done, len(parts), "parts")
        sub = state[key]
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for path, leaf, is_tensor in _leaves(sub, ""):
            full = f"{key}/{path}" if path else str(key)
            if not is_tensor:
                values[full] = leaf
                continue
            if isinstance(leaf, File):
                parts = [_UNSAFE.sub("_", p).lstrip(".") or "_" for p in full.split("/")]
                rel = "/".join(parts if len(parts) > 1 else [FILES_DIR, *parts])
                leaf.write(out / rel)  # a top-level file goes under files/, never by the weights
                file_values[full] = rel
                continue
            t = _as_tensor(leaf).contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and ptr in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[path or str(key)] = t
        if not tensors:
            continue
        name = _file_name(str(key), set(files))
        try:
            save_file(
                tensors,
                str(out / name),
                metadata={"format": "pt", "ledger.commit": commit.id, "ledger.key": str(key)},
            )
        except (ValueError, TypeError, RuntimeError) as e:
            raise ExportError(f"safetensors cannot store part of {key!r}: {e}") from e
        readable(out / name)
        files[name] = str(key)
        n_tensors += len(tensors)
    tell(progress, len(parts), len(parts), "parts")
    doc = {"commit": commit, "files": files, "file_values": file_values, "values": values}
    encoded = msgspec.json.encode(doc, enc_hook=_plain)
    (out / METADATA_FILE).write_bytes(msgspec.json.format(encoded) + b"\n")
    return OutDir(
        commit=commit.id,
        out=str(out),
        files=files,
        tensors=n_tensors,
        values=len(values),
        file_values=file_values,
    )


def export_safetensors(
    reader: CommitReader, commit_id: str, out: Path, *, force: bool = False
) -> OutDir:
    """Check out commit ``commit_id`` (a full id) and write it with :func:`write_safetensors_dir`.

    Example:
        >>> export_safetensors(lg, lg.head.id, Path("export")).files  # doctest: +SKIP
        {'model.safetensors': 'model'}
    """
    commit = Commit.from_record(commit_id, reader.record(commit_id))
    return write_safetensors_dir(reader.checkout(commit_id), commit, out, force=force)
