"""Lightning's side of reading commits: ``ledger:`` paths, the checkpoint-IO plugin, the ``ledger://`` filesystem.

This module owns how a checkpoint path names a commit and how that commit
reaches code that expects a checkpoint file:

- ``ledger://<ledger directory>#<commit id>`` is what ``LedgerCheckpoint``
  hands out (``best_model_path``, ``last_model_path``, ``resume()``); the
  short ``ledger:<rev>`` is accepted wherever the ledger is known.
- ``LedgerCheckpointIO`` (a Lightning checkpoint-IO plugin) loads either form
  for ``trainer.fit/validate/test(ckpt_path=...)``, keeps the commit's global
  RNG for the callback, and declares the resumed commit as the base of the
  next commit (``Ledger.base_on``) so lineage tells the truth.
- ``LedgerFileSystem`` is an fsspec filesystem for the ``ledger`` protocol:
  opening ``ledger://<dir>#<rev>`` yields the commit's tree serialised by
  ``torch.save`` in memory (no file is written), which
  ``torch.load(weights_only=True)`` reads, so ``MyModule.load_from_checkpoint``
  (Lightning reads every path through fsspec) works with what the callback
  hands out. Nothing is pickled: the tree holds only tensors and plain values.
"""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any

import torch
from fsspec import AbstractFileSystem, register_implementation
from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO

from ledger import Commit, Ledger
from ledger.state.rng import RNG_KEY

from ._common import AdapterError, LedgerLike, ResumeError, open_ledger
from ._lightning_dist import RANKS_KEY, take_rank

__all__ = ["PREFIX", "URL_PREFIX", "LedgerCheckpointIO", "LedgerFileSystem", "ledger_url"]

PREFIX = "ledger:"
"""Checkpoint paths that start with this name a revision of a ledger: ``ledger:main~1``."""

URL_PREFIX = "ledger://"
"""The full form, ``ledger://<ledger directory>#<rev>``, which also names the ledger."""

LIGHTNING_KEY = "pytorch-lightning_version"


def ledger_url(root: str | os.PathLike[str], rev: str) -> str:
    """The path handed out for revision ``rev`` of the ledger at ``root``.

    Example:
        >>> ledger_url("/runs/ckpt", "best")
        'ledger:///runs/ckpt#best'
    """
    return f"{URL_PREFIX}{Path(root).resolve()}#{rev}"


def is_ledger_path(path: Any) -> bool:
    """Whether ``path`` is a ``ledger:`` or ``ledger://`` path."""
    return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(PREFIX)


def split_ledger_path(path: str | os.PathLike[str]) -> tuple[str | None, str]:
    """``(ledger directory or None, rev)`` of a ledger path.

    Example:
        >>> split_ledger_path("ledger:///runs/ckpt#best"), split_ledger_path("ledger:main~1")
        (('/runs/ckpt', 'best'), (None, 'main~1'))
    """
    text = os.fspath(path)
    if text.startswith(URL_PREFIX):
        root, sep, rev = text[len(URL_PREFIX) :].rpartition("#")
        if not sep or not root or not rev:
            raise AdapterError(
                f"{text!r} is not a ledger checkpoint path; write ledger://<ledger directory>#<rev>, "
                "e.g. ledger:///runs/ckpt#best"
            )
        return root, rev
    return None, text[len(PREFIX) :]


def lightning_tree(
    lg: Ledger, rev: str, where: str | torch.device | None = None
) -> tuple[Commit, dict[str, Any]]:
    """The commit ``rev`` names and its tree, refused unless Lightning wrote it."""
    commit = lg.get(rev)
    tree = lg.checkout(commit.id, map_location=where)
    if not isinstance(tree, dict) or LIGHTNING_KEY not in tree:
        keys = sorted(map(str, tree))[:8] if isinstance(tree, dict) else type(tree).__name__
        raise ResumeError(
            f"commit {commit.id[:12]} ({rev}) is not a Lightning checkpoint (it has "
            f"{keys}); resume it with Ledger.restore instead"
        )
    return commit, tree


def declare_base(lg: Ledger, commit: Commit) -> None:
    """Tell the ledger the live state now comes from ``commit``, so the next commit's parent is it.

    ``Ledger.base_on`` is the lineage API (docs/design-decisions.md): it
    records this on the ``Ledger`` instance, loads nothing and moves no ref.
    """
    lg.base_on(commit.id)


class LedgerCheckpointIO(CheckpointIO):
    """A checkpoint-IO plugin that reads ``ledger:`` paths and hands every other path on.

    ``LedgerCheckpoint`` installs it on the trainer's strategy in ``setup``;
    pass it yourself (``Trainer(plugins=[LedgerCheckpointIO("ckpt")])``) to
    load ``ledger:`` paths without the callback, e.g. for ``trainer.test``.
    It pickles (for ``ddp_spawn``): the ledger is reopened on first use.

    Args:
        ledger: a ledger directory or an open ``Ledger``.
        wrapped: the plugin that handles ordinary file paths (default: Lightning's ``TorchCheckpointIO``).

    Example:
        >>> io = LedgerCheckpointIO("ckpt")  # doctest: +SKIP
        >>> ckpt = io.load_checkpoint("ledger:best")  # doctest: +SKIP
    """

    def __init__(self, ledger: LedgerLike, wrapped: CheckpointIO | None = None) -> None:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        self._ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self.root = str(Path(ledger.root if isinstance(ledger, Ledger) else ledger).resolve())
        self.wrapped: CheckpointIO = wrapped if wrapped is not None else TorchCheckpointIO()
        self.loaded_rng: dict[str, Any] | None = None
        self.loaded_commit: Commit | None = None

    @property
    def ledger(self) -> Ledger:
        """The open ledger (opened, or created, on first use)."""
        if self._ledger is None:
            self._ledger = open_ledger(self.root)
        return self._ledger

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the open ledger, which the copy reopens when it needs it."""
        return {**self.__dict__, "_ledger": None}

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write a file through the wrapped plugin; ``ledger:`` paths are refused (commits come from the callback)."""
        if is_ledger_path(path):
            raise AdapterError(
                f"cannot save to {path!r}: commits are made by LedgerCheckpoint (add it to the "
                "Trainer's callbacks, or call its commit(trainer)); save files to a file path"
            )
        self.wrapped.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's checkpoint dict from a ``ledger:`` path, or the wrapped plugin's from a file.

        Tensors come back on the device they were committed from when it
        exists (as Lightning's own loader does), or on ``map_location`` when
        that is a device. The commit's global RNG state is kept in
        ``loaded_rng`` for ``LedgerCheckpoint`` to set when training starts,
        and the commit becomes the parent of this ledger's next commit.
        """
        if not is_ledger_path(path):
            return self.wrapped.load_checkpoint(path, map_location, weights_only)
        root, rev = split_ledger_path(path)
        where = map_location if isinstance(map_location, str | torch.device) else None
        lg = self.ledger
        if root is not None and Path(root).resolve() != Path(self.root):
            if not Path(root).is_dir():
                raise ResumeError(f"{path!r}: there is no ledger at {root}; check the directory")
            with Ledger.open(root) as other:  # another ledger: read it, lineage stays there
                commit, tree = lightning_tree(other, rev, where)
        else:
            commit, tree = lightning_tree(lg, rev, where)
            declare_base(lg, commit)
        self.loaded_rng = take_rank(tree)  # this process's own, from a multi-process commit
        self.loaded_commit = commit
        return tree

    def remove_checkpoint(self, path: Any) -> None:
        """Remove a file through the wrapped plugin (commits are dropped by retention and gc)."""
        if not is_ledger_path(path):
            self.wrapped.remove_checkpoint(path)

    def teardown(self) -> None:
        """Tear down the wrapped plugin."""
        self.wrapped.teardown()


class LedgerFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem: ``ledger://<dir>#<rev>`` reads as a ``torch.save`` file of that commit.

    The bytes are made in memory on open (the commit's tree without its RNG
    and per-rank entries); nothing is written to disk and nothing pickled is read back
    (``torch.load(..., weights_only=True)`` accepts them). Registered for
    the ``ledger`` protocol when ``ledger.adapters.lightning`` is imported.

    Example:
        >>> with fsspec.open("ledger:///runs/ckpt#best", "rb") as f:  # doctest: +SKIP
        ...     ckpt = torch.load(f, weights_only=True)
    """

    protocol = "ledger"
    cachable = False
    _lock = threading.Lock()
    _last: tuple[tuple[str, str], bytes] | None = None

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        text = os.fspath(path[0] if isinstance(path, list) else path)
        return text[len(URL_PREFIX) :] if text.startswith(URL_PREFIX) else text

    def _bytes(self, path: str, keep: bool = False) -> bytes:
        """The checkpoint bytes; ``keep``: hold them for the next call (``info`` then ``open``)."""
        root, rev = split_ledger_path(URL_PREFIX + self._strip_protocol(path))
        assert root is not None
        if not Path(root).is_dir():
            raise FileNotFoundError(f"no ledger at {root} (from {URL_PREFIX}{path})")
        with Ledger.open(root) as lg:
            cid = lg.resolve(rev)
            with self._lock:
                last = type(self)._last
                if last is not None and last[0] == (root, cid):
                    type(self)._last = last if keep else None
                    return last[1]
            tree = lg.checkout(cid)
        if isinstance(tree, dict):
            tree.pop(RNG_KEY, None)
            tree.pop(RANKS_KEY, None)
        buf = io.BytesIO()
        torch.save(tree, buf)
        data = buf.getvalue()
        if keep:
            with self._lock:
                type(self)._last = ((root, cid), data)
        return data

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> io.BytesIO:
        if mode != "rb":
            raise AdapterError(
                f"{URL_PREFIX}{path} is read-only (mode {mode!r}); commits are made by LedgerCheckpoint"
            )
        return io.BytesIO(self._bytes(path))

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        """Name, size and type ("file") of a commit read as a checkpoint file."""
        path = self._strip_protocol(path)
        return {"name": path, "size": len(self._bytes(path, keep=True)), "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """A commit is a single file."""
        entry = self.info(path)
        return [entry] if detail else [entry["name"]]


register_implementation("ledger", LedgerFileSystem, clobber=True)
