"""The core of the ``Ledger`` facade: opening, committing, reading and restoring.

This module owns the user-level operations on commits (open, commit, wait,
checkout, restore, log, resolve, close, gc) and their order of effects. It
wires state (flatten/build), history (records, refs, revisions) and objects
(the store) together and must never reach below their public functions: no
byte formats here.

Write order of a commit (design invariant 2): chunks, manifest and commit
object go into new packs that are fsync'd and renamed into place; only then is
the ref-update event appended (fsync'd) and the ref view rewritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

import msgspec

from ledger import metadata
from ledger.api.inputs import (
    CONFIG_FILE,
    DEFAULT_CHUNK_SIZE,
    _clean_metrics,
    _clean_params,
    _default_budget,
    _done,
    _Draft,
    _interrupted_init,
    _opt_int,
    _read_config,
    _refuse_newer,
)
from ledger.errors import (
    ClosedLedgerError,
    CommitExpiredError,
    CorruptionError,
    DetachedHeadError,
    EmptyLedgerError,
    FormatVersionError,
    NotALedgerError,
    RevisionNotFoundError,
    UnsupportedValueError,
)
from ledger.history.gc import GcReport, collect
from ledger.history.graph import refs_under
from ledger.history.records import (
    FORMAT_VERSION,
    Commit,
    CommitRecord,
    CommitStats,
    LedgerConfig,
    commit_decoder,
    msgpack_encoder,
    utcnow,
)
from ledger.history.refs import (
    BRANCH_PREFIX,
    TAG_PREFIX,
    GcLock,
    RefStore,
    check_ref_name,
)
from ledger.history.retention import AnyPolicy, CustomPolicy
from ledger.history.revisions import head_target, resolve
from ledger.manifest import Manifest, manifest_decoder
from ledger.objects.durable import atomic_write, fsync_dir
from ledger.objects.hashing import hash_bytes
from ledger.objects.store import ObjectStore, PackWriter
from ledger.pending import CommitHandle, Pending, lower_priority
from ledger.state.flatten import Flattener, Staging
from ledger.state.rng import capture_rng
from ledger.state.unchanged import UnchangedTensors
from ledger.threads import block_signals

L = TypeVar("L", bound="LedgerCore")


class LedgerCore:
    """Commits, checkouts and restores of one ledger directory (see :class:`ledger.Ledger`)."""

    def __init__(
        self,
        root: Path,
        config: LedgerConfig,
        *,
        fsync: bool,
        workers: int | None,
        auto_gc: int | None = None,
        async_budget: int | None = None,
        trust_versions: bool = False,
    ) -> None:
        self.root = root
        self.config = config
        self.fsync = fsync
        self.store = ObjectStore(root, fsync=fsync)
        self.refs = RefStore(root, fsync=fsync)
        self._workers = workers or max(2, min(8, os.cpu_count() or 2))
        self._pool: ThreadPoolExecutor | None = None
        self._background_pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._records: dict[str, CommitRecord] = {}
        self._closed = False
        self.gc_lock = GcLock(root / "gc.lock")
        self.auto_gc = auto_gc
        self._commits_since_gc = 0
        self._custom: dict[str, list[CustomPolicy]] = {}
        self._pending = Pending()
        threading.Thread(target=metadata.prefetch, name="ledger-metadata", daemon=True).start()
        self._gc_due = False
        self.async_budget = async_budget if async_budget is not None else _default_budget()
        self.unchanged = UnchangedTensors() if trust_versions else None
        self._staging = Staging()

    @classmethod
    def open(
        cls: type[L],
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        fsync: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: bool | Literal["auto"] = "auto",
        workers: int | None = None,
        auto_gc: int | None = None,
        async_budget: int | None = None,
        trust_versions: bool = False,
    ) -> L:
        """Open the ledger in directory ``path`` (the ledger directory itself).

        Args:
            path: the ledger directory.
            create: make a new ledger if ``path`` is missing or empty.
            fsync: make every commit durable before it returns (turn off only for tests).
            chunk_size: bytes per chunk for a new ledger (fixed once created).
            compress: for a new ledger: True tries the codecs on every chunk, False
                stores raw bytes, "auto" (default) compresses when the saving is
                worth the time on this machine's disk and CPU (measured).
            workers: threads for hashing, compressing and reading.
            auto_gc: run :meth:`gc` after every this many commits (None: never).
            async_budget: most bytes a ``commit(blocking=False)`` may copy to
                snapshot the state (default: half the machine's RAM); a larger
                state is committed synchronously, with a warning.
            trust_versions: skip re-reading a tensor this process committed before
                when its storage, version counter and a sample of 8 bytes per 4 KiB
                page are unchanged (see docs/design-decisions.md): unchanged
                tensors then cost nearly nothing, even on a GPU. A sparse write
                that bypasses torch's version counter (through ``.data``, numpy, a
                C extension) and misses every sampled page would go unseen, so
                the default (False) reads every byte.

        Raises:
            NotALedgerError: ``path`` is not a ledger (and ``create`` is False, or it is not empty).
            FormatVersionError: the ledger was written by a newer training-ledger.

        Example:
            >>> lg = Ledger.open("ckpt", create=True)  # doctest: +SKIP
        """
        root = Path(path)
        cfg_path = root / CONFIG_FILE
        # How this process uses the ledger (the config file holds what is fixed at creation).
        settings: dict[str, Any] = {
            "fsync": fsync,
            "workers": workers,
            "auto_gc": auto_gc,
            "async_budget": async_budget,
            "trust_versions": trust_versions,
        }
        if cfg_path.is_file():
            return cls(root, _read_config(cfg_path), **settings)
        if root.exists() and not root.is_dir():
            raise NotALedgerError(f"{root} is a file, not a ledger directory")
        if create and _interrupted_init(root):
            shutil.rmtree(root)
        if root.is_dir() and any(root.iterdir()):
            if _interrupted_init(root):
                raise NotALedgerError(
                    f"{root} holds an interrupted `ledger init` (no {CONFIG_FILE} file, no data); "
                    "pass create=True to start it over"
                )
            raise NotALedgerError(
                f"{root} is not empty and is not a ledger (no {CONFIG_FILE} file); "
                "choose an empty or new directory"
            )
        if not create:
            raise NotALedgerError(
                f"no ledger at {root}; pass create=True or run `ledger init {root}`"
            )
        if chunk_size < 4096 or chunk_size % 64:
            raise UnsupportedValueError(
                f"chunk_size={chunk_size} must be a multiple of 64 and at least 4096"
            )
        return cls._create(root, chunk_size=chunk_size, compress=compress, **settings)

    @classmethod
    def _create(
        cls: type[L],
        root: Path,
        *,
        chunk_size: int,
        compress: bool | Literal["auto"],
        **settings: Any,
    ) -> L:
        root.mkdir(parents=True, exist_ok=True)
        config = LedgerConfig(created=utcnow(), chunk_size=chunk_size, compress=compress)
        lg = cls(root, config, **settings)
        lg.refs.create()
        (root / "gc.lock").touch()  # so that a dry-run gc creates nothing
        (root / "gc.intent").touch()
        if lg.fsync:
            fsync_dir(root / "objects")
        # The config file is written last: a directory without it is not yet a ledger.
        atomic_write(
            root / CONFIG_FILE,
            msgspec.json.format(msgspec.json.encode(config)) + b"\n",
            fsync=lg.fsync,
            tmp_dir=lg.store.tmp_dir,
        )
        return lg

    def __enter__(self: L) -> L:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Wait for pending work, release threads, files and locks. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                self._pending.wait()
            finally:
                self._closed = True
                self._pending.shutdown()
                self._staging.clear()
                for pool in (self._pool, self._background_pool):
                    if pool is not None:
                        pool.shutdown(wait=True)
                self.store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedLedgerError(f"the ledger at {self.root} was closed; open it again")
        self._pending.wait()  # a background commit lands first; its error surfaces here

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker threads shared by commits and reads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self._workers, thread_name_prefix="ledger", initializer=block_signals
            )
        return self._pool

    @property
    def background_pool(self) -> ThreadPoolExecutor:
        """The worker threads of async commits, at a lower CPU priority than the caller."""
        if self._background_pool is None:
            self._background_pool = ThreadPoolExecutor(
                self._workers, thread_name_prefix="ledger-bg", initializer=lower_priority
            )
        return self._background_pool

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
        blocking: bool = True,
    ) -> Commit | CommitHandle:
        """Store ``state`` as a new commit on the current branch (or on ``branch``).

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
            blocking: False returns a :class:`CommitHandle` as soon as the state
                is snapshotted (copied) and writes it in the background; the next
                call on this ledger waits for it and raises its error, if any.

        Returns:
            The new :class:`Commit` (a :class:`CommitHandle` when not blocking).

        Raises:
            UnsupportedValueError: a value cannot be stored (its path is named).
            DetachedHeadError: HEAD is detached and ``branch`` is not given.
            RefConflictError: another writer moved the branch meanwhile.

        Example:
            >>> c = lg.commit({"model": model, "optim": opt}, step=100, metrics={"loss": 0.3})  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            if self._gc_due:
                self._gc_due = False
                self.gc()
            started = time.perf_counter()
            if branch is not None:
                check_ref_name(branch, "branch")
            elif self.current_branch is None:
                self._commit_target(self.refs.snapshot(), None)  # raises DetachedHeadError
            flat = Flattener(self.config.chunk_size, unchanged=self.unchanged, has=self.store.has)
            root = flat.flatten_root(state, capture_rng() if rng else None)
            packages = metadata.installed_packages()
            draft = _Draft(
                flat=flat,
                root=root,
                branch=branch,
                packages=packages,
                meta=metadata.capture(state, _clean_params(data), hash_bytes(packages).hex()),
                step=_opt_int(step, "step"),
                epoch=_opt_int(epoch, "epoch"),
                message=message,
                metrics=_clean_metrics(metrics),
                params=_clean_params(params),
            )
            if blocking:
                return self._write_commit(draft, started, self.pool)
            size = flat.pending_bytes()
            if size > self.async_budget:
                warnings.warn(
                    f"the state ({size / 2**30:.2f} GiB) exceeds the async commit memory budget "
                    f"({self.async_budget / 2**30:.2f} GiB): committing synchronously",
                    stacklevel=2,
                )
                return CommitHandle(_done(self._write_commit(draft, started, self.pool)))
            flat.snapshot(self._staging)
            pool = self.background_pool
            return self._pending.submit(lambda: self._write_commit(draft, started, pool))

    def wait(self) -> Commit | None:
        """Wait for the pending background commit; return it (None if there was none).

        Raises:
            Whatever the background commit raised (once).

        Example:
            >>> lg.commit(state, blocking=False); lg.wait()  # doctest: +SKIP
        """
        return self._pending.wait()

    def _write_commit(self, draft: _Draft, started: float, pool: ThreadPoolExecutor) -> Commit:
        def store_chunks(writer: PackWriter) -> None:
            draft.flat.check_reused()
            draft.flat.assign(writer.put_chunks(draft.flat.chunks()))

        def stats(writer: PackWriter) -> CommitStats:
            return CommitStats(
                logical_bytes=writer.stats.logical_bytes + draft.flat.reused_bytes,
                bytes_written=writer.stats.bytes_written,
                chunks_total=writer.stats.chunks_total + draft.flat.reused_chunks,
                chunks_written=writer.stats.chunks_written,
                chunks_trusted=draft.flat.reused_chunks,
                tensors=draft.flat.tensors,
                duration_s=round(time.perf_counter() - started, 6),
            )

        # Shared gc lock from the first dedup decision until the ref moved (see gc.py).
        with self.gc_lock.hold(shared=True):
            commit_id, record = self._commit_tree(draft, pool, store_chunks, stats)
        self._records[commit_id] = record
        self._commits_since_gc += 1
        if self.auto_gc and self._commits_since_gc >= self.auto_gc:
            self._commits_since_gc = 0
            if self._pending.in_writer():
                self._gc_due = True  # run by the next call, on the caller's thread
            else:
                self.gc()
        return Commit.from_record(commit_id, record)

    def _commit_tree(
        self,
        draft: _Draft,
        pool: ThreadPoolExecutor,
        store_chunks: Callable[[PackWriter], None],
        stats: Callable[[PackWriter], CommitStats],
    ) -> tuple[str, CommitRecord]:
        """Write a commit of ``draft.root`` in the invariant's order; the caller holds the gc
        lock shared.

        ``store_chunks`` stores the chunks the tree names that are not durable yet
        (the multi-writer adapters stored theirs before: they pass a no-op); then
        come the manifest, the commit object, and the compare-and-swap ref move.

        Raises:
            DetachedHeadError: HEAD is detached and ``draft.branch`` is not given.
            RefConflictError: another writer moved the branch meanwhile.
        """
        self.store.sync()
        refs = self.refs.snapshot()
        target, parent = self._commit_target(refs, draft.branch)
        expected = refs.get(BRANCH_PREFIX + target)
        writer = self.store.writer(pool, compress=self.config.compress)
        try:
            store_chunks(writer)
            manifest = Manifest(
                format=FORMAT_VERSION, chunk_size=self.config.chunk_size, root=draft.root
            )
            manifest_id = writer.put("manifest", msgpack_encoder.encode(manifest))
            writer.put("blob", draft.packages)
            record = CommitRecord(
                manifest=manifest_id,
                parents=[parent] if parent else [],
                time=utcnow(),
                branch=target,
                step=draft.step,
                epoch=draft.epoch,
                message=draft.message,
                metrics=draft.metrics,
                params=draft.params,
                meta=draft.meta,
                stats=stats(writer),
            )
            commit_id = writer.put("commit", msgpack_encoder.encode(record))
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        self.refs.update(
            {BRANCH_PREFIX + target: (expected, commit_id)}, f"commit {commit_id[:12]}"
        )
        return commit_id, record

    @contextlib.contextmanager
    def _rooting(self, rev: str) -> Iterator[str]:
        """Resolve ``rev`` for a new ref, safe against a concurrent gc.

        Holds the gc lock shared while the caller moves the ref (like a commit),
        after checking, with the pack list re-read, that the commit is still stored:
        a commit reachable from no ref may have been swept by another process.
        """
        with self.gc_lock.hold(shared=True):
            self.store.sync()
            cid = self.resolve(rev)
            if self.store.locate(bytes.fromhex(cid)) is None:
                self._records.pop(cid, None)
                raise RevisionNotFoundError(
                    f"commit {cid[:12]} ({rev!r}) is no longer stored: gc removed it after "
                    "it became unreachable"
                )
            yield cid

    def _commit_target(self, refs: dict[str, str], branch: str | None) -> tuple[str, str | None]:
        head_branch, head_id = head_target(refs)
        if branch is not None:
            check_ref_name(branch, "branch")
            existing = refs.get(BRANCH_PREFIX + branch)
            if existing is not None:
                return branch, existing
            return branch, head_id
        if head_branch is None:
            raise DetachedHeadError(
                f"HEAD is detached at {head_id and head_id[:12]}; pass branch='name' to commit, "
                "or switch to a branch first"
            )
        return head_branch, head_id

    def record(self, commit_id: str) -> CommitRecord:
        """The stored record of a commit (by full id), hash-checked and cached."""
        rec = self._records.get(commit_id)
        if rec is None:
            try:
                oid = bytes.fromhex(commit_id)
            except ValueError:
                raise RevisionNotFoundError(f"{commit_id!r} is not a commit id") from None
            data = self.store.read(oid, f"commit {commit_id[:12]}")
            try:
                rec = commit_decoder.decode(data)
            except msgspec.DecodeError as e:
                _refuse_newer(data, f"commit {commit_id[:12]}")
                raise CorruptionError(f"commit {commit_id[:12]} cannot be decoded: {e}") from e
            if rec.format > FORMAT_VERSION:
                raise FormatVersionError(
                    f"commit {commit_id[:12]} has format {rec.format}; upgrade training-ledger"
                )
            self._records[commit_id] = rec
        return rec

    def get(self, rev: str) -> Commit:
        """The :class:`Commit` a revision names.

        Example:
            >>> lg.get("main~1").step  # doctest: +SKIP
            100
        """
        cid = self.resolve(rev)
        return Commit.from_record(cid, self.record(cid))

    def manifest(self, rev: str) -> tuple[str, Manifest]:
        """The commit id and manifest of a revision.

        Raises:
            CommitExpiredError: retention or ``expire`` dropped the commit's state.
        """
        cid = self.resolve(rev)
        rec = self.record(cid)
        expiry = self.refs.state().expired.get(cid)
        if expiry is not None:
            raise CommitExpiredError(
                f"commit {cid[:12]} (step {rec.step}) was expired at {expiry.time:%Y-%m-%d %H:%M:%S} "
                f"UTC: {expiry.reason}; its metadata remains (log, show, diff), its state does not"
            )
        return cid, self.manifest_by_id(rec.manifest, cid)

    def manifest_by_id(self, manifest_id: str, cid: str) -> Manifest:
        """Read and decode a manifest object (``cid`` names it in errors)."""
        data = self.store.read(bytes.fromhex(manifest_id), f"manifest of commit {cid[:12]}")
        try:
            manifest = manifest_decoder.decode(data)
        except msgspec.DecodeError as e:
            _refuse_newer(data, f"the manifest of commit {cid[:12]}")
            raise CorruptionError(f"manifest of commit {cid[:12]} cannot be decoded: {e}") from e
        if manifest.format > FORMAT_VERSION:
            raise FormatVersionError(
                f"commit {cid[:12]} has manifest format {manifest.format}; upgrade training-ledger"
            )
        return manifest

    def resolve(self, rev: str) -> str:
        """The full commit id of a revision (branch, tag, id prefix, HEAD, REV~N).

        Raises:
            RevisionNotFoundError: nothing has that name.
            AmbiguousRevisionError: an id prefix matches several commits.

        Example:
            >>> lg.resolve("main~1")  # doctest: +SKIP
            'b3f1...'
        """
        self._check_open()
        refs = self.refs.snapshot()

        def ids() -> list[str]:
            self.store.refresh()
            return [oid.hex() for oid in self.store.ids("commit")]

        def first_parent(cid: str) -> str | None:
            parents = self.record(cid).parents
            return parents[0] if parents else None

        return resolve(rev, refs, ids, first_parent)

    def log(self, rev: str = "HEAD") -> Iterator[Commit]:
        """Commits from ``rev`` back to the root, newest first, following first parents.

        Example:
            >>> [c.step for c in lg.log("main")]  # doctest: +SKIP
            [300, 200, 100]
        """
        try:
            cid: str | None = self.resolve(rev)
        except EmptyLedgerError:
            return
        while cid is not None:
            rec = self.record(cid)
            yield Commit.from_record(cid, rec)
            cid = rec.parents[0] if rec.parents else None

    @property
    def head(self) -> Commit | None:
        """The commit HEAD points at, or None before the first commit."""
        self._check_open()
        _, cid = head_target(self.refs.snapshot())
        return None if cid is None else Commit.from_record(cid, self.record(cid))

    @property
    def current_branch(self) -> str | None:
        """The branch HEAD is attached to, or None when detached."""
        self._check_open()
        return head_target(self.refs.snapshot())[0]

    def retention(self, branch: str | None = None) -> list[AnyPolicy]:
        """The policies in force for ``branch`` (ledger-wide plus its own), or the ledger-wide set."""
        stored = self.refs.state().retention
        out: list[AnyPolicy] = [*stored.get("", []), *self._custom.get("", [])]
        if branch is not None:
            out += [*stored.get(branch, []), *self._custom.get(branch, [])]
        return out

    def gc(self, dry_run: bool = False, grace: float | None = None) -> GcReport:
        """Expire what retention drops, then delete every object no ref or kept commit needs.

        Args:
            dry_run: report what would be expired and freed; change nothing.
            grace: seconds; packs younger than this are never touched (None:
                the ledger's configured grace, 15 minutes by default).

        Example:
            >>> report = lg.gc(grace=0)  # doctest: +SKIP
            >>> report.bytes_freed, report.expired  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            self._commits_since_gc = 0
            with self.gc_lock.hold(shared=False):
                return collect(
                    self,
                    self.store,
                    self.refs,
                    policies_for=self.retention,
                    grace=self.config.gc_grace if grace is None else float(grace),
                    dry_run=dry_run,
                )

    def branches(self) -> dict[str, str]:
        """Branch name -> commit id."""
        self._check_open()
        return refs_under(self.refs.snapshot(), BRANCH_PREFIX)

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        self._check_open()
        return refs_under(self.refs.snapshot(), TAG_PREFIX)
