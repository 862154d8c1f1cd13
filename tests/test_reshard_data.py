"""The data position across a change of world size: ``ResumableSampler`` and ``merge``.

Ranks are simulated in-process (one sampler per rank; DistributedSampler and
ours take ``num_replicas``/``rank`` explicitly): the sampler yields exactly
DistributedSampler's indices, and a position committed on W ranks and
resumed on W' ranks (and again on W'') continues with the unseen samples in
the same global order, no sample skipped or seen twice except by
DistributedSampler's own padding and drop_last rules (a hypothesis property
over dataset size, world sizes, consumed counts, shuffle and drop_last),
through real DataLoaders and torchdata's StatefulDataLoader. One real gloo
job (tests/scripts/reshard_data_worker.py) commits on 2 ranks with
``distributed.commit`` and resumes on 3 with ``distributed.restore``; the RNG
re-seed rule is checked there and in-process.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SCRIPTS, start
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, DistributedSampler

from ledger import Ledger
from ledger.adapters._common import ResumeError
from ledger.adapters._data_position import merge, merge_positions, reseed_rng
from ledger.adapters.distributed import ResumableSampler

WORKER = SCRIPTS / "reshard_data_worker.py"


def order(n: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The epoch's global order, from DistributedSampler itself (one replica: no padding)."""
    s = DistributedSampler(range(n), num_replicas=1, rank=0, shuffle=shuffle, seed=seed)
    s.set_epoch(epoch)
    return list(s)


def laid_out(pool: list[int], world: int, drop_last: bool) -> list[list[int]]:
    """What DistributedSampler would give each of ``world`` ranks for ``pool``, per rank."""
    if not pool:
        return [[] for _ in range(world)]
    total = (len(pool) // world if drop_last else -(-len(pool) // world)) * world
    padded = [pool[i % len(pool)] for i in range(total)]
    return [padded[r:total:world] for r in range(world)]


def run(samplers: Sequence[ResumableSampler], counts: Sequence[int]) -> list[list[int]]:
    """Each rank takes its first ``counts[r]`` indices (like a loop that stops mid-epoch)."""
    seen = []
    for s, k in zip(samplers, counts, strict=True):
        it = iter(s)
        seen.append([next(it) for _ in range(k)])
    return seen


def ranks(world: int, n: int, shuffle: bool, drop_last: bool, epoch: int) -> list[ResumableSampler]:
    out = [ResumableSampler(n, world, r, shuffle, 7, drop_last) for r in range(world)]
    for s in out:
        s.set_epoch(epoch)
    return out


def resumed(records: list[dict[str, Any]], world: int, n: int, sh: bool, dl: bool) -> list[Any]:
    merged = merge(records)
    out = [ResumableSampler(n, world, r, sh, 7, dl) for r in range(world)]
    for s in out:
        s.load_state_dict(merged)
        s.set_epoch(merged["epoch"])  # the training loop's call: keeps the restored position
    return out


def test_the_sampler_yields_exactly_what_distributed_sampler_yields() -> None:
    for n in (0, 1, 7, 10, 12):
        for world in (1, 2, 3, 4):
            for shuffle in (False, True):
                for drop_last in (False, True):
                    for rank in range(world):
                        ds = DistributedSampler(range(n), world, rank, shuffle, 7, drop_last)
                        ours = ResumableSampler(n, world, rank, shuffle, 7, drop_last)
                        ds.set_epoch(2)
                        ours.set_epoch(2)
                        assert list(ours) == list(ds) and len(ours) == len(ds)
                        assert list(ours) == list(ds)  # a second pass starts over, as DS does


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 40),
    worlds=st.lists(st.integers(1, 5), min_size=2, max_size=3),
    fractions=st.lists(st.floats(0, 1), min_size=2, max_size=2),
    uneven=st.booleans(),
    shuffle=st.booleans(),
    drop_last=st.booleans(),
    epoch=st.integers(0, 3),
)
def test_resharding_continues_with_the_unseen_samples_in_global_order(
    n: int,
    worlds: list[int],
    fractions: list[float],
    uneven: bool,
    shuffle: bool,
    drop_last: bool,
    epoch: int,
) -> None:
    samplers = ranks(worlds[0], n, shuffle, drop_last, epoch)
    seen: list[int] = []
    for i, world in enumerate(worlds[1:]):
        share = len(samplers[0])  # every rank's share is the same length
        k = round(fractions[i] * share)
        counts = [max(0, k - r % 2) if uneven else k for r in range(len(samplers))]
        taken = run(samplers, counts)
        seen += [x for rank in taken for x in rank]
        samplers = resumed([s.state_dict() for s in samplers], world, n, shuffle, drop_last)
    rest = [list(s) for s in samplers]
    pool = [x for x in order(n, shuffle, 7, epoch) if x not in set(seen)]
    # the next global sample is the first unseen one, and so on, laid out as DistributedSampler does
    assert rest == laid_out(pool, worlds[-1], drop_last)
    after = [x for r in rest for x in r]
    everything = Counter(seen + after)
    skipped = set(range(n)) - set(everything)
    if drop_last:  # drop_last drops only what it must on the last world size, and repeats nothing
        assert len(skipped) == len(pool) % worlds[-1] and max(everything.values(), default=1) == 1
    else:  # padding repeats at most world - 1 samples per segment, and nothing is skipped
        assert not skipped
        assert sum(everything.values()) - n <= sum(w - 1 for w in worlds)


@pytest.mark.parametrize(("n", "before", "after"), [(12, 2, 3), (12, 4, 2), (10, 2, 3), (10, 4, 2)])
def test_a_data_loader_resumed_on_another_world_size_sees_each_sample_once(
    n: int, before: int, after: int
) -> None:
    seen: list[int] = []
    samplers = ranks(before, n, True, False, 1)
    for s in samplers:
        for i, batch in enumerate(DataLoader(list(range(n)), batch_size=1, sampler=s)):
            seen += batch.tolist()
            if i == 1:  # two steps, then the job stops
                break
    resumed_on = resumed([s.state_dict() for s in samplers], after, n, True, False)
    rest = [x for s in resumed_on for x in DataLoader(list(range(n)), sampler=s)]
    counts = Counter(seen + [int(x) for x in rest])
    assert set(counts) == set(range(n))
    padding = -(-(n - len(seen)) // after) * after - (n - len(seen))  # DistributedSampler's own
    assert sum(counts.values()) - n == padding


def test_a_stateful_data_loader_carries_the_position_in_its_state(lg: Ledger) -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")  # the accelerate extra
    n, seen = 10, []
    states = []
    for s in ranks(2, n, True, False, 0):
        loader = stateful.StatefulDataLoader(list(range(n)), batch_size=2, sampler=s)
        for i, batch in enumerate(loader):
            seen += batch.tolist()
            if i == 1:
                break
        states.append(loader.state_dict())
    lg.commit({"ranks": states}, "loader states")  # plain values: committed and read back
    states = lg.checkout("HEAD")["ranks"]
    rank0 = states[0]
    assert merge_positions(rank0, 2, lambda r, path: _at(states[r], path)) != []
    rest = []
    for r in range(3):
        loader = stateful.StatefulDataLoader(
            list(range(n)), batch_size=2, sampler=ResumableSampler(n, 3, r, True, 7)
        )
        loader.load_state_dict(rank0)
        rest += [x for batch in loader for x in batch.tolist()]
    assert sorted(set(seen + rest)) == list(range(n)) and len(seen) + len(rest) == n + 1


def test_a_stateful_loader_over_a_distributed_sampler_is_refused_on_another_world_size() -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    sampler = DistributedSampler(range(10), num_replicas=2, rank=0)
    loader = stateful.StatefulDataLoader(list(range(10)), batch_size=2, sampler=sampler)
    next(iter(loader))
    with pytest.raises(ResumeError, match=r"state\['loader'\] is a StatefulDataLoader"):
        merge_positions({"loader": loader.state_dict()}, 2, lambda r, path: {})


def _at(tree: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def test_the_same_world_size_resumes_each_rank_where_it_stopped() -> None:
    first = ranks(3, 11, True, True, 4)
    taken = run(first, [2, 2, 2])
    for r, s in enumerate(first):
        again = ResumableSampler(11, 3, r, True, 7, True)
        again.load_state_dict(s.state_dict())
        again.set_epoch(4)
        ds = DistributedSampler(range(11), 3, r, True, 7, True)
        ds.set_epoch(4)
        assert taken[r] + list(again) == list(ds)
        again.set_epoch(5)  # the next epoch is a whole one again
        ds.set_epoch(5)
        assert list(again) == list(ds)


def test_a_resharded_epoch_committed_again_resumes_on_the_same_world_size() -> None:
    first = ranks(2, 13, True, False, 0)
    seen = [x for r in run(first, [3, 3]) for x in r]
    records = [s.state_dict() for s in first]
    second = resumed(records, 3, 13, True, False)
    taken = run(second, [1, 1, 1])
    third = []
    for r, s in enumerate(second):  # each rank's own record, history included
        again = ResumableSampler(13, 3, r, True, 7)
        again.load_state_dict(s.state_dict())
        third.append(list(again))
    uninterrupted = [list(s) for s in resumed(records, 3, 13, True, False)]
    assert [t + rest for t, rest in zip(taken, third, strict=True)] == uninterrupted
    pool = [x for x in order(13, True, 7, 0) if x not in seen]
    assert uninterrupted == laid_out(pool, 3, False)


def test_mismatched_positions_are_refused_with_what_differs() -> None:
    a, b = ranks(2, 10, True, False, 0)
    with pytest.raises(ResumeError, match="seed=7 stored, 8 here"):
        ResumableSampler(10, 2, 0, True, 8).load_state_dict(a.state_dict())
    with pytest.raises(ResumeError, match="rank 1 of 2 cannot be loaded on rank 0 of 3"):
        ResumableSampler(10, 3, 0, True, 7).load_state_dict(b.state_dict())
    with pytest.raises(ResumeError, match="rank 1's stored data position"):
        merge([a.state_dict(), a.state_dict()])
    with pytest.raises(ResumeError, match="not a data position"):
        a.load_state_dict({"yielded": 3})


def _draws(seed_state: torch.Tensor, stored: list[torch.Tensor], world: int, rank: int) -> Any:
    torch.set_rng_state(seed_state)
    seed = reseed_rng(stored, world, rank)
    return seed, torch.rand(2).tolist(), random.random(), float(np.random.random_sample())


def test_reseeding_is_deterministic_and_distinct_per_rank() -> None:
    saved = torch.get_rng_state()
    try:
        stored = [torch.Generator().manual_seed(s).get_state() for s in (1, 2)]
        once = [_draws(saved, stored, 3, r) for r in range(3)]
        assert once == [_draws(saved, stored, 3, r) for r in range(3)]
        assert len({d[0] for d in once}) == 3 and len({tuple(d[1]) for d in once}) == 3
        other = [torch.Generator().manual_seed(s).get_state() for s in (1, 3)]
        assert _draws(saved, other, 3, 0) != once[0]  # another stored state, another stream
        assert _draws(saved, stored, 4, 0) != once[0]  # another world size, another stream
    finally:
        torch.set_rng_state(saved)


def test_two_ranks_commit_and_three_resume_through_the_distributed_adapter(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ckpt"
    Ledger.open(ledger, create=True, fsync=False).close()
    n = 11  # divides neither 2 nor 3: padding on both sides
    procs = [start(WORKER, r, 2, 3, tmp_path, ledger, n, 2) for r in range(3)]
    try:
        for rank, proc in enumerate(procs):
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"rank {rank}: {output}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    trained, resumed_on = (
        [_record(tmp_path, r, p) for r in range(w)] for p, w in (("train", 2), ("resume", 3))
    )
    with Ledger.open(ledger) as lg:
        stored = lg.checkout("HEAD", paths=["ranks"])["ranks"]
        assert [r["state"]["sampler"]["consumed"] for r in stored] == [4, 4]
        stored_rng = [r["rng"]["torch"] for r in stored]
    assert [s.tolist() for s in stored_rng] == [r["rng"] for r in trained]
    seen = [x for r in trained for x in r["seen"]]
    rest = [x for r in resumed_on for x in r["seen"]]
    assert len(seen) == 8 and len(rest) == 3  # 3 unseen samples: one each, no padding needed
    assert sorted(seen + rest) == sorted(set(seen + rest)) == list(range(n))
    pool = [x for x in order(n, True, 3, 1) if x not in seen]
    assert [r["seen"] for r in resumed_on] == laid_out(pool, 3, False)
    saved = torch.get_rng_state()
    try:
        for rank, record in enumerate(resumed_on):  # the documented re-seed rule, on every rank
            reseed_rng(stored_rng, 3, rank)
            assert record["rng"] == torch.get_rng_state().tolist()
    finally:
        torch.set_rng_state(saved)
    assert len({tuple(r["draws"]) for r in resumed_on}) == 3


def _record(out: Path, rank: int, phase: str) -> dict[str, Any]:
    return json.loads((out / f"rank{rank}-{phase}.json").read_text())
