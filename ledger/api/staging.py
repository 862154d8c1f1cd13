"""The staged commit: the one path that writes a commit, open to callers that build it from parts.

This module owns writing commits in the design's order (invariant 2): chunks,
then the manifest, then the commit object (all in packs made durable), then
the ref event, while the gc lock is held shared from before the first dedup
decision until the ref has moved (invariant 4). ``Ledger.commit`` is one user
of it; multi-process commits, importers and other builders are the others:

- :meth:`Stage.write` stores one subtree's chunks durably and returns a
  :class:`Part` (its manifest node and what storing it cost), which encodes
  to bytes so another process can send it to the committer;
- :meth:`Stage.commit` writes one commit of a tree whose leaves may be such
  parts (plus any ordinary values, stored on the spot), moving the branch by
  compare-and-swap. The parent (and an automatic branch keeping an old tip)
  comes from the ledger instance's resume lineage, ``ledger.history.lineage``.

A :class:`Stage` is built from plain parts (store, refs, gc lock, config, threads),
so it is tested on its own; parts are manifest nodes, encoded as manifests are.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from ledger import metadata
from ledger.api.inputs import _clean_metrics, _clean_params, _opt_int
from ledger.api.preflight import check_part_space
from ledger.api.snapshot import Snapshot
from ledger.errors import (
    ClosedLedgerError,
    CorruptionError,
    RevisionNotFoundError,
    UnsupportedValueError,
)
from ledger.history.graph import ParentsOf, child_generation
from ledger.history.lineage import CommitPlan, Lineage, commit_target
from ledger.history.records import (
    FORMAT_VERSION,
    Commit,
    CommitRecord,
    CommitStats,
    LedgerConfig,
    msgpack_encoder,
    utcnow,
)
from ledger.history.refs import BRANCH_PREFIX, GcLock, RefStore, check_ref_name
from ledger.manifest import DictNode, ListNode, Manifest, Node, TupleNode, renumber
from ledger.objects.hashing import hash_bytes
from ledger.objects.store import ObjectStore, PackWriter

if TYPE_CHECKING:
    from ledger.state.flatten import Flattener

ID_STRIDE = 1 << 40
"""Tensor ids of the ``k``-th part of a commit start at ``k * ID_STRIDE`` (k >= 1), so the
aliases of different parts never collide; the commit's own values number from 0."""


class Part(msgspec.Struct, frozen=True):
    """A subtree whose chunks are durable: its manifest node and what storing it cost.

    Send it to the process that commits with :meth:`encode` / :meth:`decode`.

    Example:
        >>> with lg.stage() as st:  # doctest: +SKIP
        ...     part = st.write({"w": torch.ones(2)})
        ...     payload = part.encode()  # bytes for another process
        >>> Part.decode(payload).stats.tensors  # doctest: +SKIP
        1
    """

    node: Node
    stats: CommitStats = msgspec.field(default_factory=CommitStats)

    def encode(self) -> bytes:
        """This part as msgpack bytes (the manifest's own encoding of nodes).

        Example:
            >>> Part(DictNode(keys=[], values=[])).encode()[:1]
            b'\\x82'
        """
        return msgpack_encoder.encode(self)

    @classmethod
    def decode(cls, data: bytes) -> Part:
        """The part :meth:`encode` made, validated against the record types.

        Raises:
            CorruptionError: ``data`` is not an encoded part.

        Example:
            >>> Part.decode(Part(DictNode(keys=[], values=[])).encode()).node
            DictNode(keys=[], values=[])
        """
        try:
            return _part_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise CorruptionError(f"a received commit part cannot be decoded: {e}") from e


_part_decoder: msgspec.msgpack.Decoder[Part] = msgspec.msgpack.Decoder(Part)


class Draft:
    """A commit prepared (flattened) but not written: what :meth:`Stage.write_draft` stores."""

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
        parts: CommitStats | None = None,
        started: float | None = None,
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
        self.parts = parts or CommitStats()  # what the parts it holds cost to store
        self.started = time.perf_counter() if started is None else started


def draft_of(
    flat: Flattener,
    root: DictNode,
    summary: Mapping[Any, Any],
    *,
    message: str | None,
    step: Any,
    epoch: Any,
    metrics: Mapping[str, Any] | None,
    params: Mapping[str, Any] | None,
    data: Mapping[str, Any] | None,
    branch: str | None,
    parts: CommitStats | None = None,
    started: float | None = None,
    allow_secrets: Iterable[str] | None = None,
) -> Draft:
    """A :class:`Draft` of ``root``: user metadata checked, secrets redacted, environment captured."""
    if branch is not None:
        check_ref_name(branch, "branch")
    packages = metadata.installed_packages()
    metrics, params, data = _clean_metrics(metrics), _clean_params(params), _clean_params(data)
    user = metadata.scrub_user(
        message=message, metrics=metrics, params=params, data=data, allow_secrets=allow_secrets
    )
    return Draft(
        flat=flat,
        root=root,
        branch=branch,
        packages=packages,
        meta=metadata.capture(summary, user.data, hash_bytes(packages).hex()),
        step=_opt_int(step, "step"),
        epoch=_opt_int(epoch, "epoch"),
        message=user.message,
        metrics=user.metrics,
        params=user.params,
        parts=parts,
        started=started,
    )


class Stage:
    """One staging session on a ledger: durable parts now, one commit of them later.

    Use it as a context manager: it holds the ledger's gc lock shared from
    entry until exit, so gc can never sweep a chunk a part decided not to
    rewrite before the commit naming it has moved its ref. Do not call
    ``Ledger.commit`` (or open another stage of the same ledger) inside it:
    commit through :meth:`commit` instead.

    Example:
        >>> with lg.stage() as st:  # doctest: +SKIP
        ...     shards = [st.write({"w": torch.ones(4)}), st.write({"w": torch.zeros(4)})]
        ...     c = st.commit({"world_size": 2, "ranks": shards}, step=10, message="sharded")
    """

    def __init__(
        self,
        *,
        store: ObjectStore,
        refs: RefStore,
        gc_lock: GcLock,
        config: LedgerConfig,
        pool: ThreadPoolExecutor,
        on_commit: Callable[[str, CommitRecord], None] | None = None,
        on_close: Callable[[], None] | None = None,
        lineage: tuple[Lineage, ParentsOf] | None = None,
    ) -> None:
        self.store = store
        self.lineage = lineage  # the ledger instance's resume lineage, and a parent lookup
        self.refs = refs
        self.gc_lock = gc_lock
        self.config = config
        self.pool = pool
        self.on_commit = on_commit
        self.on_close = on_close
        self.commits: list[Commit] = []
        self._hold: contextlib.ExitStack | None = None

    def __enter__(self) -> Stage:
        if self._hold is not None:
            raise UnsupportedValueError("this stage is already open; stages do not nest")
        hold = contextlib.ExitStack()
        hold.enter_context(self.gc_lock.hold(shared=True))
        self._hold = hold
        self.store.sync()  # see packs other processes wrote (and forget swept ones)
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.close()
            if self.on_close is not None and self.commits:
                self.on_close()  # after the lock is released: it may run gc

    @property
    def is_open(self) -> bool:
        """Whether the stage is between ``__enter__`` and ``__exit__`` (holding the gc lock)."""
        return self._hold is not None

    def _check_open(self) -> None:
        if self._hold is None:
            raise ClosedLedgerError(
                "the stage is not open: use it as a context manager, `with lg.stage() as st:`"
            )

    @contextlib.contextmanager
    def _writer(self) -> Iterator[PackWriter]:
        writer = self.store.writer(self.pool, compress=self.config.compress)
        try:
            yield writer
            writer.finish()
        except BaseException:
            writer.abort()
            raise

    def write(self, value: Any) -> Part:
        """Store the chunks of ``value`` durably and return its :class:`Part`.

        ``value`` is anything a commit stores (a mapping, a tensor, a module's
        state, ...), or a :class:`~ledger.api.snapshot.Snapshot` of one taken
        earlier; an error names its path as ``state[...]`` under it.

        Raises:
            UnsupportedValueError: a value under ``value`` cannot be stored.

        Example:
            >>> with lg.stage() as st:  # doctest: +SKIP
            ...     part = st.write({"model": model.state_dict()})
        """
        self._check_open()
        started = time.perf_counter()
        if isinstance(value, Snapshot):
            flat, node = value.take()
        else:
            from ledger.state.flatten import Flattener

            flat = Flattener(self.config.chunk_size)
            node = flat.flatten(value, ())
        check_part_space(flat, self.store)  # refuses before the first byte
        with self._writer() as writer:
            flat.assign(writer.put_chunks(flat.chunks()))
        stats = CommitStats(
            logical_bytes=writer.stats.logical_bytes,
            bytes_written=writer.stats.bytes_written,
            chunks_total=writer.stats.chunks_total,
            chunks_written=writer.stats.chunks_written,
            tensors=flat.tensors,
            duration_s=round(time.perf_counter() - started, 6),
        )
        return Part(node, stats)

    def commit(
        self,
        tree: Mapping[str, Any],
        message: str | None = None,
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        branch: str | None = None,
        summary: Mapping[Any, Any] | None = None,
        allow_secrets: Iterable[str] | None = None,
    ) -> Commit:
        """Write one commit of ``tree`` and move its branch (compare-and-swap).

        ``tree`` is a mapping like a state given to ``Ledger.commit``, whose
        values (at any depth of dicts, lists and tuples) may also be
        :class:`Part` objects from :meth:`write`, here or in another process
        of this ledger. Other values are stored now, in the commit's own pack.

        Args:
            tree: the commit's root.
            message, step, epoch, metrics, params, data, branch, allow_secrets: as for
                ``Ledger.commit``.
            summary: the live state the metadata's model summary describes
                (default: ``tree``; parts have no live objects).

        Returns:
            The new :class:`Commit`.

        Raises:
            DetachedHeadError: HEAD is detached and ``branch`` is not given.
            RefConflictError: another writer moved the branch meanwhile.
            UnsupportedValueError: a value cannot be stored (its path is named).

        Example:
            >>> with lg.stage() as st:  # doctest: +SKIP
            ...     c = st.commit({"ranks": [st.write(shard)]}, step=5)
        """
        self._check_open()
        started = time.perf_counter()
        if not isinstance(tree, Mapping):
            raise UnsupportedValueError(
                f"a commit's tree must be a mapping such as a dict, not {type(tree).__name__}"
            )
        from ledger.state.flatten import Flattener

        flat = Flattener(self.config.chunk_size)
        assembler = _Assembler(flat)
        root = assembler.mapping(tree, ())
        draft = draft_of(
            flat,
            root,
            summary if summary is not None else tree,
            message=message,
            step=step,
            epoch=epoch,
            metrics=metrics,
            params=params,
            data=data,
            branch=branch,
            parts=assembler.stats,
            started=started,
            allow_secrets=allow_secrets,
        )
        return self.write_draft(draft)

    def write_draft(self, draft: Draft) -> Commit:
        """Write a prepared commit in the invariant's order and move its branch.

        ``Ledger.commit`` prepares drafts on the caller's thread (so an async
        commit can snapshot first) and writes them here.

        Raises:
            DetachedHeadError: HEAD is detached and ``draft.branch`` is not given.
            RefConflictError: another writer moved the branch meanwhile.
        """
        self._check_open()
        refs = self.refs.snapshot()
        target, parent = commit_target(refs, draft.branch)
        expected = refs.get(BRANCH_PREFIX + target)
        plan = self._plan(refs, target, parent)
        flat = draft.flat
        with self._writer() as writer:
            flat.check_reused()
            flat.assign(writer.put_chunks(flat.chunks()))
            manifest = Manifest(
                format=FORMAT_VERSION, chunk_size=self.config.chunk_size, root=draft.root
            )
            manifest_id = writer.put("manifest", msgpack_encoder.encode(manifest))
            writer.put("blob", draft.packages)
            parts = draft.parts
            stats = CommitStats(
                logical_bytes=writer.stats.logical_bytes + flat.reused_bytes + parts.logical_bytes,
                bytes_written=writer.stats.bytes_written + parts.bytes_written,
                chunks_total=writer.stats.chunks_total + flat.reused_chunks + parts.chunks_total,
                chunks_written=writer.stats.chunks_written + parts.chunks_written,
                chunks_trusted=flat.reused_chunks + parts.chunks_trusted,
                tensors=flat.tensors + parts.tensors,
                duration_s=round(parts.duration_s + time.perf_counter() - draft.started, 6),
            )
            record = CommitRecord(
                manifest=manifest_id,
                parents=[plan.parent] if plan.parent else [],
                generation=child_generation(self.store.read, plan.parent),
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
        changes: dict[str, tuple[str | None, str | None]] = {
            BRANCH_PREFIX + target: (expected, commit_id)
        }
        changes.update({ref: (None, tip) for ref, tip in plan.keep.items()})
        reasons = dict.fromkeys(plan.keep, plan.reason)
        self.refs.update(changes, f"commit {commit_id[:12]}", reasons=reasons)
        if self.on_commit is not None:
            self.on_commit(commit_id, record)
        made = Commit.from_record(commit_id, record)
        self.commits.append(made)
        return made

    def _plan(self, refs: dict[str, str], target: str, parent: str | None) -> CommitPlan:
        """The parent (the ledger's resume lineage decides) and the automatic branch to keep."""
        if self.lineage is None:
            return CommitPlan(parent=parent)
        lineage, parents_of = self.lineage
        plan = lineage.plan(refs, target, parent, parents_of)
        if (
            plan.parent
            and plan.parent != parent
            and self.store.locate(bytes.fromhex(plan.parent)) is None
        ):
            raise RevisionNotFoundError(
                f"commit {plan.parent[:12]}, which this ledger's state was restored from, is no "
                "longer stored (gc removed it); call base_on() with a stored commit",
                revision=plan.parent,
            )
        return plan


class _Assembler:
    """Builds a commit's root from a tree mixing :class:`Part` leaves and ordinary values."""

    def __init__(self, flat: Flattener) -> None:
        self.flat = flat
        self.stats = CommitStats()
        self._parts = 0

    def mapping(self, tree: Mapping[Any, Any], path: tuple[Any, ...]) -> DictNode:
        node = DictNode(keys=[], values=[])
        for key, value in tree.items():
            if not isinstance(key, str):
                from ledger.state.flatten import format_path

                raise UnsupportedValueError(
                    f"{format_path(path)} has the key {key!r}; a tree with parts needs string keys"
                )
            node.keys.append(key)
            node.values.append(self.value(value, (*path, key)))
        return node

    def value(self, value: Any, path: tuple[Any, ...]) -> Node:
        if isinstance(value, Part):
            return self.part(value)
        if not _holds_parts(value):
            return self.flat.flatten(value, path)
        if isinstance(value, Mapping):
            return self.mapping(value, path)
        items = [self.value(v, (*path, i)) for i, v in enumerate(value)]
        return TupleNode(items) if isinstance(value, tuple) else ListNode(items)

    def part(self, part: Part) -> Node:
        self._parts += 1
        node = Part.decode(part.encode()).node  # a copy: the caller's part stays as it is
        renumber(node, self._parts * ID_STRIDE)
        s, p = self.stats, part.stats
        self.stats = CommitStats(
            logical_bytes=s.logical_bytes + p.logical_bytes,
            bytes_written=s.bytes_written + p.bytes_written,
            chunks_total=s.chunks_total + p.chunks_total,
            chunks_written=s.chunks_written + p.chunks_written,
            chunks_trusted=s.chunks_trusted + p.chunks_trusted,
            tensors=s.tensors + p.tensors,
            duration_s=max(s.duration_s, p.duration_s),  # parts are written in parallel
        )
        return node


def _holds_parts(value: Any) -> bool:
    if isinstance(value, Part):
        return True
    if isinstance(value, Mapping):
        return any(_holds_parts(v) for v in value.values())
    if isinstance(value, list | tuple) and not hasattr(value, "_fields"):
        return any(_holds_parts(v) for v in value)
    return False
