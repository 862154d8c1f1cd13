"""``log --graph -n N`` reads what it shows: the generation-number walk equals the full order.

For any commit graph (random DAGs with merges, clock order scrambled), the
first N commits of :func:`ledger.history.graph.newest_in_topo_order` are the
first N of ``topo_order`` over everything reachable, and the walk reads far
fewer commits than the history holds; generation numbers stored in records
match those computed from parents.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger
from ledger.cli.app import cli
from ledger.cli.graph import topo_order
from ledger.history.graph import ancestors, generation, newest_in_topo_order
from ledger.history.records import CommitRecord, utcnow


@st.composite
def dags(draw: st.DrawFn) -> tuple[dict[str, list[str]], dict[str, dt.datetime], list[str]]:
    n = draw(st.integers(1, 40))
    parents: dict[str, list[str]] = {}
    for i in range(n):
        earlier = [f"c{j}" for j in range(i)]
        ps = draw(st.lists(st.sampled_from(earlier), max_size=2, unique=True)) if earlier else []
        parents[f"c{i}"] = ps
    base = dt.datetime(2026, 1, 1)
    times = {c: base + dt.timedelta(seconds=draw(st.integers(0, 50))) for c in parents}
    tips = draw(st.lists(st.sampled_from(sorted(parents)), min_size=1, max_size=4, unique=True))
    return parents, times, tips


def _generations(parents: dict[str, list[str]]) -> dict[str, int]:
    recs = {c: CommitRecord(manifest="m", parents=ps, time=utcnow()) for c, ps in parents.items()}
    memo: dict[str, int] = {}
    return {c: generation(c, recs.__getitem__, memo) for c in parents}


@settings(max_examples=200, deadline=None)
@given(graph=dags(), limit=st.integers(0, 45))
def test_the_walk_gives_the_first_n_of_the_full_topological_order(
    graph: tuple[dict[str, list[str]], dict[str, dt.datetime], list[str]], limit: int
) -> None:
    parents, times, tips = graph
    reachable = set(ancestors(parents.__getitem__, tips))
    full = topo_order({c: parents[c] for c in reachable}, times)
    gens = _generations(parents)
    assert all(gens[c] > gens[p] for c in parents for p in parents[c])
    got = newest_in_topo_order(
        tips, parents.__getitem__, gens.__getitem__, times.__getitem__, limit
    )
    assert got == full[:limit]


def test_log_graph_n_reads_only_about_what_it_shows(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l", create=True, fsync=False) as lg:
        for i in range(60):
            if i % 10 == 5:
                lg.branch(f"b{i}")
            lg.commit({"w": torch.full((4,), float(i))}, step=i, rng=False)
        read: list[str] = []

        def parents_of(cid: str) -> list[str]:
            read.append(cid)
            return lg.record(cid).parents

        tips = list(lg.branches().values())
        order = newest_in_topo_order(
            tips,
            parents_of,
            lambda c: generation(c, lg.record),
            lambda c: lg.record(c).time,
            5,
        )
        assert [lg.record(c).step for c in order] == [59, 58, 57, 56, 55]
        assert len(set(read)) <= 5 + len(tips) + 1
        assert all(lg.record(c).generation == lg.record(c).step + 1 for c in order)
    runner = CliRunner()
    whole = runner.invoke(cli, ["--dir", str(tmp_path / "l"), "log", "--graph"])
    first = runner.invoke(cli, ["--dir", str(tmp_path / "l"), "log", "--graph", "-n", "7"])
    assert whole.exit_code == first.exit_code == 0, first.output
    assert first.output.splitlines() == whole.output.splitlines()[: len(first.output.splitlines())]
    assert sum("*" in line for line in first.output.splitlines()) == 7
