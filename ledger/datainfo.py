"""Where the data came from: a commit's ``data`` metadata, filled from what the framework knows.

This module owns describing training data without reading it: a Hugging Face
``datasets`` ``Dataset`` or ``DatasetDict`` (name, config, version, split
sizes, the fingerprint ``datasets`` keeps of every transform applied), a
``torch`` ``DataLoader`` (its dataset's class and length, batch size,
sampler, and the dataset itself when it is one of the above), any sized
dataset (class and length), and the content hashes of data files the user
names (blake3, computed once per process for a file whose size and mtime did
not change). Adapters call :func:`describe` on what their framework holds
and :func:`merged` to let what the user passes as ``data=`` win. Nothing here
imports ``datasets`` or ``torch``: objects are recognised by their type's
module and attributes, so describing costs nothing when those are unused.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ledger.errors import DataFileError

#: (real path, size, mtime_ns) -> blake3 hex: a file is hashed once per process
_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_LOCK = threading.Lock()
_READ = 8 << 20


def describe(obj: Any) -> dict[str, Any] | None:
    """What can be said about a dataset or data loader without reading it (None: nothing).

    Example:
        >>> describe(list(range(10)))
        {'class': 'builtins.list', 'length': 10}
    """
    if obj is None:
        return None
    kind = type(obj)
    module = kind.__module__ or ""
    if module.startswith("datasets") and hasattr(obj, "_fingerprint"):
        return _hf_dataset(obj)
    if module.startswith("datasets") and isinstance(obj, Mapping):  # DatasetDict
        splits = {str(k): _hf_dataset(v) for k, v in obj.items()}
        return {"class": _qualname(kind), "splits": splits}
    if _is_loader(obj):
        return _loader(obj)
    if isinstance(obj, (list, tuple)) and obj and all(_is_loader(x) for x in obj):
        return {"loaders": [_loader(x) for x in obj]}  # several loaders (Lightning, Accelerate)
    if isinstance(obj, Mapping) and obj and all(_is_loader(x) for x in obj.values()):
        return {"loaders": {str(k): _loader(x) for k, x in obj.items()}}
    out: dict[str, Any] = {"class": _qualname(kind)}
    length = _length(obj)
    if length is not None:
        out["length"] = length
    return out


def _is_loader(obj: Any) -> bool:
    """A ``torch`` ``DataLoader`` or anything shaped like one."""
    return hasattr(obj, "dataset") and hasattr(obj, "batch_size") and hasattr(obj, "sampler")


def _hf_dataset(ds: Any) -> dict[str, Any]:
    info = getattr(ds, "info", None)
    out: dict[str, Any] = {"class": _qualname(type(ds))}
    for key, attr in (
        ("name", "dataset_name"),
        ("config", "config_name"),
        ("builder", "builder_name"),
    ):
        value = getattr(info, attr, None) if info is not None else None
        if value:
            out[key] = str(value)
    version = getattr(info, "version", None) if info is not None else None
    if version is not None and str(version) not in ("", "0.0.0"):
        out["version"] = str(version)
    split = getattr(ds, "split", None)
    if split is not None:
        out["split"] = str(split)
    rows = getattr(ds, "num_rows", None)
    if isinstance(rows, int):
        out["num_rows"] = rows
    fingerprint = getattr(ds, "_fingerprint", None)
    if fingerprint:
        out["fingerprint"] = str(fingerprint)
    revision = _hub_revision(ds)
    if revision:
        out["revision"] = revision
    return out


def _hub_revision(ds: Any) -> str | None:
    """The Hub revision a dataset was loaded at, where ``datasets`` recorded one."""
    info = getattr(ds, "info", None)
    for holder in (info, getattr(ds, "_info", None)):
        value = getattr(holder, "revision", None) if holder is not None else None
        if value:
            return str(value)
    return None


def _loader(dl: Any) -> dict[str, Any]:
    dataset = dl.dataset
    out: dict[str, Any] = {"class": _qualname(type(dl))}
    inner = describe(dataset)
    if inner is not None:
        out["dataset"] = inner
    if isinstance(dl.batch_size, int):
        out["batch_size"] = dl.batch_size
    sampler = getattr(dl, "sampler", None)
    if sampler is not None:
        out["sampler"] = _qualname(type(sampler))
    if getattr(dl, "drop_last", None) is not None:
        out["drop_last"] = bool(dl.drop_last)
    batches = _length(dl)
    if batches is not None:
        out["batches"] = batches
    return out


def _length(obj: Any) -> int | None:
    try:
        n = len(obj)
    except Exception:  # an iterable dataset has no length; a broken __len__ is not ours to fix
        return None
    return n if isinstance(n, int) else None


def _qualname(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def file_hashes(paths: Iterable[str | os.PathLike[str]]) -> dict[str, dict[str, Any]]:
    """Each named data file's blake3 and size (a folder: every file under it), by path.

    A file is read once per process while its size and modification time stay
    the same, so naming it on every commit costs a ``stat``.

    Raises:
        DataFileError: a path does not exist or cannot be read.

    Example:
        >>> file_hashes(["train.jsonl"])  # doctest: +SKIP
        {'train.jsonl': {'blake3': '9f2c...', 'bytes': 1048576}}
    """
    out: dict[str, dict[str, Any]] = {}
    for given in paths:
        path = Path(given)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            out[str(file)] = _hash_file(file)
    return out


def _hash_file(path: Path) -> dict[str, Any]:
    import blake3

    try:
        st = path.stat()
        key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
        with _LOCK:
            known = _FILE_HASHES.get(key)
        if known is None:
            h = blake3.blake3()
            with path.open("rb") as f:
                while block := f.read(_READ):
                    h.update(block)
            known = h.hexdigest()
            with _LOCK:
                _FILE_HASHES[key] = known
    except OSError as e:
        raise DataFileError(
            f"data file {path} cannot be read to record its hash ({e.strerror or e}); "
            "fix the path given as data_files="
        ) from e
    return {"blake3": known, "bytes": st.st_size}


def merged(auto: Mapping[str, Any] | None, user: Mapping[str, Any] | None) -> dict[str, Any]:
    """``auto`` (what the framework knows) under ``user`` (``data=``): the user's keys win.

    Example:
        >>> merged({"train": {"length": 10}, "eval": {"length": 2}}, {"train": "my-set"})
        {'train': 'my-set', 'eval': {'length': 2}}
    """
    return {**(auto or {}), **(user or {})}


def described(
    user: Mapping[str, Any] | None = None,
    files: Iterable[str | os.PathLike[str]] = (),
    **sources: Any,
) -> dict[str, Any]:
    """The ``data`` metadata of a commit: each named source described, file hashes, then ``user``.

    Example:
        >>> described({"name": "wikitext"}, train=list(range(4)))
        {'train': {'class': 'builtins.list', 'length': 4}, 'name': 'wikitext'}
    """
    auto: dict[str, Any] = {}
    for name, source in sources.items():
        info = describe(source)
        if info is not None:
            auto[name] = info
    listed = list(files)
    if listed:
        auto["files"] = file_hashes(listed)
    return merged(auto, user)
