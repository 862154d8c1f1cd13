"""Save and restore implementations of every method the harness compares.

Each save writes one checkpoint into a fresh directory. Each "restore" puts the
saved bytes into *preallocated live tensors* (a second model and optimizer), so
that every method pays for reading and copying the same bytes; the
materialize-only variants (``torch.load``, ``ledger.checkout``) return new
tensors instead and are reported separately.

``fsync=True`` means durable: every file written is fsync'd and so is its
directory, the way the ledger must do it.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from _state import flatten, last_layer, live_tensors
from _util import fsync_dir
from torch import nn

Model = nn.Sequential
Optim = torch.optim.Optimizer


def copy_into(dest: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> None:
    """Copy every tensor of ``src`` into the same-named preallocated tensor of ``dest``."""
    missing = dest.keys() - src.keys()
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
    with torch.no_grad():
        for k, t in dest.items():
            t.copy_(src[k])


# --------------------------------------------------------------------------- torch.save


def torch_save(model: Model, opt: Optim, path: Path, fsync: bool) -> None:
    """``torch.save({"model": ..., "optim": ...})`` into a file we open ourselves."""
    path.mkdir(parents=True, exist_ok=True)
    obj = {"model": model.state_dict(), "optim": opt.state_dict()}
    with open(path / "ckpt.pt", "wb") as f:
        torch.save(obj, f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    if fsync:
        fsync_dir(path)


def torch_load(path: Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``: materializes new tensors."""
    return torch.load(path / "ckpt.pt", weights_only=True)


def torch_load_copy(path: Path, dest: dict[str, torch.Tensor]) -> None:
    """``torch.load`` then copy every tensor into the live destination tensors."""
    obj = torch.load(path / "ckpt.pt", weights_only=True)
    copy_into(dest, flatten(obj["model"], obj["optim"]))


# --------------------------------------------------------------------------- safetensors


def safetensors_save(model: Model, opt: Optim, path: Path, fsync: bool) -> None:
    """``safetensors.torch.save_file`` of the flattened tensors (+ param groups as metadata).

    ``save_file`` opens the file itself, so the fsync reopens it afterwards.
    """
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    osd = opt.state_dict()
    tensors = flatten(model.state_dict(), osd)
    file = path / "ckpt.safetensors"
    save_file(tensors, str(file), metadata={"param_groups": json.dumps(osd["param_groups"])})
    if fsync:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(path)


def safetensors_load_copy(path: Path, dest: dict[str, torch.Tensor]) -> None:
    """``safetensors.torch.load_file`` then copy every tensor into the live tensors."""
    from safetensors.torch import load_file

    copy_into(dest, load_file(str(path / "ckpt.safetensors")))


# --------------------------------------------------------------------------- DCP


def _quiet_dcp() -> None:
    # dcp warns "assuming the intent is to save in a single process" on every call,
    # even with no_dist=True (torch 2.13); the benchmark means exactly that.
    warnings.filterwarnings("ignore", message=".*assuming the intent is to (save|load).*")


def dcp_save(model: Model, opt: Optim, path: Path, fsync: bool) -> None:
    """``torch.distributed.checkpoint.save`` in one process, no process group.

    ``FileSystemWriter(sync_files=fsync)``: DCP fsyncs its data files itself; the
    directory fsync is added here to match the other durable saves.
    """
    import torch.distributed.checkpoint as dcp

    _quiet_dcp()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    writer = dcp.FileSystemWriter(str(path), sync_files=fsync)
    dcp.save(state, storage_writer=writer, no_dist=True)
    if fsync:
        fsync_dir(path)


def dcp_load(path: Path, model: Model, opt: Optim) -> None:
    """``torch.distributed.checkpoint.load`` into the live state dicts (in place)."""
    import torch.distributed.checkpoint as dcp

    _quiet_dcp()
    state = {"model": model.state_dict(), "optim": opt.state_dict()}
    dcp.load(state, storage_reader=dcp.FileSystemReader(str(path)), no_dist=True)


# --------------------------------------------------------------------------- ledger


def ledger_available() -> bool:
    """True once ``from ledger import Ledger`` works."""
    try:
        from ledger import Ledger  # noqa: F401
    except ImportError:
        return False
    return True


def ledger_open(path: Path, fsync: bool = True, create: bool = False, **options: Any) -> Any:
    """``Ledger.open(path, create=..., fsync=..., **options)`` (compress, trust_versions)."""
    from ledger import Ledger

    return Ledger.open(path, create=create, fsync=fsync, **options)


def ledger_commit(lg: Any, model: Model, opt: Optim, step: int = 0) -> Any:
    """One ``commit`` of the whole state."""
    return lg.commit({"model": model, "optim": opt}, step=step)


def ledger_touch_last_layer(model: Model) -> None:
    """Change only the last layer's weight (the incremental-commit case)."""
    with torch.no_grad():
        last_layer(model).weight.add_(1e-3)


def ledger_restore(path: Path, model: Model, opt: Optim) -> None:
    """Open the ledger and ``restore`` HEAD into fresh live objects."""
    lg = ledger_open(path)
    lg.restore({"model": model, "optim": opt}, "HEAD")


def ledger_checkout(path: Path, mmap: bool = False) -> Any:
    """Open the ledger and ``checkout`` HEAD: a nested dict of new (or mapped) tensors."""
    return ledger_open(path).checkout("HEAD", mmap=mmap)


def ledger_save(model: Model, opt: Optim, path: Path, fsync: bool) -> None:
    """A fresh ledger holding one full commit (used to prepare restores)."""
    ledger_commit(ledger_open(path, fsync=fsync, create=True), model, opt)


__all__ = [
    "copy_into",
    "dcp_load",
    "dcp_save",
    "ledger_available",
    "ledger_checkout",
    "ledger_commit",
    "ledger_open",
    "ledger_restore",
    "ledger_save",
    "ledger_touch_last_layer",
    "live_tensors",
    "safetensors_load_copy",
    "safetensors_save",
    "torch_load",
    "torch_load_copy",
    "torch_save",
]
