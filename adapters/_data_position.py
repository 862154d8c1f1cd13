"""The data position of a distributed run, and carrying it onto another number of ranks.

This module owns :class:`ResumableSampler` (a stateful drop-in for
``torch.utils.data.DistributedSampler`` that yields exactly the same indices),
the plain record it stores as its ``state_dict()`` (numbers and lists only,
marked with ``POSITION_KEY``), merging every rank's record into one global
position when the world size changes, and the rule that re-seeds the global
RNG streams of a resharded run. It never reads or writes a ledger itself:
``ledger.adapters.distributed`` commits the records and calls :func:`merge`.

The global order of an epoch is DistributedSampler's: ``torch.randperm(n)``
seeded ``seed + epoch`` (or ``range(n)``), padded by wrapping around to a
multiple of the world size (or cut to one with ``drop_last``), then strided
by rank. A resumed epoch keeps a ``history`` of the segments already run
(world size, samples each rank consumed); the samples not yet seen, in the
same global order, are laid out again by DistributedSampler's rule on the
new world size (docs/adapters/distributed.md, "the data position").

Example:
    >>> s = ResumableSampler(10, num_replicas=2, rank=1, shuffle=False)
    >>> list(s)
    [1, 3, 5, 7, 9]
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from ._common import ResumeError

__all__ = ["POSITION_KEY", "ResumableSampler", "merge", "merge_positions", "reseed_rng"]

POSITION_KEY = "__data_position__"
"""Marks a data-position record; its value is the record's format version."""

_VERSION = 1
_LOADER_KEY = "_sampler_iter_yielded"
"""A key of every torchdata ``StatefulDataLoader`` state."""
_CONFIG = ("dataset_len", "shuffle", "seed", "drop_last")


def _order(n: int, shuffle: bool, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's global order before padding: DistributedSampler's permutation."""
    if shuffle:
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        return torch.randperm(n, generator=g)
    return torch.arange(n)


def _total(pool_len: int, world: int, drop_last: bool) -> int:
    """How many positions DistributedSampler lays out for ``pool_len`` samples on ``world`` ranks."""
    if drop_last:
        return (pool_len // world) * world
    return -(-pool_len // world) * world


def _segment_pool(pool: torch.Tensor, world: int, counts: Sequence[int]) -> torch.Tensor:
    """The samples of ``pool`` left after rank r consumed ``counts[r]`` of its strided share."""
    if len(pool) == 0:
        return pool
    seen = torch.zeros(len(pool), dtype=torch.bool)
    for rank, k in enumerate(counts):
        positions = rank + world * torch.arange(int(k))
        seen[positions % len(pool)] = True  # a padding position repeats pool[p % len]
    return pool[~seen]


def _pool(n: int, shuffle: bool, seed: int, epoch: int, history: Sequence[Any]) -> torch.Tensor:
    pool = _order(n, shuffle, seed, epoch)
    for world, counts in history:
        pool = _segment_pool(pool, int(world), counts)
    return pool


def _shard(pool: torch.Tensor, world: int, rank: int, drop_last: bool) -> list[int]:
    total = _total(len(pool), world, drop_last)
    if total == 0:
        return []
    laid_out = pool[torch.arange(total) % len(pool)]
    return [int(i) for i in laid_out[rank:total:world]]


class ResumableSampler(Sampler[int]):
    """``DistributedSampler`` with a position that survives a change of world size.

    It yields the same indices as ``DistributedSampler(dataset, num_replicas,
    rank, shuffle, seed, drop_last)`` and counts them; ``state_dict()`` is a
    plain record of that count. Committed with ``ledger.adapters.distributed``
    and restored on another number of ranks, each new rank continues with its
    share of the samples no rank had consumed, in the same global order. Use
    it as a DataLoader's ``sampler`` or inside torchdata's ``StatefulDataLoader``;
    the count is the indices handed to the loader, exact with ``num_workers=0``
    (worker processes prefetch, and the prefetched indices count as consumed).

    Args:
        dataset: the dataset (anything with ``len``) or its length.
        num_replicas: the world size.
        rank: this rank.
        shuffle, seed, drop_last: as for ``DistributedSampler``.

    Example:
        >>> s = ResumableSampler(6, num_replicas=3, rank=0, shuffle=False)
        >>> it = iter(s); next(it)
        0
        >>> s.state_dict()["consumed"]
        1
    """

    def __init__(
        self,
        dataset: Sized | int,
        num_replicas: int,
        rank: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        n = dataset if isinstance(dataset, int) else len(dataset)
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"invalid rank {rank} for num_replicas={num_replicas}")
        self.dataset_len = int(n)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._history: list[list[Any]] = []
        self._consumed = 0
        self._resume = False

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (a restored position is kept when it is the same epoch)."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._history, self._consumed, self._resume = [], 0, False

    def _indices(self) -> list[int]:
        pool = _pool(self.dataset_len, self.shuffle, self.seed, self.epoch, self._history)
        return _shard(pool, self.num_replicas, self.rank, self.drop_last)

    def __iter__(self) -> Iterator[int]:
        if not self._resume:  # a new pass over the epoch, as DistributedSampler starts one
            self._history, self._consumed = [], 0
        self._resume = False
        indices = self._indices()
        for index in indices[self._consumed :]:
            self._consumed += 1
            yield index

    def __len__(self) -> int:
        return len(self._indices())

    def state_dict(self) -> dict[str, Any]:
        """This rank's position as plain values (see the module docstring)."""
        return {
            POSITION_KEY: _VERSION,
            "dataset_len": self.dataset_len,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "drop_last": self.drop_last,
            "epoch": self.epoch,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "consumed": self._consumed,
            "history": [[w, list(c)] for w, c in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a stored position: this rank's own, or one :func:`merge` made.

        Raises:
            ResumeError: the record is not a data position, or was made for another
                dataset length, seed, shuffle or drop_last, or for another rank.
        """
        _check(state)
        differ = [
            f"{k}={state[k]!r} stored, {getattr(self, k)!r} here"
            for k in _CONFIG
            if state[k] != getattr(self, k)
        ]
        if differ:
            raise ResumeError(
                "the stored data position belongs to another sampler ("
                + "; ".join(differ)
                + "); build the ResumableSampler with the stored values to continue the epoch"
            )
        merged = state["num_replicas"] is None
        if not merged and (state["num_replicas"], state["rank"]) != (
            self.num_replicas,
            self.rank,
        ):
            raise ResumeError(
                f"the data position of rank {state['rank']} of {state['num_replicas']} cannot be "
                f"loaded on rank {self.rank} of {self.num_replicas}; restore it with "
                "ledger.adapters.distributed.restore, which merges every rank's position"
            )
        self.epoch = int(state["epoch"])
        self._history = [[int(w), [int(k) for k in c]] for w, c in state["history"]]
        self._consumed = 0 if merged else int(state["consumed"])
        self._resume = True


def _check(state: Any) -> None:
    keys = (*_CONFIG, "epoch", "num_replicas", "rank", "consumed", "history")
    if not isinstance(state, Mapping) or state.get(POSITION_KEY) != _VERSION:
        raise ResumeError(
            f"not a data position of format {_VERSION} (a ResumableSampler.state_dict()): "
            f"{type(state).__name__}; it was made by another sampler or ledger version"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise ResumeError(f"the stored data position lacks {missing}; it is damaged")


def is_position(value: Any) -> bool:
    """Whether a stored value is a data-position record."""
    return isinstance(value, Mapping) and POSITION_KEY in value


def merge(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One global position from the records of every rank of one run (rank order).

    The result has ``num_replicas``, ``rank`` and ``consumed`` set to None and
    a ``history`` ending with this run's segment; any rank of any world size
    loads it with :meth:`ResumableSampler.load_state_dict`.

    Raises:
        ResumeError: the records do not describe the same sampler on every rank.

    Example:
        >>> a, b = (ResumableSampler(5, 2, r, shuffle=False) for r in (0, 1))
        >>> merge([a.state_dict(), b.state_dict()])["history"]
        [[2, [0, 0]]]
    """
    for record in records:
        _check(record)
    first = records[0]
    same = (*_CONFIG, "epoch", "num_replicas", "history")
    for rank, record in enumerate(records):
        wrong = [k for k in same if record[k] != first[k]]
        if wrong or record["rank"] != rank or first["num_replicas"] != len(records):
            raise ResumeError(
                f"rank {rank}'s stored data position does not match rank 0's "
                f"(differs in {wrong or ['rank/num_replicas']}); the ranks did not use one "
                "sampler configuration, so no global position exists"
            )
    merged = dict(first)
    merged.update(num_replicas=None, rank=None, consumed=None)
    counts = [int(r["consumed"]) for r in records]
    merged["history"] = [*[[w, list(c)] for w, c in first["history"]], [len(records), counts]]
    return merged


def merge_positions(
    tree: Any, world: int, read: Callable[[int, tuple[Any, ...]], Mapping[str, Any]]
) -> list[tuple[Any, ...]]:
    """Replace, in rank 0's stored ``tree``, every data position by the merge over all ranks.

    Args:
        tree: rank 0's stored state (changed in place).
        world: the stored world size.
        read: ``read(rank, path)`` gives that rank's stored record at ``path``.

    Returns:
        The paths of the merged records.

    Raises:
        ResumeError: the records disagree, or a ``StatefulDataLoader`` state holds no
            data position (its sampler's position cannot be carried over).
    """
    paths = list(_positions(tree, ()))
    for path in paths:
        records = [_at(tree, path), *(read(r, path) for r in range(1, world))]
        parent = _at(tree, path[:-1])
        parent[path[-1]] = merge(records)
    return paths


def _positions(tree: Any, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    if is_position(tree):
        yield path
    elif isinstance(tree, Mapping):
        found = False
        for k, v in tree.items():
            for inner in _positions(v, (*path, k)):
                found = True
                yield inner
        if not found and _LOADER_KEY in tree:
            raise ResumeError(
                f"state{''.join(f'[{p!r}]' for p in path)} is a StatefulDataLoader whose sampler "
                "keeps no data position (a DistributedSampler or StatefulDistributedSampler): "
                "its per-rank count would skip or repeat samples on another world size; use "
                "ledger.adapters.distributed.ResumableSampler, or resume on the same world size"
            )
    elif isinstance(tree, list):  # not tuples: they cannot be changed in place
        for i, v in enumerate(tree):
            yield from _positions(v, (*path, i))


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def reseed_rng(stored_torch_states: Sequence[torch.Tensor], world: int, rank: int) -> int:
    """Seed this rank's global RNGs for a run resumed on ``world`` ranks; returns the seed.

    The seed is the first 8 bytes (little-endian) of SHA-256 over a tag, the
    stored world size, the new world size and rank, and every stored rank's
    torch CPU RNG state in rank order. It seeds Python's ``random``, numpy's
    global generator (seed mod 2**32) and torch (CPU and every CUDA device).

    Example:
        >>> s = reseed_rng([torch.get_rng_state()], world=2, rank=0)  # doctest: +SKIP
    """
    h = hashlib.sha256(b"ledger.reshard.rng/v1")
    h.update(len(stored_torch_states).to_bytes(8, "little"))
    h.update(int(world).to_bytes(8, "little") + int(rank).to_bytes(8, "little"))
    for state in stored_torch_states:
        data = state.to(torch.uint8).contiguous().numpy().tobytes()
        h.update(len(data).to_bytes(8, "little") + data)
    seed = int.from_bytes(h.digest()[:8], "little")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
