"""Committing on the facade: ``commit`` (blocking or in the background), ``wait``, ``stage``,
``snapshot`` and ``submit``.

This module owns turning a live state into a draft on the caller's thread
(flattening, the async snapshot, the memory budget) and handing it to the
one commit-writing path, :class:`ledger.api.staging.Stage`, after the
free-space preflight (``ledger.api.preflight``); it also hands
out stages to callers that build commits from parts, and runs the automatic
gc after commits. It writes nothing itself.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Literal, overload

from ledger.api.inputs import _done
from ledger.api.notify import Notifying
from ledger.api.preflight import check_commit_space
from ledger.api.snapshot import Snapshot
from ledger.api.staging import Draft, Stage, draft_of
from ledger.errors import UnsupportedValueError, user_stacklevel
from ledger.history.lineage import commit_target
from ledger.history.records import Commit, CommitRecord
from ledger.pending import CommitHandle

log = logging.getLogger("ledger.commit")


class Committing(Notifying):
    """Commits of live state, and staged commits built from parts."""

    if TYPE_CHECKING:  # Maintenance.gc, mixed into Ledger beside this class: auto-gc calls it
        from ledger.history.gc import GcReport
        from ledger.progress import ProgressFn

        def gc(
            self,
            dry_run: bool = False,
            grace: float | None = None,
            progress: ProgressFn | None = None,
        ) -> GcReport: ...

        def _compact_when_due(self) -> None: ...

    @overload
    def commit(
        self,
        state: Mapping[Any, Any],
        message: str | None = ...,
        *,
        step: int | None = ...,
        epoch: int | None = ...,
        metrics: Mapping[str, Any] | None = ...,
        params: Mapping[str, Any] | None = ...,
        branch: str | None = ...,
        rng: bool = ...,
        data: Mapping[str, Any] | None = ...,
        allow_secrets: Iterable[str] | None = ...,
        blocking: Literal[True] = ...,
    ) -> Commit: ...

    @overload
    def commit(
        self,
        state: Mapping[Any, Any],
        message: str | None = ...,
        *,
        step: int | None = ...,
        epoch: int | None = ...,
        metrics: Mapping[str, Any] | None = ...,
        params: Mapping[str, Any] | None = ...,
        branch: str | None = ...,
        rng: bool = ...,
        data: Mapping[str, Any] | None = ...,
        allow_secrets: Iterable[str] | None = ...,
        blocking: Literal[False],
    ) -> CommitHandle: ...

    @overload
    def commit(
        self,
        state: Mapping[Any, Any],
        message: str | None = ...,
        *,
        step: int | None = ...,
        epoch: int | None = ...,
        metrics: Mapping[str, Any] | None = ...,
        params: Mapping[str, Any] | None = ...,
        branch: str | None = ...,
        rng: bool = ...,
        data: Mapping[str, Any] | None = ...,
        allow_secrets: Iterable[str] | None = ...,
        blocking: bool,
    ) -> Commit | CommitHandle: ...

    def commit(
        self,
        state: Mapping[Any, Any],
        message: str | None = None,
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        branch: str | None = None,
        rng: bool = True,
        data: Mapping[str, Any] | None = None,
        allow_secrets: Iterable[str] | None = None,
        blocking: bool = True,
    ) -> Commit | CommitHandle:
        """Store ``state`` as a new commit on the current branch (or on ``branch``).

        The parent is the branch's tip (a new branch starts at HEAD's commit);
        after :meth:`restore` or :meth:`base_on` on this instance it is the commit
        the state came from instead, and a tip that commit does not descend from
        is kept on the automatic branch ``orig/<branch>/<tip id>``.

        Args:
            state: mapping of tensors, arrays, stateful objects (modules,
                optimizers, schedulers ...), generators, containers and plain values.
            message: a note for the log.
            step: global training step.
            epoch: training epoch.
            metrics: name -> number (loss, accuracy ...).
            params: hyper-parameters (plain values, lists, dicts).
            branch: commit to this branch (created at HEAD if missing) without moving HEAD.
            rng: also capture the global RNG of torch, CUDA, numpy and Python.
            data: data lineage: dataset names, revisions, fingerprints (plain values).
            allow_secrets: names of fields of ``params``, ``metrics``, ``data``
                (``"hub_token"``, ``"metrics.loss"``, ``"data.source"``) or
                ``"message"`` to store as given even where they look like a
                secret; elsewhere a token, key or URL credential is stored as
                ``<redacted>`` with a :class:`SecretRedactedWarning` (docs/metadata.md).
            blocking: False returns a :class:`CommitHandle` as soon as the state
                is snapshotted (copied) and writes it in the background; the next
                call on this ledger waits for it and raises its error, if any.

        Returns:
            The new :class:`Commit` (a :class:`CommitHandle` when not blocking).

        Raises:
            UnsupportedValueError: a value cannot be stored (its path is named).
            DetachedHeadError: HEAD is detached and ``branch`` is not given.
            RefConflictError: another writer moved the branch meanwhile.
            DiskFullError: the commit may not fit in the free space (checked before
                anything is written: chunks already stored count for nothing), or the
                disk filled up while writing (nothing partial became visible).

        Example:
            >>> c = lg.commit({"model": model, "optim": opt}, step=100, metrics={"loss": 0.3})  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            if self._gc_due:
                self._gc_due = False
                self.gc()
            if any(stage.is_open for stage in self._stages):
                raise UnsupportedValueError(
                    "a stage of this ledger is open: commit through it (stage.commit(...)) "
                    "or close it first; a commit inside a stage could deadlock behind a gc"
                )
            started = time.perf_counter()
            if branch is None:
                commit_target(self.refs.snapshot(), None)  # raises DetachedHeadError
            from ledger.state.flatten import Flattener  # torch: loaded by the first commit
            from ledger.state.rng import capture_rng

            flat = Flattener(self.config.chunk_size, unchanged=self.unchanged, has=self.store.has)
            root = flat.flatten_root(state, capture_rng() if rng else None)
            draft = draft_of(
                flat,
                root,
                state,
                message=message,
                step=step,
                epoch=epoch,
                metrics=metrics,
                params=params,
                data=data,
                branch=branch,
                started=started,
                allow_secrets=allow_secrets,
            )
            if blocking:
                return self._write_commit(draft, self.pool)
            size = flat.pending_bytes()
            if size > self.async_budget:
                warnings.warn(
                    f"the state ({size / 2**30:.2f} GiB) exceeds the async commit memory budget "
                    f"({self.async_budget / 2**30:.2f} GiB): committing synchronously",
                    stacklevel=user_stacklevel(),
                )
                return CommitHandle(_done(self._write_commit(draft, self.pool)))
            flat.snapshot(self._staging)
            pool = self.background_pool
            return self._pending.submit(lambda: self._write_commit(draft, pool))

    def wait(self) -> Commit | None:
        """Wait for the pending background commit; return it (None if there was none).

        Raises:
            Whatever the background commit raised (once).

        Example:
            >>> lg.commit(state, blocking=False); lg.wait()  # doctest: +SKIP
        """
        return self._pending.wait()

    def snapshot(self, value: Any) -> Snapshot:
        """Flatten ``value`` now and copy its bytes, for :meth:`Stage.write` to store later.

        The copy goes into the snapshot buffers ``commit(blocking=False)``
        reuses, within ``async_budget``: a value over the budget is not copied
        (``snapshot.copied`` is False, it still reads the live tensors) and the
        caller should store it at once. Waits for the pending background
        commit first (the buffers it uses are the ones handed out next), so
        its error, if any, is raised here.

        Raises:
            UnsupportedValueError: a value cannot be stored (its path is named).

        Example:
            >>> snap = lg.snapshot({"model": model})  # doctest: +SKIP
            >>> h = lg.submit(lambda: write_later(snap))  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            from ledger.state.flatten import Flattener

            flat = Flattener(self.config.chunk_size)
            node = flat.flatten(value, ())
            size = flat.pending_bytes()
            copied = size <= self.async_budget
            if copied:
                flat.snapshot(self._staging)
            return Snapshot(flat, node, size, copied)

    def submit(self, work: Callable[[], Commit]) -> CommitHandle:
        """Run ``work`` on this ledger's background commit writer, as ``commit(blocking=False)`` does.

        For code that builds commits in the background from parts
        (``ledger.adapters.distributed``): ``work`` runs after the commits
        pending before it, its error surfaces on ``result()`` and on the next
        call on this ledger, and ``close()``, interpreter exit and SIGTERM
        wait for it. A stage opened inside ``work`` hashes and writes on the
        background threads (lower CPU priority).

        Example:
            >>> snap = lg.snapshot(state)  # doctest: +SKIP
            >>> h = lg.submit(lambda: write(snap))  # doctest: +SKIP
            >>> h.result()  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            return self._pending.submit(work)

    def stage(self) -> Stage:
        """A staging session: store parts of a commit now, commit a tree of them later.

        The session holds the gc lock shared from entry until exit, so chunks
        it stored or decided to reuse are safe from gc until the commit naming
        them has moved its ref. Parts (:class:`~ledger.api.staging.Part`) encode
        to bytes, so other processes of the same ledger can write theirs and
        send them to the one that commits. ``commit()`` itself takes this path.

        Example:
            >>> with lg.stage() as st:  # doctest: +SKIP
            ...     parts = [st.write({"w": torch.ones(4)}), st.write({"w": torch.zeros(4)})]
            ...     c = st.commit({"world_size": 2, "ranks": parts}, step=10)
            >>> lg.checkout(c.id)["ranks"][1]["w"]  # doctest: +SKIP
            tensor([0., 0., 0., 0.])
        """
        self._check_open()
        # On the background writer (``submit``), at the background threads' priority.
        stage = self._stage(self.background_pool if self._pending.in_writer() else self.pool)
        self._stages.add(stage)
        return stage

    def _stage(self, pool: ThreadPoolExecutor) -> Stage:
        return Stage(
            store=self.store,
            refs=self.refs,
            gc_lock=self.gc_lock,
            config=self.config,
            pool=pool,
            on_commit=self._committed,
            on_close=self._after_commits,
            lineage=(self.lineage, lambda cid: self.record(cid).parents),
        )

    def _write_commit(self, draft: Draft, pool: ThreadPoolExecutor) -> Commit:
        failing = self._reporting("commit-failed", step=draft.step, branch=draft.branch)
        with failing, self._stage(pool) as stage:
            check_commit_space(draft, self.store, pool)  # refuses before the first byte
            return stage.write_draft(draft)

    def _committed(self, commit_id: str, record: CommitRecord) -> None:
        self._records[commit_id] = record
        self.lineage.set(commit_id, explicit=False)
        self._commits_since_gc += 1
        log.info(
            "commit %s on %s, step %s: %d of %d chunks written (%d bytes) in %.2f s",
            commit_id[:12],
            record.branch,
            record.step,
            record.stats.chunks_written,
            record.stats.chunks_total,
            record.stats.bytes_written,
            record.stats.duration_s,
        )
        self._notify_commit(commit_id, record)

    def _after_commits(self) -> None:
        """Run the automatic gc when it is due (outside any stage: gc takes the lock exclusive),
        and start a background compaction of small packs when one is due."""
        self._compact_when_due()
        if self.auto_gc and self._commits_since_gc >= self.auto_gc:
            self._commits_since_gc = 0
            if self._pending.in_writer():
                self._gc_due = True  # run by the next call, on the caller's thread
            else:
                self.gc()
