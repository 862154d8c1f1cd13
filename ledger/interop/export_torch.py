"""The ``torch``, ``lightning`` and ``dcp`` exports: files PyTorch's own loaders read.

This module owns turning a checked-out state into what ``torch.load(...,
weights_only=True)`` accepts (tensors, dicts, lists, tuples, str, int, float,
bool, None, bytes: numpy arrays become tensors, numpy scalars Python numbers,
generators their state tensor, ``ledger.File`` its bytes), and three ways to
write it: one ``torch.save`` file, a Lightning ``.ckpt`` (the checkpoint dict
the Lightning adapter committed, or a weights-only one built around a state
dict), and a ``torch.distributed.checkpoint`` directory. ``__rng__`` is left
out. It never pickles anything but these safe types and never writes inside a
ledger.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch

from ledger.errors import ExportError
from ledger.interop.source import ExportJob, prepare_dir, prepare_file, readable
from ledger.state.files import File
from ledger.state.rng import RNG_KEY

# What Lightning's own checkpoints hold at the top (the adapter commits exactly that dict).
LIGHTNING_KEYS = ("state_dict", "pytorch-lightning_version")


def weights_only_tree(value: Any, path: str = "state") -> Any:
    """``value`` with every leaf made a type ``torch.load(weights_only=True)`` accepts.

    Raises:
        ExportError: a numpy array of strings or objects (no tensor can hold it).

    Example:
        >>> weights_only_tree({"n": np.float32(0.5), "a": np.arange(2)})
        {'n': 0.5, 'a': tensor([0, 1])}
    """
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufc":
            raise ExportError(
                f"{path} is a numpy {value.dtype} array, which no tensor can hold; "
                "store it as a list or a tensor, or export with --format safetensors"
            )
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, File):
        return value.data
    if isinstance(value, Mapping):
        return {k: weights_only_tree(v, f"{path}[{k!r}]") for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(weights_only_tree(v, f"{path}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [weights_only_tree(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def selected(state: Mapping[Any, Any], key: str | None, rev: str) -> Any:
    """The state without ``__rng__``, or only its subtree ``key``.

    Example:
        >>> selected({"model": {}, "__rng__": {}}, None, "HEAD")
        {'model': {}}
    """
    if key is None:
        return {k: v for k, v in state.items() if k != RNG_KEY}
    if key not in state:
        have = ", ".join(repr(k) for k in state if k != RNG_KEY) or "nothing"
        raise ExportError(f"commit {rev} has no key {key!r} (it has {have}); pass key= one of them")
    return state[key]


class _Counted(io.RawIOBase):
    """A file ``torch.save`` writes through, telling ``wrote`` each write's size."""

    def __init__(self, f: BinaryIO, wrote: Callable[[int], None]) -> None:
        self.f = f
        self.wrote = wrote

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        n = self.f.write(data)
        self.wrote(n)
        return n


def _save_atomic(obj: Any, out: Path, wrote: Callable[[int], None]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, cast(BinaryIO, _Counted(f, wrote)))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    readable(out)


def write_torch(job: ExportJob, *, key: str | None = None) -> None:
    """Write the state (or its subtree ``key``) as one ``torch.save`` file of safe types.

    Example:
        >>> write_torch(ExportJob(lg.checkout("v1"), lg.get("v1"), Path("m.pt")), key="model")  # doctest: +SKIP
    """
    prepare_file(job.out, force=job.force)
    _save_atomic(weights_only_tree(selected(job.state, key, job.rev)), job.out, job.wrote)


LIGHTNING_RANKS_KEY = "__ranks__"
"""Where the Lightning adapter keeps every rank's RNG and loader states (docs/adapters/lightning.md)."""


def write_lightning(job: ExportJob, *, key: str = "model") -> None:
    """Write a Lightning ``.ckpt``.

    A commit of the Lightning adapter holds Lightning's checkpoint dict itself:
    it is written whole (less the ledger's ``__rng__`` and a multi-process
    commit's ``__ranks__``), so ``Trainer.fit(ckpt_path=...)`` resumes from it. Any
    other commit gives a weights-only checkpoint: ``state[key]`` as
    ``state_dict`` (with the commit's epoch, step and params as
    ``epoch``, ``global_step`` and ``hyper_parameters``), which
    ``LightningModule.load_from_checkpoint`` reads.

    Example:
        >>> write_lightning(ExportJob(lg.checkout("best"), lg.get("best"), Path("best.ckpt")))  # doctest: +SKIP
    """
    state, commit, out = job.state, job.commit, job.out
    rev = job.rev
    tree = selected(state, None, rev)
    # A multi-process commit's per-rank RNG and loader states: a .ckpt has none.
    tree = {k: v for k, v in tree.items() if k != LIGHTNING_RANKS_KEY}
    if not all(k in tree for k in LIGHTNING_KEYS):
        weights = selected(state, key, rev)
        if not isinstance(weights, Mapping):
            raise ExportError(f"state[{key!r}] in commit {rev} is not a state dict; pass key=")
        tree = {
            "state_dict": dict(weights),
            "pytorch-lightning_version": _lightning_version(),
            "epoch": commit.epoch or 0,
            "global_step": commit.step or 0,
            "hyper_parameters": dict(commit.params),
        }
    prepare_file(out, force=job.force)
    _save_atomic(weights_only_tree(tree), out, job.wrote)


def _lightning_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("lightning", "pytorch-lightning"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    raise ExportError("a Lightning checkpoint names its Lightning version: pip install lightning")


def write_dcp(job: ExportJob, *, key: str | None = None) -> None:
    """Write the state (or ``key``) as a ``torch.distributed.checkpoint`` directory, in this process.

    Example:
        >>> write_dcp(ExportJob(lg.checkout("v1"), lg.get("v1"), Path("dcp-out")))  # doctest: +SKIP
    """
    import torch.distributed.checkpoint as dcp

    tree = weights_only_tree(selected(job.state, key, job.rev))
    if not isinstance(tree, dict):
        raise ExportError(
            f"a dcp checkpoint is a mapping; state[{key!r}] is a {type(tree).__name__}"
        )
    prepare_dir(job.out, force=job.force)
    with warnings.catch_warnings():
        # One process writing the whole state is the point here, not a mistake to warn about.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(tree, storage_writer=dcp.FileSystemWriter(str(job.out)), no_dist=True)
