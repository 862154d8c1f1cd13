"""Two-phase commits for many writers: store a subtree's chunks now, commit a whole tree later.

This module owns the bridge that multi-process commits need and ``Ledger``
does not offer yet: write one part of a state (its chunks, durably) and get
its manifest node back; later, write one commit whose manifest is a tree
assembled from such nodes. It follows ``Ledger.commit``'s write order
exactly (chunks, then manifest, then commit object, then the ref event, all
under the shared gc lock): subtrees go through the ledger's ``Flattener`` and
the object store's ``PackWriter``; the commit itself through the very code
``Ledger.commit`` uses (``_commit_tree``). It must never invent an on-disk
format. When the core grows a public ``Ledger.stage``/``Ledger.commit_tree``,
this module becomes two calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ledger import Commit, Ledger
from ledger import metadata as ledger_metadata
from ledger.api.inputs import _Draft
from ledger.history.records import CommitStats, msgpack_encoder
from ledger.manifest import AliasNode, DictNode, ListNode, Node, StatefulNode, TensorNode, TupleNode
from ledger.objects.hashing import hash_bytes
from ledger.objects.store import PackWriter
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
    draft = _Draft(
        flat=Flattener(lg.config.chunk_size),  # no chunks left to store: see write_subtree
        root=root,
        branch=branch,
        packages=packages,
        meta=ledger_metadata.capture(summary_state, None, hash_bytes(packages).hex()),
        step=step,
        epoch=epoch,
        message=message,
        metrics=metrics,
        params=params,
    )

    def total(_writer: PackWriter) -> CommitStats:
        spent = stats.duration_s + time.perf_counter() - started
        return msgspec.structs.replace(stats, duration_s=round(spent, 6))

    commit_id, record = lg._commit_tree(draft, lg.pool, lambda _writer: None, total)
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
