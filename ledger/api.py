"""The ``Ledger`` facade: the one object users touch.

This module owns the user-level operations (open, commit, checkout, restore,
branch, switch, tag, log, resolve, close) and their order of effects. It wires
state (flatten/build), history (records, refs, revisions) and objects (the
store) together and must never reach below their public functions: no byte
formats here.

Write order of a commit (design invariant 2): chunks, manifest and commit
object go into new packs that are fsync'd and renamed into place; only then is
the ref-update event appended (fsync'd) and the ref view rewritten.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, overload

import msgspec
import pyarrow as pa
import torch

from ledger import inspect, metadata
from ledger.errors import (
    ClosedLedgerError,
    CommitExpiredError,
    CorruptionError,
    DetachedHeadError,
    EmptyLedgerError,
    FormatVersionError,
    NotALedgerError,
    PolicyError,
    RefNameError,
    RevisionNotFoundError,
    UnmergedBranchError,
    UnsupportedValueError,
)
from ledger.history.gc import GcReport, collect
from ledger.history.records import (
    BUILTIN_POLICIES,
    FORMAT_VERSION,
    LEDGER_KIND,
    Commit,
    CommitRecord,
    CommitStats,
    DictNode,
    Expire,
    LedgerConfig,
    Manifest,
    RetentionSet,
    commit_decoder,
    config_decoder,
    manifest_decoder,
    msgpack_encoder,
    unknown_tags,
    utcnow,
)
from ledger.history.refs import (
    BRANCH_PREFIX,
    HEAD,
    SYMREF_PREFIX,
    TAG_PREFIX,
    GcLock,
    RefStore,
    check_ref_name,
)
from ledger.history.retention import AnyPolicy, CustomPolicy
from ledger.history.revisions import head_target, resolve
from ledger.history.verify import VerifyReport
from ledger.history.verify import verify as verify_ledger
from ledger.objects.durable import atomic_write, fsync_dir
from ledger.objects.hashing import hash_bytes
from ledger.objects.store import ObjectStore
from ledger.pending import CommitHandle, Pending
from ledger.state.build import Builder, Restorer, device_available, finalize, parse_paths
from ledger.state.flatten import Flattener
from ledger.state.rng import RNG_KEY, capture_rng, restore_rng

DEFAULT_CHUNK_SIZE = 4 << 20
CONFIG_FILE = "LEDGER"


class Ledger:
    """A ledger directory: commits of training state, branches, tags and HEAD.

    Example:
        >>> import tempfile, torch
        >>> with Ledger.open(tempfile.mkdtemp() + "/ckpt", create=True) as lg:
        ...     c = lg.commit({"w": torch.ones(3)}, step=1, message="first")
        ...     lg.checkout("HEAD")["w"].tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        root: Path,
        config: LedgerConfig,
        *,
        fsync: bool,
        workers: int | None,
        auto_gc: int | None = None,
        async_budget: int | None = None,
    ) -> None:
        self.root = root
        self.config = config
        self.fsync = fsync
        self.store = ObjectStore(root, fsync=fsync)
        self.refs = RefStore(root, fsync=fsync)
        self._workers = workers or max(2, min(8, os.cpu_count() or 2))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._records: dict[str, CommitRecord] = {}
        self._closed = False
        self.gc_lock = GcLock(root / "gc.lock")
        self.auto_gc = auto_gc
        self._commits_since_gc = 0
        self._custom: dict[str, list[CustomPolicy]] = {}
        self._pending = Pending()
        self._gc_due = False
        self.async_budget = async_budget if async_budget is not None else _default_budget()

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        fsync: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        compress: bool = True,
        workers: int | None = None,
        auto_gc: int | None = None,
        async_budget: int | None = None,
    ) -> Ledger:
        """Open the ledger in directory ``path`` (the ledger directory itself).

        Args:
            path: the ledger directory.
            create: make a new ledger if ``path`` is missing or empty.
            fsync: make every commit durable before it returns (turn off only for tests).
            chunk_size: bytes per chunk for a new ledger (fixed once created).
            compress: let a new ledger compress chunks when that saves space.
            workers: threads for hashing, compressing and reading.
            auto_gc: run :meth:`gc` after every this many commits (None: never).
            async_budget: most bytes a ``commit(blocking=False)`` may copy to
                snapshot the state (default: half the machine's RAM); a larger
                state is committed synchronously, with a warning.

        Raises:
            NotALedgerError: ``path`` is not a ledger (and ``create`` is False, or it is not empty).
            FormatVersionError: the ledger was written by a newer training-ledger.

        Example:
            >>> lg = Ledger.open("ckpt", create=True)  # doctest: +SKIP
        """
        root = Path(path)
        cfg_path = root / CONFIG_FILE
        if cfg_path.is_file():
            config = _read_config(cfg_path)
            return cls(
                root,
                config,
                fsync=fsync,
                workers=workers,
                auto_gc=auto_gc,
                async_budget=async_budget,
            )
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
        return cls._create(
            root,
            chunk_size=chunk_size,
            compress=compress,
            fsync=fsync,
            workers=workers,
            auto_gc=auto_gc,
            async_budget=async_budget,
        )

    @classmethod
    def _create(
        cls,
        root: Path,
        *,
        chunk_size: int,
        compress: bool,
        fsync: bool,
        workers: int | None,
        auto_gc: int | None,
        async_budget: int | None,
    ) -> Ledger:
        root.mkdir(parents=True, exist_ok=True)
        config = LedgerConfig(created=utcnow(), chunk_size=chunk_size, compress=compress)
        lg = cls(
            root, config, fsync=fsync, workers=workers, auto_gc=auto_gc, async_budget=async_budget
        )
        lg.refs.create()
        if fsync:
            fsync_dir(root / "objects")
        # The config file is written last: a directory without it is not yet a ledger.
        atomic_write(
            root / CONFIG_FILE,
            msgspec.json.format(msgspec.json.encode(config)) + b"\n",
            fsync=fsync,
            tmp_dir=lg.store.tmp_dir,
        )
        return lg

    def __enter__(self) -> Ledger:
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
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self.store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedLedgerError(f"the ledger at {self.root} was closed; open it again")
        self._pending.wait()  # a background commit lands first; its error surfaces here

    @property
    def pool(self) -> ThreadPoolExecutor:
        """The worker threads shared by commits and reads."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="ledger")
        return self._pool

    # -- commits ---------------------------------------------------------------

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
            flat = Flattener(self.config.chunk_size)
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
                return self._write_commit(draft, started)
            size = sum(len(job.data) for job in flat.jobs)
            if size > self.async_budget:
                warnings.warn(
                    f"the state ({size / 2**30:.2f} GiB) exceeds the async commit memory budget "
                    f"({self.async_budget / 2**30:.2f} GiB): committing synchronously",
                    stacklevel=2,
                )
                return CommitHandle(_done(self._write_commit(draft, started)))
            flat.snapshot()
            return self._pending.submit(lambda: self._write_commit(draft, started))

    def wait(self) -> Commit | None:
        """Wait for the pending background commit; return it (None if there was none).

        Raises:
            Whatever the background commit raised (once).

        Example:
            >>> lg.commit(state, blocking=False); lg.wait()  # doctest: +SKIP
        """
        return self._pending.wait()

    def _write_commit(self, draft: _Draft, started: float) -> Commit:
        # Shared gc lock from the first dedup decision until the ref moved (see gc.py).
        with self.gc_lock.hold(shared=True):
            self.store.sync()
            refs = self.refs.snapshot()
            target, parent = self._commit_target(refs, draft.branch)
            expected = refs.get(BRANCH_PREFIX + target)
            writer = self.store.writer(self.pool, compress=self.config.compress)
            try:
                draft.flat.assign(writer.put_chunks(draft.flat.chunks()))
                manifest = Manifest(
                    format=FORMAT_VERSION, chunk_size=self.config.chunk_size, root=draft.root
                )
                manifest_id = writer.put("manifest", msgpack_encoder.encode(manifest))
                writer.put("blob", draft.packages)
                stats = CommitStats(
                    logical_bytes=writer.stats.logical_bytes,
                    bytes_written=writer.stats.bytes_written,
                    chunks_total=writer.stats.chunks_total,
                    chunks_written=writer.stats.chunks_written,
                    tensors=draft.flat.tensors,
                    duration_s=round(time.perf_counter() - started, 6),
                )
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
                    stats=stats,
                )
                commit_id = writer.put("commit", msgpack_encoder.encode(record))
                writer.finish()
            except BaseException:
                writer.abort()
                raise
            self.refs.update(
                {BRANCH_PREFIX + target: (expected, commit_id)}, f"commit {commit_id[:12]}"
            )
        self._records[commit_id] = record
        self._commits_since_gc += 1
        if self.auto_gc and self._commits_since_gc >= self.auto_gc:
            self._commits_since_gc = 0
            if self._pending.in_writer():
                self._gc_due = True  # run by the next call, on the caller's thread
            else:
                self.gc()
        return Commit.from_record(commit_id, record)

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

    # -- reading commits ---------------------------------------------------------

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

    # -- checkout / restore -------------------------------------------------------

    def checkout(
        self,
        rev: str = "HEAD",
        map_location: str | torch.device | None = "cpu",
        paths: list[str] | None = None,
    ) -> dict[Any, Any]:
        """Read a commit's state as a nested dict of tensors and plain values (moves nothing).

        Args:
            rev: the revision to read.
            map_location: device for every tensor; None puts each back where it
                was saved when that device exists (else on the CPU).
            paths: read only these parts, e.g. ``["model"]`` or ``["optim/state"]``;
                only their chunks are read.

        Example:
            >>> weights = lg.checkout("best", paths=["model"])["model"]  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            cid, manifest = self.manifest(rev)
            builder = Builder(self.store, self.pool, cid, manifest.chunk_size)
            builder.pin = _to_cuda(map_location)
            builder.index(manifest.root, ())
            tree = builder.build(manifest.root, (), parse_paths(paths))
            builder.load()
            out = finalize(tree, _mover(map_location, builder))
            if builder.pin:
                torch.cuda.synchronize()
            return out

    def restore(
        self,
        state: MutableMapping[Any, Any],
        rev: str = "HEAD",
        strict: bool = True,
        rng: bool = True,
    ) -> Commit:
        """Load a commit into live objects in place: modules, optimizers, tensors, values.

        Every key, shape and dtype is checked before anything changes; plain
        values are assigned back into ``state``.

        Args:
            state: the same kind of mapping that was committed.
            rev: the revision to restore.
            strict: fail on keys missing from either side.
            rng: also set the global RNGs back.

        Raises:
            StateMismatchError: keys, shapes or dtypes differ (nothing was changed).
            CorruptionError: a chunk fails its hash check. Chunks are read straight
                into the live tensors, so they may then be partly loaded: restore
                another commit into them (the error names the tensor and commit).

        Example:
            >>> lg.restore({"model": model, "optim": opt, "step": 0})  # doctest: +SKIP
        """
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
            return Commit.from_record(cid, self.record(cid))

    # -- refs ---------------------------------------------------------------------

    def branch(self, name: str, at: str = "HEAD") -> Commit:
        """Create branch ``name`` at revision ``at`` (HEAD does not move).

        Raises:
            RefNameError: the name is invalid or the branch exists.

        Example:
            >>> lg.branch("exp-b", at="main~2")  # doctest: +SKIP
        """
        check_ref_name(name, "branch")
        with self._lock:
            self._check_open()
            cid = self.resolve(at)
            if BRANCH_PREFIX + name in self.refs.snapshot():
                raise RefNameError(
                    f"branch {name!r} already exists; pick another name or switch to it"
                )
            self.refs.update({BRANCH_PREFIX + name: (None, cid)}, f"branch {name} at {at}")
            return Commit.from_record(cid, self.record(cid))

    def delete_branch(self, name: str, force: bool = False) -> str:
        """Delete a branch; returns the commit id it pointed at.

        Refuses the branch HEAD is on, and a branch whose tip no other branch or
        tag reaches (its commits would lose their last ref) unless ``force``.

        Example:
            >>> lg.delete_branch("exp-b", force=True)  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            ref = BRANCH_PREFIX + name
            tip = refs.get(ref)
            if tip is None:
                raise RefNameError(f"no branch named {name!r}; see `ledger branch`")
            if head_target(refs)[0] == name:
                raise RefNameError(
                    f"branch {name!r} is checked out (HEAD); switch to another branch first"
                )
            if not force and not self._reached_by_others(tip, ref, refs):
                raise UnmergedBranchError(
                    f"branch {name!r} (at {tip[:12]}) is not reachable from any other branch or tag; "
                    "tag it, or pass force=True (`ledger branch -D`) to delete it anyway"
                )
            self.refs.update({ref: (tip, None)}, f"delete branch {name}")
            return tip

    def _reached_by_others(self, tip: str, skip: str, refs: dict[str, str]) -> bool:
        for ref, cid in refs.items():
            if ref == skip or not ref.startswith((BRANCH_PREFIX, TAG_PREFIX)):
                continue
            stack, seen = [cid], set()
            while stack:
                cur = stack.pop()
                if cur == tip:
                    return True
                if cur in seen:
                    continue
                seen.add(cur)
                stack.extend(self.record(cur).parents)
        return False

    def rename_branch(self, old: str, new: str) -> None:
        """Rename a branch (HEAD follows it if attached), atomically.

        Example:
            >>> lg.rename_branch("exp-b", "lr-3e-4")  # doctest: +SKIP
        """
        check_ref_name(new, "branch")
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            tip = refs.get(BRANCH_PREFIX + old)
            if tip is None:
                raise RefNameError(f"no branch named {old!r}; see `ledger branch`")
            if BRANCH_PREFIX + new in refs:
                raise RefNameError(f"branch {new!r} already exists; pick another name")
            changes: dict[str, tuple[str | None, str | None]] = {
                BRANCH_PREFIX + old: (tip, None),
                BRANCH_PREFIX + new: (None, tip),
            }
            if head_target(refs)[0] == old:
                changes[HEAD] = (refs[HEAD], SYMREF_PREFIX + BRANCH_PREFIX + new)
            self.refs.update(changes, f"rename branch {old} to {new}")

    # -- retention, gc, verify ------------------------------------------------------

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

    def verify(self, full: bool = False, repair: bool = False) -> VerifyReport:
        """Check every ref, commit and object a kept commit needs (``full``: re-hash every chunk).

        ``repair`` rebuilds the ref view from the event log and cuts a torn log tail.

        Example:
            >>> check = lg.verify(full=True)  # doctest: +SKIP
            >>> check.ok, check.problems  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            return verify_ledger(self, self.store, self.refs, full=full, repair=repair)

    # -- reading history for people ----------------------------------------------

    def show(self, rev: str = "HEAD") -> inspect.ShowReport:
        """A commit's metadata and a summary of its tensors and values.

        Example:
            >>> [t.path for t in lg.show("HEAD").tensors][:2]  # doctest: +SKIP
            ['model/fc.weight', 'model/fc.bias']
        """
        self._check_open()
        return inspect.show(self, rev)

    def diff(self, a: str, b: str) -> inspect.DiffReport:
        """Metrics (with deltas), params, metadata and tensors of two commits side by side.

        Example:
            >>> [t.path for t in lg.diff("main", "exp-b").tensors.changed]  # doctest: +SKIP
            ['model/head.weight']
        """
        self._check_open()
        with self._lock:
            return inspect.diff(self, a, b)

    def du(self) -> inspect.DuReport:
        """Logical vs stored bytes, dedup and compression ratios, per branch.

        Example:
            >>> lg.du().dedup_ratio > 1  # doctest: +SKIP
            True
        """
        self._check_open()
        return inspect.du(self)

    def table(self) -> pa.Table:
        """Every commit as a ``pyarrow.Table`` row (metrics and params as columns).

        Example:
            >>> lg.table().column("metrics.loss")  # doctest: +SKIP
        """
        self._check_open()
        return inspect.table(self)

    def tag(self, name: str, at: str = "HEAD") -> Commit:
        """Create tag ``name`` at ``at``; tags never move.

        Example:
            >>> lg.tag("v1")  # doctest: +SKIP
        """
        check_ref_name(name, "tag")
        with self._lock:
            self._check_open()
            cid = self.resolve(at)
            if TAG_PREFIX + name in self.refs.snapshot():
                raise RefNameError(
                    f"tag {name!r} already exists; tags never move, pick another name"
                )
            self.refs.update({TAG_PREFIX + name: (None, cid)}, f"tag {name} at {at}")
            return Commit.from_record(cid, self.record(cid))

    def branches(self) -> dict[str, str]:
        """Branch name -> commit id."""
        self._check_open()
        return _strip(self.refs.snapshot(), BRANCH_PREFIX)

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        self._check_open()
        return _strip(self.refs.snapshot(), TAG_PREFIX)

    def switch(self, rev: str) -> Commit | None:
        """Move HEAD: onto a branch, or detached onto any other revision.

        Returns the commit HEAD now points at (None for an unborn branch).

        Example:
            >>> lg.switch("exp-b")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            old = refs.get(HEAD)
            if BRANCH_PREFIX + rev in refs or (rev.startswith(BRANCH_PREFIX) and rev in refs):
                ref = rev if rev.startswith(BRANCH_PREFIX) else BRANCH_PREFIX + rev
                self.refs.update({HEAD: (old, SYMREF_PREFIX + ref)}, f"switch to {rev}")
                cid = refs[ref]
            else:
                cid = self.resolve(rev)
                self.refs.update({HEAD: (old, cid)}, f"switch to {rev} (detached)")
            return Commit.from_record(cid, self.record(cid))


# -- helpers -----------------------------------------------------------------------


def _refuse_newer(data: bytes, what: str) -> None:
    newer = unknown_tags(data)
    if newer:
        raise FormatVersionError(
            f"{what} uses record kinds {sorted(newer)} from a newer training-ledger; "
            "upgrade: pip install -U training-ledger"
        )


def _read_config(path: Path) -> LedgerConfig:
    try:
        raw = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise NotALedgerError(f"{path} is not a ledger config ({e})") from e
    if not isinstance(raw, dict) or raw.get("kind") != LEDGER_KIND:
        raise NotALedgerError(f"{path.parent} is not a training-ledger directory")
    version = raw.get("format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path.parent} was written with ledger format {version}, this training-ledger reads "
            f"up to {FORMAT_VERSION}; upgrade: pip install -U training-ledger"
        )
    try:
        return config_decoder.decode(path.read_bytes())
    except msgspec.ValidationError as e:
        raise NotALedgerError(f"{path} is not a valid ledger config ({e})") from e


class _Draft:
    """A commit prepared on the caller's thread, written by :meth:`Ledger._write_commit`."""

    def __init__(
        self,
        *,
        flat: Flattener,
        root: DictNode,
        branch: str | None,
        packages: bytes,
        meta: dict[str, Any],
        step: int | None,
        epoch: int | None,
        message: str | None,
        metrics: dict[str, float],
        params: dict[str, Any],
    ) -> None:
        self.flat = flat
        self.root = root
        self.branch = branch
        self.packages = packages
        self.meta = meta
        self.step = step
        self.epoch = epoch
        self.message = message
        self.metrics = metrics
        self.params = params


def _done(commit: Commit) -> Future[Commit]:
    future: Future[Commit] = Future()
    future.set_result(commit)
    return future


def _default_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


_INIT_FILES = {"events.log", "refs", "lock", "gc.lock", "objects"}


def _interrupted_init(root: Path) -> bool:
    """A directory left by a crash inside ``_create``: our skeleton, no config, no pack."""
    if not root.is_dir() or (root / CONFIG_FILE).exists():
        return False
    names = {p.name for p in root.iterdir()}
    if not names or not names <= _INIT_FILES:
        return False
    packs = root / "objects" / "packs"
    return not (packs.is_dir() and any(packs.iterdir()))


def _strip(refs: dict[str, str], prefix: str) -> dict[str, str]:
    return {k[len(prefix) :]: v for k, v in sorted(refs.items()) if k.startswith(prefix)}


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedValueError(f"{name}={value!r} must be an integer") from None


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str):
            raise UnsupportedValueError(f"metric name {key!r} must be a string")
        try:
            out[key] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            raise UnsupportedValueError(f"metrics[{key!r}] = {value!r} is not a number") from None
    return out


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    def clean(value: Any, where: str) -> Any:
        if value is None:
            return None
        for plain in (bool, int, float, str):  # exact types: numpy.float64 is a float subclass
            if isinstance(value, plain):
                return plain(value)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return clean(value.item(), where)
        if isinstance(value, Mapping):
            return {str(k): clean(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        raise UnsupportedValueError(
            f"{where} is a {type(value).__name__}; params hold plain values, lists and dicts"
        )

    return {str(k): clean(v, f"params[{k!r}]") for k, v in (params or {}).items()}


def _to_cuda(map_location: str | torch.device | None) -> bool:
    if map_location is None or not torch.cuda.is_available():
        return False
    return torch.device(map_location).type == "cuda"


def _mover(map_location: str | torch.device | None, builder: Builder) -> Any:
    if map_location is None:

        def home(t: torch.Tensor) -> torch.Tensor:
            saved = builder.devices.get(id(t), "cpu")
            return t.to(saved) if saved != "cpu" and device_available(saved) else t

        return home
    device = torch.device(map_location)
    if device.type == "cpu":
        return lambda t: t
    # Pinned (page-locked) source buffers make these copies asynchronous DMA;
    # checkout synchronizes once before handing the tensors back.
    return lambda t: t.to(device, non_blocking=t.is_pinned())
