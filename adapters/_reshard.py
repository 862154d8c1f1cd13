"""Resharding a distributed commit onto another world size with torch.distributed.checkpoint.

This module owns reading the shards that ``ledger.adapters.distributed``
stored as if they were a ``torch.distributed.checkpoint`` checkpoint: it
describes them as DCP ``Metadata`` (which rank stored which box of which
tensor), and a ``StorageReader`` serves the boxes the load planner asks for
straight from the ledger. The planner decides what each rank reads, so any
world size and any ``DTensor`` placement works. It only reads; it never
pickles (DCP's own readers ``torch.load`` their files).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import StorageReader
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

from ledger import Ledger
from ledger.errors import StateMismatchError
from ledger.manifest import DictNode, ListNode, Node, TensorNode, TupleNode, ValueNode
from ledger.state.dtypes import torch_dtype

from ._common import ResumeError

Path = tuple[Any, ...]

SHARD_KEY = "__dtensor__"


def walk_tensors(node: Node, path: Path) -> list[tuple[Path, TensorNode, dict[str, Any] | None]]:
    """Every tensor under a rank's stored ``state``: (path, its node, shard info or None).

    A shard record ``{"__dtensor__": info, "local": tensor}`` yields the
    record's path, the local tensor's node and ``info``.
    """
    out: list[tuple[Path, TensorNode, dict[str, Any] | None]] = []
    if isinstance(node, TensorNode):
        out.append((path, node, None))
    elif isinstance(node, DictNode):
        entries = dict(zip(node.keys, node.values, strict=True))
        local = entries.get("local")
        if SHARD_KEY in entries and isinstance(local, TensorNode):
            out.append((path, local, _plain(entries[SHARD_KEY])))
        else:
            for key, child in entries.items():
                out.extend(walk_tensors(child, (*path, key)))
    elif isinstance(node, ListNode | TupleNode):
        for i, child in enumerate(node.items):
            out.extend(walk_tensors(child, (*path, i)))
    return out


def _plain(node: Node) -> Any:
    if isinstance(node, ValueNode):
        return node.value
    if isinstance(node, ListNode | TupleNode):
        return [_plain(n) for n in node.items]
    if isinstance(node, DictNode):
        return {k: _plain(v) for k, v in zip(node.keys, node.values, strict=True)}
    raise ResumeError(f"a shard record holds a {type(node).__name__} where plain values belong")


def fqn(path: Path) -> str:
    """The name of a tensor in the DCP view of a state: its path joined with ``/``."""
    return "/".join(map(str, path))


def describe(
    root: DictNode,
) -> tuple[Metadata, dict[tuple[str, tuple[int, ...]], tuple[int, Path]]]:
    """DCP metadata for a distributed commit, and where each stored box lives: (rank, node path)."""
    entries = dict(zip(root.keys, root.values, strict=True))
    ranks = entries["ranks"]
    assert isinstance(ranks, ListNode)
    tensors: dict[str, TensorStorageMetadata] = {}
    where: dict[tuple[str, tuple[int, ...]], tuple[int, Path]] = {}
    for rank, rank_node in enumerate(ranks.items):
        assert isinstance(rank_node, DictNode)
        state = dict(zip(rank_node.keys, rank_node.values, strict=True))["state"]
        for path, node, info in walk_tensors(state, ()):
            if info is None and rank != 0:
                continue  # plain tensors are taken as replicated: rank 0's copy
            shape = info["global_shape"] if info else node.shape
            offsets = tuple(info["offsets"]) if info else (0,) * len(node.shape)
            name = fqn(path)
            md = tensors.setdefault(
                name,
                TensorStorageMetadata(
                    properties=TensorProperties(dtype=torch_dtype(node.dtype, fqn(path))),
                    size=torch.Size(shape),
                    chunks=[],
                ),
            )
            if (name, offsets) in where:
                continue  # a replicated shard: the first rank's copy serves
            md.chunks.append(
                ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(node.shape))
            )
            local = (*path, "local") if info else path
            where[(name, offsets)] = (rank, ("ranks", rank, "state", *local))
    metadata = Metadata(
        state_dict_metadata=dict(tensors),
        storage_data={MetadataIndex(n, torch.Size(o)): w for (n, o), w in where.items()},
    )
    return metadata, where


class LedgerReader(StorageReader):
    """A DCP ``StorageReader`` that serves the boxes of a distributed commit from the ledger."""

    def __init__(self, lg: Ledger, commit_id: str, metadata: Metadata) -> None:
        self.lg = lg
        self.commit_id = commit_id
        self.metadata = metadata

    def reset(self, checkpoint_id: Any = None) -> None:
        """Nothing to reset: the reader is bound to one commit."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The commit's shards described as DCP metadata."""
        return self.metadata

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        """Nothing to set up."""

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """The planner's plan, unchanged."""
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        """The planner's plans, unchanged."""
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        """Read every stored box this rank needs (one checkout), copy each requested region."""
        storage = self.metadata.storage_data
        wanted = sorted({tuple(map(str, storage[item.storage_index][1])) for item in plan.items})
        tree = (
            self.lg.checkout(self.commit_id, paths=["/".join(p) for p in wanted]) if wanted else {}
        )
        for item in plan.items:
            source = _find(tree, storage[item.storage_index][1], wanted)
            for dim, (start, length) in enumerate(
                zip(item.storage_offsets, item.lengths, strict=True)
            ):
                source = source.narrow(dim, start, length)
            target = planner.resolve_tensor(item).detach()
            if target.shape != source.shape:
                raise ResumeError(
                    f"{item.storage_index.fqn}: the planner asked for {list(target.shape)}, "
                    f"the commit has {list(source.shape)}"
                )
            target.copy_(source)
            planner.commit_tensor(item, target)
        done: Future[None] = Future()
        done.set_result(None)
        return done

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        """Any id: the reader is bound to one commit."""
        return True


def _find(tree: Any, path: Path, selected: list[tuple[str, ...]]) -> torch.Tensor:
    """The tensor at ``path`` in a checkout restricted to ``selected`` paths.

    A restricted checkout keeps only the selected items of a list, in order,
    so an index is looked up among the indices selected under the same prefix.
    """
    prefix: tuple[str, ...] = ()
    for part in map(str, path):
        if isinstance(tree, list | tuple):
            depth = len(prefix)
            chosen = sorted({int(p[depth]) for p in selected if p[:depth] == prefix})
            tree = tree[chosen.index(int(part))]
        else:
            tree = next(v for k, v in tree.items() if str(k) == part)
        prefix = (*prefix, part)
    if not isinstance(tree, torch.Tensor):
        raise ResumeError(f"{fqn(path)} in the commit is not a tensor")
    return tree


def live_tensors(value: Any, path: Path, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor and DTensor in a live state, by the same names as :func:`describe`."""
    if isinstance(value, torch.Tensor):
        out[fqn(path)] = value
    elif callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    ):
        live_tensors(value.state_dict(), path, out)
    elif isinstance(value, Mapping):
        for key, child in value.items():
            live_tensors(child, (*path, key), out)
    elif isinstance(value, list | tuple):
        for i, child in enumerate(value):
            live_tensors(child, (*path, i), out)
    return out


def load_resharded(
    lg: Ledger, commit_id: str, root: DictNode, live: Mapping[str, Any], group: Any
) -> None:
    """Load every tensor of ``live`` from a commit made with another world size (collective)."""
    metadata, _ = describe(root)
    flat = live_tensors(live, (), {})
    missing = [name for name in flat if name not in metadata.state_dict_metadata]
    if missing:
        raise StateMismatchError(
            f"cannot reshard: {', '.join(missing[:5])} {'is' if len(missing) == 1 else 'are'} "
            "not in the commit; nothing was changed"
        )
    dcp.load(
        flat,
        storage_reader=LedgerReader(lg, commit_id, metadata),
        planner=DefaultLoadPlanner(flatten_state_dict=False, flatten_sharded_tensors=False),
        process_group=group,
    )


__all__ = ["LedgerReader", "describe", "live_tensors", "load_resharded", "walk_tensors"]
