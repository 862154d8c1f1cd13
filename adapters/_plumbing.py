"""Two-phase commits for many writers: store a subtree's chunks now, commit a whole tree later.

This module owns the bridge that multi-process commits need and ``Ledger``
does not offer yet: write one part of a state (its chunks, durably) and get
its manifest node back; later, write one commit whose manifest is a tree
assembled from such nodes. It follows ``Ledger.commit``'s write order
exactly (chunks, then manifest, then commit object, then the ref event, all
under the shared gc lock) using the ledger's own plumbing (``Flattener``,
the object store's ``PackWriter``, records, the ref store). It must never
invent an on-disk format: every object it writes is one ``Ledger.commit``
writes too. When the core grows ``Ledger.stage``/``Ledger.commit_tree``,
this module becomes two calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ledger import Commit, Ledger
from ledger import metadata as ledger_metadata
from ledger.errors import DetachedHeadError
from ledger.history.records import (
    FORMAT_VERSION,
    AliasNode,
    CommitRecord,
    CommitStats,
    DictNode,
    ListNode,
    Manifest,
    Node,
    StatefulNode,
    TensorNode,
    TupleNode,
    msgpack_encoder,
    utcnow,
)
from ledger.history.refs import BRANCH_PREFIX, check_ref_name
from ledger.history.revisions import head_target
from ledger.objects.hashing import hash_bytes
from ledger.state.flatten import Flattener

_node_decoder: msgspec.msgpack.Decoder[Node] = msgspec.msgpack.Decoder(Node)

ID_STRIDE = 1 << 40
"""Tensor node ids of writer ``k`` start at ``k * ID_STRIDE``, so aliases never collide."""


def write_subtree(
    lg: Ledger, parts: Mapping[str, Any], writer_index: int
) -> tuple[Node, CommitStats]:
    """Store the chunks of ``parts`` durably and return its manifest node (chunk ids filled in).

    Each part is flattened on its own, so an error names the path inside the
    part (``state['optim']['bad']``), as ``Ledger.commit`` does for a state.

    The caller must hold ``lg.gc_lock`` shared from before this call until
    the commit that references the node has moved its ref (as a commit does),
    so gc cannot sweep chunks it decided not to rewrite.

    Example:
        >>> node, stats = write_subtree(lg, {"state": {"w": torch.ones(2)}}, 1)  # doctest: +SKIP
    """
    flat = Flattener(lg.config.chunk_size)
    node = DictNode(keys=[], values=[])
    for key, value in parts.items():
        node.keys.append(key)
        node.values.append(flat.flatten(value, ()))
    writer = lg.store.writer(lg.pool, compress=lg.config.compress)
    try:
        flat.assign(writer.put_chunks(flat.chunks()))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    renumber(node, writer_index * ID_STRIDE)
    stats = CommitStats(
        logical_bytes=writer.stats.logical_bytes,
        bytes_written=writer.stats.bytes_written,
        chunks_total=writer.stats.chunks_total,
        chunks_written=writer.stats.chunks_written,
        tensors=flat.tensors,
    )
    return node, stats


def renumber(node: Node, offset: int) -> None:
    """Shift every tensor id and alias reference under ``node`` by ``offset`` (in place)."""
    if isinstance(node, TensorNode) and node.id >= 0:
        node.id += offset
    elif isinstance(node, AliasNode):
        node.of += offset
    elif isinstance(node, DictNode):
        for child in node.values:
            renumber(child, offset)
    elif isinstance(node, ListNode | TupleNode):
        for child in node.items:
            renumber(child, offset)
    elif isinstance(node, StatefulNode):
        renumber(node.state, offset)


def encode_node(node: Node) -> bytes:
    """A node as msgpack bytes (the manifest's own encoding), for sending between processes."""
    return msgpack_encoder.encode(node)


def decode_node(data: bytes) -> Node:
    """The node :func:`encode_node` encoded (validated against the record types)."""
    return _node_decoder.decode(data)


def write_commit(
    lg: Ledger,
    root: DictNode,
    *,
    summary_state: Mapping[Any, Any],
    stats: CommitStats,
    message: str | None,
    step: int | None,
    epoch: int | None,
    metrics: dict[str, float],
    params: dict[str, Any],
    branch: str | None,
) -> Commit:
    """Write one commit whose manifest root is ``root`` and move its branch (compare-and-swap).

    ``root`` may only reference chunks that are durable already (see
    :func:`write_subtree`). The caller holds ``lg.gc_lock`` shared.

    Raises:
        DetachedHeadError: HEAD is detached and ``branch`` is not given.
        RefConflictError: another writer moved the branch meanwhile.
    """
    started = time.perf_counter()
    packages = ledger_metadata.installed_packages()
    meta = ledger_metadata.capture(summary_state, None, hash_bytes(packages).hex())
    lg.store.sync()
    refs = lg.refs.snapshot()
    head_branch, head_id = head_target(refs)
    if branch is not None:
        target = check_ref_name(branch, "branch")
        parent = refs.get(BRANCH_PREFIX + target, head_id)
    elif head_branch is None:
        raise DetachedHeadError(
            f"HEAD is detached at {head_id and head_id[:12]}; pass branch='name' to commit"
        )
    else:
        target, parent = head_branch, head_id
    expected = refs.get(BRANCH_PREFIX + target)
    writer = lg.store.writer(lg.pool, compress=lg.config.compress)
    try:
        manifest = Manifest(format=FORMAT_VERSION, chunk_size=lg.config.chunk_size, root=root)
        manifest_id = writer.put("manifest", msgpack_encoder.encode(manifest))
        writer.put("blob", packages)
        record = CommitRecord(
            manifest=manifest_id,
            parents=[parent] if parent else [],
            time=utcnow(),
            branch=target,
            step=step,
            epoch=epoch,
            message=message,
            metrics=metrics,
            params=params,
            meta=meta,
            stats=msgspec.structs.replace(
                stats, duration_s=round(stats.duration_s + time.perf_counter() - started, 6)
            ),
        )
        commit_id = writer.put("commit", msgpack_encoder.encode(record))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    lg.refs.update({BRANCH_PREFIX + target: (expected, commit_id)}, f"commit {commit_id[:12]}")
    return Commit.from_record(commit_id, record)


def add_stats(total: CommitStats, part: CommitStats) -> CommitStats:
    """The sum of two writers' statistics."""
    return CommitStats(
        logical_bytes=total.logical_bytes + part.logical_bytes,
        bytes_written=total.bytes_written + part.bytes_written,
        chunks_total=total.chunks_total + part.chunks_total,
        chunks_written=total.chunks_written + part.chunks_written,
        tensors=total.tensors + part.tensors,
        duration_s=max(total.duration_s, part.duration_s),
    )
