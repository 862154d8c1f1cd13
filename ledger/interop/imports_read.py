"""Reading other tools' checkpoint files without executing anything: torch.save, safetensors, DCP.

This module owns the file-level readers of ``ledger import`` and their
errors. ``torch.save`` files are read only with ``torch.load(weights_only=True)``
under exactly the allow-list of the framework that wrote them (plus the
types the user allows by name); a refusal is an :class:`ImportRefusedError`
naming the file and the type, never a fallback to unpickling. safetensors
files are read single or sharded (an index naming a missing shard is an
error before anything is read). A ``torch.distributed.checkpoint`` directory's
``.metadata`` pickle is read with a restricted unpickler that admits only
DCP's own metadata types. Nothing here writes anything.
"""

from __future__ import annotations

import codecs
import importlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ledger.errors import ImportRefusedError, ImportSourceError

_NP_CORE = np._core if hasattr(np, "_core") else np.core  # numpy >= 2 moved it
TRAINER_RNG_ALLOW: tuple[Any, ...] = (
    _NP_CORE.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
)
"""transformers ``trainer_pt_utils.safe_globals()``: what the Trainer allows for ``rng_state.pth``."""

ACCELERATE_ALLOW: tuple[Any, ...] = (
    _NP_CORE.multiarray._reconstruct,
    np.ndarray,
    codecs.encode,
    np.dtype,
    type(np.dtype(np.uint32)),
)
"""accelerate ``utils.other.TORCH_SAFE_GLOBALS``: what ``accelerate.load_state`` allows for every file."""

_BLOCKED = re.compile(r"unsupported GLOBAL (\S+) whose module (\S+) is blocked")
_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global|but got <class '([\w.]+)'>")
CHUNK = 8 << 20


def resolve_allowed(names: Iterable[str]) -> tuple[Any, ...]:
    """The objects ``module.Type`` names stand for, to pass to ``torch.serialization.safe_globals``.

    Importing the named module is the one thing that runs code, and only for
    a type the user named deliberately.

    Raises:
        ImportSourceError: a name is not ``module.Type`` or does not exist.

    Example:
        >>> resolve_allowed(["collections.OrderedDict"])
        (<class 'collections.OrderedDict'>,)
    """
    out: list[Any] = []
    for name in names:
        module, _, attr = name.rpartition(".")
        found: Any = None
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
            try:
                found = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for part in parts[cut:]:
                    found = getattr(found, part)
            except AttributeError:
                found = None
            break
        if not module or not attr or found is None:
            raise ImportSourceError(
                f"--allow {name!r} names no importable type; give it as module.Type, "
                "e.g. --allow collections.OrderedDict",
                path=name,
            )
        out.append(found)
    return tuple(out)


def load_torch(path: Path, allow: Sequence[Any] = (), *, data: bytes | None = None) -> Any:
    """What ``torch.load(path, weights_only=True)`` reads with ``allow`` as extra safe globals.

    ``data`` reads those bytes instead of the file (DCP items), still naming ``path``.

    Raises:
        ImportRefusedError: the file holds a type not allowed; the message names it and how to allow it.
        ImportSourceError: the file is truncated, damaged or not a ``torch.save`` file.

    Example:
        >>> torch.save({"w": torch.ones(2)}, "/tmp/_ledger_doc.pt")
        >>> load_torch(Path("/tmp/_ledger_doc.pt"))["w"]
        tensor([1., 1.])
    """
    try:
        with torch.serialization.safe_globals(list(allow)):
            if data is not None:
                return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            try:  # tensors stay in the file's pages: many checkpoints can be held at once
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except pickle.UnpicklingError as e:
        text = str(e)
        lines = text.splitlines() or [type(e).__name__]
        if "weights only" not in text.lower() and "weightsunpickler" not in text.lower():
            raise ImportSourceError(
                f"{path} cannot be read as a torch.save file (truncated or damaged?): {lines[0]}",
                path=str(path),
            ) from None
        blocked = _BLOCKED.search(text)
        if blocked is not None:
            raise ImportRefusedError(
                f"{path} holds {blocked.group(1)}, from the module {blocked.group(2)} that "
                "torch.load(weights_only=True) blocks outright (it can run commands); nothing was "
                "imported, and no --allow can admit it. Do not load this file",
                path=str(path),
                type=blocked.group(1),
            ) from None
        match = _GLOBAL.search(text)
        if match is None:
            detail = next(
                (ln.strip() for ln in lines[1:] if ln.strip() and "torch.load" not in ln), lines[0]
            )
            raise ImportRefusedError(
                f"{path} holds something torch.load(weights_only=True) refuses ({detail}); "
                "nothing was imported",
                path=str(path),
            ) from None
        kind = match.group(1) or match.group(2)
        raise ImportRefusedError(
            f"{path} holds a {kind}, which torch.load(weights_only=True) refuses; nothing was "
            f"imported. If you trust this file, allow that type deliberately: "
            f"`ledger import ... --allow {kind}` (Python: allow=[{kind!r}]); it is passed to "
            "torch.serialization.safe_globals, never to a plain unpickler",
            path=str(path),
            type=kind,
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as e:
        raise ImportSourceError(
            f"{path} cannot be read as a torch.save file (truncated or damaged?): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            path=str(path),
        ) from None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, by name (mapped from the file, not read yet).

    Raises:
        ImportSourceError: the file is truncated or not safetensors.

    Example:
        >>> from safetensors.torch import save_file
        >>> save_file({"w": torch.zeros(2)}, "/tmp/_ledger_doc.safetensors")
        >>> load_safetensors(Path("/tmp/_ledger_doc.safetensors"))["w"]
        tensor([0., 0.])
    """
    try:
        return load_file(str(path))  # backed by the file's pages (mmap), not copied
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ImportSourceError(
            f"{path} cannot be read as safetensors (truncated or damaged?): {e}", path=str(path)
        ) from None


def shard_files(index: Path) -> dict[str, list[str]]:
    """Shard file name -> tensor names, from a ``*.safetensors.index.json`` (or ``.bin`` index).

    Raises:
        ImportSourceError: the index is not valid JSON of that form, names a
            file outside its directory, or a shard that does not exist.
    """
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, KeyError, TypeError) as e:
        raise ImportSourceError(
            f"{index} is not a sharded-weights index ({type(e).__name__}: {e})", path=str(index)
        ) from None
    shards: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise ImportSourceError(
                f"{index} names the shard {shard!r} for {name!r}; shards must be files beside "
                "the index",
                path=str(index),
            )
        shards.setdefault(shard, []).append(str(name))
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise ImportSourceError(
                f"{index} names the shard {shard}, which is missing from {index.parent}; "
                "copy the whole checkpoint directory",
                path=str(index.parent / shard),
            )
    return shards


def load_sharded(index: Path, allow: Sequence[Any] = ()) -> dict[str, torch.Tensor]:
    """Every tensor a sharded index names, read from its shards (safetensors or torch.save).

    Raises:
        ImportSourceError: a shard is missing, damaged, or lacks a tensor the index names.
    """
    out: dict[str, torch.Tensor] = {}
    for shard, names in shard_files(index).items():
        path = index.parent / shard
        tensors = (
            load_safetensors(path) if shard.endswith(".safetensors") else load_torch(path, allow)
        )
        for name in names:
            if name not in tensors:
                raise ImportSourceError(
                    f"{index} says {name!r} is in {shard}, which does not hold it", path=str(path)
                )
            out[name] = tensors[name]
    return out


def hash_file(path: Path) -> tuple[int, str]:
    """``(size, blake3 hex)`` of a file, read in 8 MiB pieces."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    size = 0
    with path.open("rb") as f:
        while piece := f.read(CHUNK):
            hasher.update(piece)
            size += len(piece)
    return size, hasher.hexdigest()
