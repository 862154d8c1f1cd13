"""``export_commit``: write one commit in a format another tool loads without training-ledger.

This module owns the list of export formats and the one entry point
(:func:`export_commit`, behind ``Ledger.export`` and ``ledger export``): it
resolves the revision, checks the destination is outside the ledger, reads
only the part of the commit the format writes (mapped from the packs where
it can be) and hands it to the format's writer (``export_hf``,
``export_torch``, ``export_safetensors``). Options a format does not take are
refused by name. ``progress=`` is told the tensor bytes written (``"bytes"``,
of the tensors the format writes: each file, shard or part as it is written;
a ``dcp`` directory at its end). It never writes inside a ledger. A folder
export is written into a hidden sibling (``.<name>.partial-<hex>``) and renamed
to its name once complete, so an export killed midway never leaves a folder
that looks whole.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ledger.errors import ExportError
from ledger.history.records import Commit
from ledger.interop.export_hf import write_hf, write_peft
from ledger.interop.export_safetensors import (
    METADATA_FILE,
    OutDir,
    export_safetensors,
    write_safetensors_dir,
)
from ledger.interop.export_torch import write_dcp, write_lightning, write_torch
from ledger.interop.source import (
    EXPORT_FORMATS,
    CommitReader,
    ExportJob,
    ExportReport,
    ExportSource,
    outside,
    report,
)
from ledger.interop.space import guarded_output
from ledger.progress import ProgressFn, Tally
from ledger.state.build import PathNotFoundError
from ledger.state.files import File
from ledger.state.rng import RNG_KEY

__all__ = [
    "FORMATS",
    "METADATA_FILE",
    "CommitReader",
    "ExportJob",
    "ExportReport",
    "OutDir",
    "export_commit",
    "export_safetensors",
    "write_safetensors_dir",
]


def _write_safetensors(job: ExportJob) -> None:
    # the writer tells parts (top-level keys) as it finishes them: told as their bytes here
    sizes = [tensor_bytes(v) for k, v in job.state.items() if k != RNG_KEY]
    upto = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    told = [0]

    def parts_done(done: int, total: int, what: str) -> None:
        now = upto[min(done, len(sizes))]
        if now > told[0]:
            job.wrote(now - told[0])
            told[0] = now

    write_safetensors_dir(job.state, job.commit, job.out, force=job.force, progress=parts_done)


def tensor_bytes(value: Any) -> int:
    """The bytes of every tensor, array and :class:`File` under ``value``.

    Example:
        >>> tensor_bytes({"w": torch.zeros(4), "n": [np.zeros(2, np.int8)], "step": 3})
        18
    """
    if isinstance(value, torch.Tensor | np.ndarray):
        return int(value.nbytes)
    if isinstance(value, File):
        return len(value)
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


_WRITERS: dict[str, Callable[..., object]] = {
    "hf": write_hf,
    "peft": write_peft,
    "torch": write_torch,
    "lightning": write_lightning,
    "dcp": write_dcp,
    "safetensors": _write_safetensors,
}
FORMATS = EXPORT_FORMATS
"""Every format :func:`export_commit` writes."""
assert tuple(_WRITERS) == FORMATS, "a writer without its name in EXPORT_FORMATS, or the reverse"


def _read(reader: ExportSource, commit_id: str, fmt: str, options: dict[str, Any]) -> Any:
    """The part of the state ``fmt`` writes, read once (tensors mapped from packs where they can be)."""
    wanted: list[str] | None = None
    if fmt in ("hf", "peft"):
        wanted = [options.get("model_key", "model"), options.get("files_key", "hf_files")]
    elif fmt in ("torch", "dcp") and options.get("key") is not None:
        wanted = [options["key"]]
    if wanted is None:
        return reader.checkout(commit_id, mmap=True)
    state: dict[Any, Any] = {}
    for path in wanted:
        try:
            state.update(reader.checkout(commit_id, paths=[path], mmap=True))
        except PathNotFoundError as e:
            if fmt in ("hf", "peft"):
                continue  # the writer names what is missing and how to fix it
            raise ExportError(
                f"commit {commit_id[:12]} has no key {path!r} ({e}); pass key= one of those"
            ) from e
    return state


@contextlib.contextmanager
def _staged(out: Path, fmt: str) -> Iterator[Path]:
    """Where the writer puts the export: for a folder format, a hidden sibling renamed to
    ``out`` when complete (``torch`` and ``lightning`` files are renamed into place by
    their writers); a forced export into a non-empty folder writes in place."""
    if fmt in ("torch", "lightning") or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        yield out
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:12]}"
    try:
        yield tmp
        os.replace(tmp, out)  # rename(2) also replaces an empty directory
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _options(fmt: str) -> set[str]:
    params = inspect.signature(_WRITERS[fmt]).parameters
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def export_commit(
    reader: ExportSource,
    rev: str,
    fmt: str,
    out: str | Path,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    **options: Any,
) -> ExportReport:
    """Write commit ``rev`` to ``out`` in format ``fmt``; what was written.

    ``progress(done, total, "bytes")`` counts the tensor bytes written, from 0
    to the bytes of the tensors read for the format (``ledger.progress``).

    Formats: ``hf`` (the ``save_pretrained`` folder; options ``max_shard_size``,
    ``model_key``, ``files_key``), ``peft`` (``adapter_name``, ``model_key``,
    ``files_key``), ``torch`` (one file; ``key``), ``lightning`` (a ``.ckpt``;
    ``key`` for a commit that is not a Lightning checkpoint), ``dcp`` (a
    directory; ``key``), ``safetensors`` (the ``checkout --out`` folder).

    Raises:
        ExportError: an unknown format or option, ``out`` inside the ledger or
            taken (without ``force``), or a commit the format cannot hold.

    Example:
        >>> export_commit(lg, "v1", "hf", "model-v1", max_shard_size="2GB").files  # doctest: +SKIP
        ['config.json', 'generation_config.json', 'model.safetensors', ...]
    """
    if fmt not in _WRITERS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    unknown = sorted(set(options) - _options(fmt))
    if unknown:
        takes = ", ".join(sorted(_options(fmt))) or "none"
        raise ExportError(f"format {fmt!r} takes no option {unknown[0]!r} (it takes: {takes})")
    out = Path(out)
    outside(reader.root, out)
    commit_id = reader.resolve(rev)
    commit = Commit.from_record(commit_id, reader.record(commit_id))
    with guarded_output(out, commit.stats.logical_bytes, f"{fmt} export of {commit_id[:12]}"):
        state = _read(reader, commit_id, fmt, options)
        tally = Tally(progress, tensor_bytes(state), "bytes")
        with _staged(out, fmt) as into:
            _WRITERS[fmt](ExportJob(state, commit, into, force, tally), **options)
        tally.finish()
    return report(commit_id, fmt, out)
