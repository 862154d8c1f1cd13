"""Keeping a ledger small and whole: retention policies, expiry, gc, compaction, verify.

This module owns the user-facing side of retention (storing built-in
policies as events, keeping custom ones in the process), expiry by hand, and
when packs are compacted (``ledger.objects.compact``: in a background thread
after commits once enough small packs piled up, and by every gc); the
algorithms live in ``ledger.history`` and ``ledger.objects``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

import msgspec

from ledger.api.notify import Notifying
from ledger.errors import (
    LedgerError,
    PolicyError,
)
from ledger.history.commitgraph import build_graph, extend_graph, write_graph
from ledger.history.gc import GcReport, collect
from ledger.history.records import (
    BUILTIN_POLICIES,
    CommitRecord,
    Expire,
    Expiry,
    KeepBest,
    RetentionSet,
    commit_decoder,
    utcnow,
)
from ledger.history.refs import (
    check_ref_name,
)
from ledger.history.retention import AnyPolicy
from ledger.history.verify import VerifyReport
from ledger.history.verify import verify as verify_ledger
from ledger.objects.compact import CompactReport, compact, compaction_due
from ledger.objects.safepath import check_inside
from ledger.objects.store import ObjectStore
from ledger.progress import ProgressFn

log = logging.getLogger("ledger.maintain")

# The commit graph is rewritten once this many of a process's commits lie outside it, so a
# walk such as ``main~50`` from a fresh process reads at most this many records.
GRAPH_LAG = 16


class Maintenance(Notifying):
    """Retention, expiry, gc, compaction and verification of a ledger."""

    _compaction: threading.Thread | None = None  # the background compaction running, if any
    _graph_lag = 0  # commits this process made since it last wrote the commit graph

    def compact(self) -> CompactReport:
        """Merge the small packs into few and index every pack in one file, now.

        Commits start this in the background once enough small packs piled up,
        and every gc ends with it; call it by hand before copying a ledger.

        Example:
            >>> lg.compact().packs_after  # doctest: +SKIP
            1
        """
        with self._lock:
            self._check_open()
            self._join_compaction()
            with self.gc_lock.hold(shared=False):
                report = compact(self.store)
                self._write_graph()
                return report

    def _compact_when_due(self) -> None:
        """After commits: start a background compaction if one is due, or a rewrite of the
        commit graph once ``GRAPH_LAG`` of this process's commits are outside it, unless
        one is running."""
        self._graph_lag += 1
        if self._compaction is not None and self._compaction.is_alive():
            return
        due = compaction_due(self.store)
        if not due and self._graph_lag < GRAPH_LAG:
            return
        self._compaction = threading.Thread(
            target=self._compact_quietly, args=(due,), name="ledger-compact", daemon=True
        )
        self._compaction.start()

    def _write_graph(self, *, whole: bool = True, trust_old: bool = True) -> None:
        """Rewrite the commit graph to hold every commit of the store now (a cache: a failure
        leaves walks reading records); ``whole=False`` only adds the commits of the packs
        outside the merged index (what commits made since the last compaction)."""

        def read(oid: bytes) -> CommitRecord | None:
            try:
                return commit_decoder.decode(self.store.read(oid, f"commit {oid.hex()[:12]}"))
            except (LedgerError, msgspec.DecodeError, RecursionError):
                return None

        self._graph_lag = 0
        path = check_inside(self.root, self.graph.path, "writing")
        old = self.graph.current() if trust_old else None
        if whole or old is None:
            data: bytes | None = build_graph(self.store.ids("commit"), old, read)
        else:
            data = extend_graph(old, self.store.uncovered_ids("commit"), read)
        if data is not None:
            write_graph(path, data, self.store.tmp_dir)

    def _graph_outlived_commits(self) -> bool:
        """Whether the commit graph holds a commit the store no longer has (after a gc: the
        graph is rewritten only then, so a gc that deleted no commit leaves it as it is)."""
        graph = self.graph.current()
        return graph is not None and not all(
            self.store.has(graph.id_at(p)) for p in range(len(graph))
        )

    def _compact_quietly(self, due: bool = True) -> None:
        try:
            if not due:
                self._write_graph(whole=False)
                return
            with self.gc_lock.hold(shared=False):
                report = compact(self.store)
                self._write_graph()
        except Exception as e:  # the packs stay as they were: every object is still found
            what = "compaction" if due else "rewrite of the commit graph"
            log.warning("background %s stopped (%s); the files stay as they are", what, e)
            return
        log.info(
            "compaction: %d packs merged into %d (%d objects copied), %d packs now",
            report.packs_merged,
            report.packs_written,
            report.objects_copied,
            report.packs_after,
        )

    def _join_compaction(self) -> None:
        thread = self._compaction
        if thread is not None and thread is not threading.current_thread():
            thread.join()
            self._compaction = None

    def close(self) -> None:
        """Close the ledger once a background compaction has finished."""
        try:
            self._join_compaction()
        finally:
            super().close()

    def gc(
        self,
        dry_run: bool = False,
        grace: float | None = None,
        progress: ProgressFn | None = None,
    ) -> GcReport:
        """Expire what retention drops, then delete every object no ref or kept commit needs.

        The ``gc`` notification follows (not for a dry run).

        Args:
            dry_run: report what would be expired and freed; change nothing.
            grace: seconds; packs younger than this are never touched (None:
                the ledger's configured grace, 15 minutes by default).
            progress: ``progress(done, total, what)`` as objects are copied out of
                rewritten packs and packs deleted (``ledger.progress``).

        Example:
            >>> report = lg.gc(grace=0)  # doctest: +SKIP
            >>> report.bytes_freed, report.expired  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            self._commits_since_gc = 0
            self._join_compaction()
            with self.gc_lock.hold(shared=False):
                report = collect(
                    self,
                    self.store,
                    self.refs,
                    policies_for=self.retention,
                    grace=self.config.gc_grace if grace is None else float(grace),
                    dry_run=dry_run,
                    progress=progress,
                )
                if not dry_run and report.objects_freed and self._graph_outlived_commits():
                    self._write_graph()  # without the commits it deleted
        log.info(
            "gc%s: %d commits expired, %d objects (%d bytes) freed, %d packs deleted, %d rewritten",
            " (dry run)" if dry_run else "",
            len(report.expired),
            report.objects_freed,
            report.bytes_freed,
            report.packs_deleted,
            report.packs_rewritten,
        )
        if not dry_run:
            detail = {
                "expired": len(report.expired),
                "bytes_freed": report.bytes_freed,
                "objects_freed": report.objects_freed,
            }
            self._raise_event("gc", detail=detail)
        return report

    def set_retention(self, *policies: AnyPolicy, branch: str | None = None) -> None:
        """Replace the retention policies of the whole ledger (``branch=None``) or one branch.

        Built-in policies (KeepLast, KeepBest, KeepEvery, KeepWithin) are stored
        in the ledger, so ``ledger gc`` from a shell applies them. A custom
        policy (a callable given the branch history, newest first, returning the
        commits to keep) applies only in this process. Per-branch sets add to
        the ledger-wide set. No policies at all: everything is kept.

        Example:
            >>> from ledger.retention import KeepLast, KeepBest
            >>> lg.set_retention(KeepLast(3), KeepBest("val_loss", k=2, mode="min"))  # doctest: +SKIP
        """
        scope = "" if branch is None else check_ref_name(branch, "branch")
        builtin = [p for p in policies if isinstance(p, BUILTIN_POLICIES)]
        custom = [p for p in policies if not isinstance(p, BUILTIN_POLICIES)]
        for p in custom:
            if not callable(p):
                raise PolicyError(
                    f"{p!r} is not a retention policy: use KeepLast/KeepBest/... or a callable"
                )
        with self._lock:
            self._check_open()
            self.refs.update(
                {},
                "set retention",
                extra=[RetentionSet(scope=scope, policies=builtin, time=utcnow())],
            )
            self._custom[scope] = custom

    def expire(self, rev: str, reason: str = "expired by hand") -> str:
        """Drop one commit's state on purpose (licence, privacy); its history stays.

        The bytes go at the next gc (use ``grace=0`` to free them at once).

        Example:
            >>> lg.expire("main~3", reason="data licence withdrawn")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            cid = self.resolve(rev)
            if cid not in self.refs.state().expired:
                self.refs.update(
                    {}, "expire", extra=[Expire(commit=cid, reason=reason, time=utcnow())]
                )
            return cid

    def expired(self) -> dict[str, Expiry]:
        """Commits whose state retention or :meth:`expire` dropped: id -> why and when.

        Example:
            >>> cid = lg.expire("main~3"); lg.expired()[cid].reason  # doctest: +SKIP
            'expired by hand'
        """
        self._check_open()
        return dict(self.refs.state().expired)

    def watched_metrics(self) -> list[str]:
        """The metrics retention keeps the best of (``KeepBest``), ledger-wide then per branch.

        Example:
            >>> lg.set_retention(KeepBest("val_loss")); lg.watched_metrics()  # doctest: +SKIP
            ['val_loss']
        """
        self._check_open()
        scopes = sorted(set(self.refs.state().retention) | set(self._custom))
        policies = [p for scope in ["", *scopes] for p in self.retention(scope or None)]
        return list(dict.fromkeys(p.metric for p in policies if isinstance(p, KeepBest)))

    def verify(
        self,
        full: bool = False,
        repair: bool = False,
        from_remote: str | None = None,
        progress: ProgressFn | None = None,
    ) -> VerifyReport:
        """Check every ref, commit and object a kept commit needs (``full``: re-hash every object).

        ``repair`` sets a torn event-log tail aside, restores refs whose event it
        lost to the intact commits the commit objects name, and rebuilds the ref
        view. ``from_remote`` (implies ``repair`` and ``full``) also refetches
        every missing or damaged object from that configured remote, moving the
        packs with damaged copies to ``objects/quarantine/``.
        ``progress(done, total, "commits")`` is told each commit checked (``ledger.progress``).

        Example:
            >>> check = lg.verify(full=True)  # doctest: +SKIP
            >>> check.ok, check.problems  # doctest: +SKIP
            >>> lg.verify(from_remote="origin").repaired  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            report = self._verify(full, repair, from_remote, progress)
        level = logging.INFO if report.ok else logging.WARNING
        log.log(
            level,
            "verify%s: %d commits, %d chunks (%d bytes) checked, %d problems",
            " --full" if full else "",
            report.commits_checked,
            report.chunks_checked,
            report.bytes_checked,
            len(report.problems),
        )
        return report

    def _verify(
        self, full: bool, repair: bool, from_remote: str | None, progress: ProgressFn | None
    ) -> VerifyReport:
        if from_remote is None:
            return verify_ledger(
                self,
                self.store,
                self.refs,
                full=full,
                repair=repair,
                progress=progress,
                graph=self.graph,
                rebuild_graph=(lambda: self._write_graph(trust_old=False)) if repair else None,
            )
        first = verify_ledger(
            self, self.store, self.refs, full=True, repair=True, progress=progress
        )
        if not first.damaged:
            return first
        with self.gc_lock.hold(shared=False):
            lines = self._refetch(from_remote, first.damaged)
        final = verify_ledger(
            self, self.store, self.refs, full=True, repair=True, progress=progress
        )
        final.repaired = list(dict.fromkeys(first.repaired + lines + final.repaired))
        return final

    def _refetch(self, name: str, damaged: dict[str, str]) -> list[str]:
        """Download good copies of ``damaged`` objects from remote ``name``; quarantine bad packs."""
        from ledger.history.refill import damaged_copies, quarantine
        from ledger.remotes.tracking import open_named
        from ledger.remotes.transfer import download, load_view

        remote, cache = open_named(self, name)
        view = load_view(remote, cache)
        wanted = {bytes.fromhex(h): what for h, what in damaged.items()}
        there = {oid for oid in wanted if view.has(oid)}
        copies = damaged_copies(self.store, there)
        refill = _Refill(self.store, there)
        stored, received = download(view, cast(ObjectStore, refill), sorted(there), wanted)
        lines = [f"refetched {stored} object(s), {received} bytes, from remote {name}"]
        lines += quarantine(self.store, copies, there)
        lacking = len(wanted) - len(there)
        if lacking:
            lines.append(f"remote {name} lacks {lacking} of the damaged objects (see the problems)")
        return lines


class _Refill:
    """The store as a download sees it, with the damaged objects counted as absent."""

    def __init__(self, store: ObjectStore, damaged: set[bytes]) -> None:
        self.store = store
        self.damaged = damaged

    def has(self, oid: bytes) -> bool:
        return oid not in self.damaged and self.store.has(oid)

    def writer(self, *args: Any, **kwargs: Any) -> Any:
        return self.store.writer(*args, **kwargs)
