"""Reading a commit back: ``checkout`` (new objects), ``restore`` (into live objects), lineage.

This module owns the user-facing read paths, the :class:`RestoreReport` of a
restore, and recording on this ``Ledger`` instance which commit its live state
came from (``restore``, ``base_on``, ``based_on``; the parent rule itself is
``ledger.history.lineage``'s). How nodes become tensors (and how bytes go
straight into live memory) is ``ledger.state.build``'s.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Literal, overload

import msgspec

from ledger.api.core import LedgerCore
from ledger.errors import (
    NothingRestoredWarning,
    PartialRestoreWarning,
    UnsupportedValueError,
    user_stacklevel,
)
from ledger.history.records import (
    Commit,
)

if TYPE_CHECKING:  # torch is imported where a tensor is built: `ledger log` never loads it
    import torch

    from ledger.state.build import Path_


class RestoreReport(msgspec.Struct, frozen=True, kw_only=True):
    """What ``restore(..., report=True)`` did, by state path (``"model/fc.weight"``, ``"epoch"``).

    Attributes:
        commit: the commit restored.
        missing: live paths the commit has no value for (left as they were).
        unexpected: stored paths the live state lacks: added to a mapping that
            lacked them, ignored where a module lacks them.
        loaded: every live path that now holds the commit's value (RNG not
            included; paths added to a mapping are in ``unexpected`` only).

    Example:
        >>> r = lg.restore(state, "best", strict=False, report=True)  # doctest: +SKIP
        >>> r.missing, r.unexpected  # doctest: +SKIP
        (['ema'], ['model/head.bias'])
    """

    commit: Commit
    missing: list[str]
    unexpected: list[str]
    loaded: list[str]


def _paths(paths: list[Path_]) -> list[str]:
    return ["/".join(str(p) for p in path) for path in paths]


def _warn(report: RestoreReport) -> None:
    """The warnings of a non-strict restore (pointing at the code that called restore)."""
    c = report.commit.id[:12]
    if not report.loaded and (report.missing or report.unexpected):
        warnings.warn(
            f"restore(strict=False) of commit {c} LOADED NOTHING: the live state and the "
            f"commit share no path (live only: {report.missing[:8]}; stored only: "
            f"{report.unexpected[:8]}); is this the state that was committed? This ledger's "
            "lineage was left unchanged",
            NothingRestoredWarning,
            stacklevel=user_stacklevel(),
        )
    elif report.missing or report.unexpected:
        parts = []
        if report.missing:
            parts.append(f"missing from the commit (left as they were): {report.missing}")
        if report.unexpected:
            parts.append(
                "in the commit but not in the live state (added to mappings, ignored by "
                f"modules): {report.unexpected}"
            )
        warnings.warn(
            f"restore(strict=False) of commit {c} did not load every path: {'; '.join(parts)}",
            PartialRestoreWarning,
            stacklevel=user_stacklevel(),
        )


log = logging.getLogger("ledger.restore")


class Restoring(LedgerCore):
    """Checkout and restore of a ledger's commits."""

    def checkout(
        self,
        rev: str = "HEAD",
        map_location: str | torch.device | None = "cpu",
        paths: list[str] | None = None,
        mmap: bool = False,
    ) -> dict[Any, Any]:
        """Read a commit's state as a nested dict of tensors and plain values (moves nothing).

        Args:
            rev: the revision to read.
            map_location: device for every tensor; None puts each back where it
                was saved when that device exists (else on the CPU).
            paths: read only these parts, e.g. ``["model"]`` or ``["optim/state"]``;
                only their chunks are read.
            mmap: CPU tensors whose chunks lie uncompressed and in order in one
                pack are mapped from it copy-on-write instead of copied into new
                memory (the rest is read as usual). Every byte is still hashed
                before this returns; writes to the tensors stay private. The
                bytes live in the page cache, so the kernel may drop clean pages
                and read them from disk again later, unhashed: use the default
                where a disk may rot under a long-lived process.

        Example:
            >>> weights = lg.checkout("best", paths=["model"])["model"]  # doctest: +SKIP
            >>> frozen = lg.checkout("base", mmap=True)  # doctest: +SKIP
        """
        import torch

        from ledger.state.build import Builder, finalize, mover, parse_paths, to_cuda

        with self._lock:
            self._check_open()
            cid, manifest = self.manifest(rev)
            builder = Builder(self.store, self.pool, cid, manifest.chunk_size)
            builder.pin = to_cuda(map_location)
            builder.mmap = mmap and not builder.pin
            builder.index(manifest.root, ())
            tree = builder.build(manifest.root, (), parse_paths(paths))
            builder.load()
            out = finalize(tree, mover(map_location, builder))
            if builder.pin:
                torch.cuda.synchronize()
            log.info("checkout %s (%s)%s", cid[:12], rev, f", paths {paths}" if paths else "")
            return out

    @overload
    def restore(
        self,
        state: MutableMapping[Any, Any],
        rev: str = ...,
        strict: bool = ...,
        rng: bool = ...,
        report: Literal[False] = ...,
    ) -> Commit: ...

    @overload
    def restore(
        self,
        state: MutableMapping[Any, Any],
        rev: str = ...,
        strict: bool = ...,
        rng: bool = ...,
        *,
        report: Literal[True],
    ) -> RestoreReport: ...

    def restore(
        self,
        state: MutableMapping[Any, Any],
        rev: str = "HEAD",
        strict: bool = True,
        rng: bool = True,
        report: bool = False,
    ) -> Commit | RestoreReport:
        """Load a commit into live objects in place: modules, optimizers, tensors, values.

        Every key, shape and dtype is checked before anything changes; plain
        values are assigned back into ``state``. HEAD does not move: this
        ``Ledger`` instance records the commit as :attr:`based_on`, and its next
        commit takes it as parent (see :meth:`base_on`).

        Args:
            state: the same kind of mapping that was committed.
            rev: the revision to restore.
            strict: fail on keys missing from either side. ``strict=False`` loads
                what both sides have (like ``load_state_dict(strict=False)``) and
                warns (``PartialRestoreWarning``) naming what it did not load, or
                loudly (``NothingRestoredWarning``) when it loaded nothing.
            rng: also set the global RNGs back.
            report: return a :class:`RestoreReport` (paths missing, unexpected,
                loaded) instead of the :class:`Commit`.

        Raises:
            StateMismatchError: keys, shapes or dtypes differ (nothing was changed).
            CorruptionError: a chunk fails its hash check. Chunks are read straight
                into the live tensors, so they may then be partly loaded: restore
                another commit into them (the error names the tensor and commit).

        Example:
            >>> lg.restore({"model": model, "optim": opt, "step": 0})  # doctest: +SKIP
            >>> lg.restore(state, "best", strict=False, report=True).missing  # doctest: +SKIP
            ['ema']
        """
        from ledger.state.build import Builder, finalize
        from ledger.state.restore import Restorer
        from ledger.state.rng import RNG_KEY, restore_rng

        with self._lock:
            self._check_open()
            if not isinstance(state, MutableMapping):
                raise UnsupportedValueError(
                    f"restore needs a mutable mapping such as a dict, not {type(state).__name__}"
                )
            cid, manifest = self.manifest(rev)
            builder = Builder(self.store, self.pool, cid, manifest.chunk_size)
            builder.index(manifest.root, ())
            restorer = Restorer(builder, strict)
            restorer.plan_root(state, manifest.root, {RNG_KEY})
            rng_tree = None
            if rng and RNG_KEY in manifest.root.keys:
                rng_node = manifest.root.values[manifest.root.keys.index(RNG_KEY)]
                rng_tree = builder.build(rng_node, (RNG_KEY,))
            builder.load()
            restorer.apply()
            if rng_tree is not None:
                restore_rng(finalize(rng_tree, lambda t: t))
            done = RestoreReport(
                commit=Commit.from_record(cid, self.record(cid)),
                missing=_paths(restorer.missing),
                unexpected=_paths(restorer.unexpected),
                loaded=_paths(restorer.loaded),
            )
            if done.loaded or not (done.missing or done.unexpected):
                self.lineage.set(cid, explicit=True, source=f"restore of {rev}")
            if not strict:
                _warn(done)
            return done if report else done.commit

    @property
    def based_on(self) -> Commit | None:
        """The commit this instance's live state came from: the last ``restore``,
        ``base_on`` or commit of this ``Ledger`` object (None before any).

        Each ``Ledger`` instance has its own (HEAD is shared by every process;
        this is not): an eval job restoring ``best`` changes nothing for a
        training job's next commit.

        Example:
            >>> lg.restore(state, "best"); lg.based_on.id == lg.resolve("best")  # doctest: +SKIP
            True
        """
        self._check_open()  # a background commit lands first
        cid = self.lineage.commit
        return None if cid is None else Commit.from_record(cid, self.record(cid))

    def base_on(self, rev: str) -> Commit:
        """Declare, loading nothing, that the live state came from ``rev``.

        For resume paths that load state some other way (a framework reading
        files the ledger wrote, ``checkout`` + ``load_state_dict`` by hand). The
        next commit of this instance, to any branch, takes that commit as its
        parent; when that moves the branch off a tip that ``rev`` does not
        descend from, the old tip is kept on the automatic branch
        ``orig/<branch>/<old tip id>`` so no commit becomes unreachable. HEAD
        does not move.

        Raises:
            RevisionNotFoundError: ``rev`` names nothing.

        Example:
            >>> model.load_state_dict(lg.checkout("main~3")["model"])  # doctest: +SKIP
            >>> lg.base_on("main~3"); lg.commit({"model": model})  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            cid = self.resolve(rev)
            commit = Commit.from_record(cid, self.record(cid))
            self.lineage.set(cid, explicit=True, source=f"based on {rev}")
            return commit
