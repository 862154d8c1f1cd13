"""The Trainer-layout checkpoint ``LedgerCallback.resume`` writes, and the temporary folders it lives in.

This module owns writing a commit made by ``LedgerCallback`` as the files
``Trainer.train(resume_from_checkpoint=...)`` loads (nothing pickled), and the
life of the temporary folders that hold them: each is made under
``<tmp>/ledger-hf-<uid>/`` with a ``.owner`` file its process keeps an
exclusive ``flock`` on. A process that dies (even by SIGKILL) drops its lock
with it, so the next ``resume`` in any process finds the folder unlocked and
removes it; the folder of a live process stays locked and is never touched.
Only folders named ``resume-*`` that hold an ``.owner`` file (ours) are ever
removed, and the parent folder is refused when it is a link or not the user's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import save_file

from ledger.interop.export_hf import commit_files, write_files
from ledger.state.rng import RNG_KEY, python_state

from ._common import AdapterError, ResumeError
from ._hf_files import STATE_KEY as FILES_KEY
from ._hf_rotation import STATE_KEY

OWNER = ".owner"
RANKS_KEY = "rng_ranks"
"""The key of every process's RNG tree (by ``process_index``) in a commit made by several processes."""
_UNLOCKED_GRACE = 60.0  # seconds a folder may lack its lock file (being made) before it is stale


def resume_root() -> Path:
    """``<tmp>/ledger-hf-<uid>``, made private (0700) when missing.

    Raises:
        AdapterError: it exists as a link, not a folder, or belongs to someone else.
    """
    root = Path(tempfile.gettempdir()) / f"ledger-hf-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise AdapterError(
            f"{root} is not a folder of this user (a link, a file or someone else's); "
            "remove it or point TMPDIR elsewhere so LedgerCallback.resume can write there"
        )
    return root


class ResumeDir:
    """A temporary folder locked by this process for as long as the object is open."""

    def __init__(self) -> None:
        root = resume_root()
        sweep_stale(root)
        self.path = Path(tempfile.mkdtemp(prefix="resume-", dir=root))
        self._lock: IO[str] | None = open(self.path / OWNER, "w")  # noqa: SIM115 - held open
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock.write(f"{os.getpid()}\n")
        self._lock.flush()

    def remove(self) -> None:
        """Delete the folder and drop the lock (idempotent)."""
        if self._lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self._lock.close()
            self._lock = None


def sweep_stale(root: Path) -> list[Path]:
    """Remove the ``resume-*`` folders under ``root`` whose owner process is gone; returns them."""
    removed: list[Path] = []
    for folder in sorted(root.glob("resume-*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        owner = folder / OWNER
        try:
            fd = os.open(owner, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            # made by mkdtemp, its lock file not yet written (or killed in between)
            if time.time() - folder.stat().st_mtime > _UNLOCKED_GRACE:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its process is alive
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed


def write_checkpoint(tree: dict[str, Any], out: Path) -> None:
    """Write a commit made by ``LedgerCallback`` into ``out`` in the Trainer's checkpoint layout.

    Nothing pickled: tensors go to safetensors, the rest through ``torch.save``
    of plain containers, which ``torch.load(weights_only=True)`` reads (the RNG
    file with the numpy types the Trainer's ``safe_globals`` allows). A commit
    made by several processes gets ``rng_state_{rank}.pth`` for each of them,
    as the Trainer writes them under DDP, instead of ``rng_state.pth``.

    Example:
        >>> write_checkpoint(lg.checkout("HEAD"), Path("checkpoint-100"))  # doctest: +SKIP
    """
    save_file(_unshared(tree["model"]), str(out / "model.safetensors"))
    # config.json, tokenizer files ... as the Trainer's own checkpoint holds them
    write_files(commit_files(tree, FILES_KEY, out.name), out)
    for key, name in (("optimizer", "optimizer.pt"), ("scheduler", "scheduler.pt")):
        if key in tree:
            torch.save(tree[key], out / name)
    if "scaler" in tree:
        torch.save(tree["scaler"], out / "scaler.pt")
    ranks = tree.get(RANKS_KEY)
    if ranks is not None and len(ranks) > 1:
        for rank, rng in enumerate(ranks):
            torch.save(_trainer_rng(rng, distributed=True), out / f"rng_state_{rank}.pth")
    elif tree.get(RNG_KEY) is not None:
        torch.save(_trainer_rng(tree[RNG_KEY]), out / "rng_state.pth")
    (out / "trainer_state.json").write_text(
        json.dumps(tree[STATE_KEY], indent=2, sort_keys=True) + "\n"
    )


def _unshared(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors with every second name for shared memory (tied weights) copied."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise ResumeError(f"model entry {name!r} is a {type(tensor).__name__}, not a tensor")
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen and tensor.numel() else tensor.contiguous()
        seen.add(ptr)
    return out


def _trainer_rng(rng: dict[str, Any], *, distributed: bool = False) -> dict[str, Any]:
    """The ledger's RNG tree in ``Trainer._save_rng_state``'s format (CUDA: every device's when distributed)."""
    out: dict[str, Any] = {
        "python": python_state(rng["python"]),
        "numpy": tuple(rng["numpy"]),
        "cpu": rng["torch"],
    }
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available():
        out["cuda"] = list(cuda) if distributed else cuda[torch.cuda.current_device()]
    return out
