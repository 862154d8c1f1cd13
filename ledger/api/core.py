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

import datetime as dt
import os
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from ledger import metadata
from ledger.api.initdir import (
    CONFIG_FILE,
    clear_interrupted_init,
    init_lock,
    interrupted_init,
    not_a_ledger,
    remove_marker,
    write_marker,
)
from ledger.api.inputs import DEFAULT_CHUNK_SIZE, _default_budget, _read_config, _refuse_newer
from ledger.errors import (
    ClosedLedgerError,
    CommitExpiredError,
    CorruptionError,
    EmptyLedgerError,
    FormatVersionError,
    NotALedgerError,
    RevisionNotFoundError,
    UnsupportedValueError,
)
from ledger.history.commitgraph import GraphFile, Walker
from ledger.history.graph import first_parents, refs_under
from ledger.history.lineage import Lineage
from ledger.history.records import (
    FORMAT_VERSION,
    Commit,
    CommitRecord,
    Expiry,
    LedgerConfig,
    commit_decoder,
    utcnow,
)
from ledger.history.refs import (
    BRANCH_PREFIX,
    TAG_PREFIX,
    GcLock,
    RefStore,
)
from ledger.history.retention import AnyPolicy, CustomPolicy
from ledger.history.revisions import head_target, refs_as_of, resolve
from ledger.manifest import Manifest, check_manifest, manifest_decoder
from ledger.objects.durable import atomic_write, fsync_dir
from ledger.objects.store import ObjectStore
from ledger.pending import Pending, lower_priority
from ledger.remotes.lazy import LazySource
from ledger.threads import block_signals

if TYPE_CHECKING:
    from ledger.api.staging import Stage
    from ledger.state.flatten import Staging
    from ledger.state.unchanged import UnchangedTensors

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
        # Objects the store lacks come from the remotes this ledger knows (on demand).
        self.store.source = LazySource(root, self.store)
        self.refs = RefStore(root, fsync=fsync)
        self._workers = workers or max(2, min(8, os.cpu_count() or 2))
        self._pool: ThreadPoolExecutor | None = None
        self._background_pool: ThreadPoolExecutor | None = None
        self._lock = threading.RLock()
        self._records: dict[str, CommitRecord] = {}
        self.graph = GraphFile(root)  # parents without reading records (ledger.history.commitgraph)
        self._closed = False
        self.gc_lock = GcLock(root / "gc.lock")
        self.auto_gc = auto_gc
        self._commits_since_gc = 0
        self._custom: dict[str, list[CustomPolicy]] = {}
        self._pending = Pending()
        threading.Thread(target=metadata.prefetch, name="ledger-metadata", daemon=True).start()
        self._gc_due = False
        self.async_budget = async_budget if async_budget is not None else _default_budget()
        self.unchanged: UnchangedTensors | None = None
        if trust_versions:
            from ledger.state.unchanged import UnchangedTensors

            self.unchanged = UnchangedTensors()
        self._snapshot_buffers: Staging | None = None  # made by the first async commit
        self._stages: weakref.WeakSet[Stage] = weakref.WeakSet()  # handed out by stage()
        self.lineage = Lineage()  # what this instance's live state came from (restore, base_on)

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
            raise NotALedgerError(f"{root} is a file, not a ledger directory", path=str(root))
        if not create:
            if root.is_dir() and any(root.iterdir()):
                raise not_a_ledger(root)
            raise NotALedgerError(
                f"no ledger at {root}; pass create=True to make one", path=str(root), exists=False
            )
        if chunk_size < 4096 or chunk_size % 64:
            raise UnsupportedValueError(
                f"chunk_size={chunk_size} must be a multiple of 64 and at least 4096",
                path="chunk_size",
            )
        # Processes creating one ledger at once (every rank of a job) take turns:
        # the first creates it, the others open what it made.
        with init_lock(root):
            if cfg_path.is_file():
                return cls(root, _read_config(cfg_path), **settings)
            if interrupted_init(root):
                clear_interrupted_init(root)
            if any(root.iterdir()):
                raise not_a_ledger(root)
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
        # The marker first: an init cut short leaves proof that the ledger made what it left.
        write_marker(root, fsync=settings["fsync"])
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
        remove_marker(root, fsync=lg.fsync)
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
                if self._snapshot_buffers is not None:
                    self._snapshot_buffers.clear()
                for pool in (self._pool, self._background_pool):
                    if pool is not None:
                        pool.shutdown(wait=True)
                self.store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedLedgerError(f"the ledger at {self.root} was closed; open it again")
        self._pending.wait()  # a background commit lands first; its error surfaces here

    @property
    def _staging(self) -> Staging:
        """The snapshot buffers async commits reuse (made on first use: torch is loaded then)."""
        if self._snapshot_buffers is None:
            from ledger.state.flatten import Staging

            self._snapshot_buffers = Staging()
        return self._snapshot_buffers

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

    def refresh(self) -> None:
        """See what other processes wrote since this ledger was opened: their new packs
        (commits, chunks), and the packs another process's gc removed.

        Reads pick up new packs on their own when they miss an object; call this
        after another process told you it committed (as the distributed adapter does).

        Example:
            >>> lg.refresh(); lg.get(commit_id_from_rank0)  # doctest: +SKIP
        """
        self._check_open()
        self.store.sync()

    def record(self, commit_id: str) -> CommitRecord:
        """The stored record of a commit (by full id), hash-checked and cached."""
        rec = self._records.get(commit_id)
        if rec is None:
            try:
                oid = bytes.fromhex(commit_id)
            except ValueError:
                raise RevisionNotFoundError(
                    f"{commit_id!r} is not a commit id", revision=commit_id
                ) from None
            data = self.store.read(oid, f"commit {commit_id[:12]}")
            try:
                rec = commit_decoder.decode(data)
            except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: too deep
                if not isinstance(e, RecursionError):
                    _refuse_newer(data, f"commit {commit_id[:12]}")
                raise CorruptionError(
                    f"commit {commit_id[:12]} cannot be decoded: {e}", object=commit_id
                ) from e
            if rec.format > FORMAT_VERSION:
                raise FormatVersionError(
                    f"commit {commit_id[:12]} has format {rec.format}; upgrade training-ledger",
                    found=rec.format,
                    supported=FORMAT_VERSION,
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
                f"UTC: {expiry.reason}; its metadata remains (log, show, diff), its state does not",
                commit=cid,
                reason=expiry.reason,
            )
        return cid, self.manifest_by_id(rec.manifest, cid)

    def manifest_by_id(self, manifest_id: str, cid: str) -> Manifest:
        """Read and decode a manifest object (``cid`` names it in errors)."""
        data = self.store.read(bytes.fromhex(manifest_id), f"manifest of commit {cid[:12]}")
        try:
            manifest = manifest_decoder.decode(data)
        except (msgspec.DecodeError, RecursionError) as e:  # RecursionError: nested too deep
            if not isinstance(e, RecursionError):
                _refuse_newer(data, f"the manifest of commit {cid[:12]}")
            raise CorruptionError(
                f"manifest of commit {cid[:12]} cannot be decoded: {e}", object=manifest_id
            ) from e
        if manifest.format > FORMAT_VERSION:
            raise FormatVersionError(
                f"commit {cid[:12]} has manifest format {manifest.format}; upgrade training-ledger",
                found=manifest.format,
                supported=FORMAT_VERSION,
            )
        check_manifest(manifest, f"manifest of commit {cid[:12]}", object=manifest_id, commit=cid)
        return manifest

    def resolve(self, rev: str) -> str:
        """The full commit id of a revision: ``main~1``, ``exp:step:<=1000``, ``best:val_loss``,
        ``main@{2 hours ago}``... (docs/revisions.md).

        Raises:
            RevisionNotFoundError: nothing matches (the message says what was searched).
            AmbiguousRevisionError: an id prefix or ``step:N`` matches several commits.

        Example:
            >>> lg.resolve("main~1")  # doctest: +SKIP
            'b3f1...'
        """
        self._check_open()
        refs = self.refs.snapshot()

        def ids() -> list[str]:
            self.store.refresh()
            return [oid.hex() for oid in self.store.ids("commit")]

        def with_prefix(prefix: str) -> list[str]:  # a binary search, not a pass over every id
            self.store.refresh()
            return self.store.ids_with_prefix("commit", prefix)

        walk = self.walker()

        def first_parent(cid: str) -> str | None:
            return next(iter(walk(cid)), None)

        def refs_at(moment: dt.datetime) -> dict[str, str]:
            return refs_as_of(self.refs.log.read_from(0).events, moment)

        def expired() -> dict[str, Expiry]:
            return self.refs.state().expired

        found = resolve(
            rev,
            refs,
            ids,
            first_parent,
            record=self.record,
            refs_at=refs_at,
            expired=expired,
            with_prefix=with_prefix,
        )
        if walk.used and not self.store.has(bytes.fromhex(found)):
            # a gc removed it since the graph was written: say so as a read would
            self.record(found)
        return found

    def walker(self) -> Walker:
        """A commit's parents, from the commit graph where it holds the commit, else its record.

        Example:
            >>> lg.walker()(lg.resolve("main"))  # doctest: +SKIP
            ['9f2c...']
        """
        return self.graph.walker(lambda cid: self.record(cid).parents)

    def log(self, rev: str = "HEAD") -> Iterator[Commit]:
        """Commits from ``rev`` back to the root, newest first, following first parents.

        Example:
            >>> [c.step for c in lg.log("main")]  # doctest: +SKIP
            [300, 200, 100]
        """
        try:
            tip = self.resolve(rev)
        except EmptyLedgerError:
            return
        for cid in first_parents(lambda c: self.record(c).parents, tip):
            yield Commit.from_record(cid, self.record(cid))

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

    def branches(self) -> dict[str, str]:
        """Branch name -> commit id."""
        self._check_open()
        return refs_under(self.refs.snapshot(), BRANCH_PREFIX)

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        self._check_open()
        return refs_under(self.refs.snapshot(), TAG_PREFIX)
