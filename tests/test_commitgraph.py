"""The commit-graph file: walks answer what the records say, with or without it.

* for any history (a random DAG, some commits deleted, an older graph to start
  from), the built graph holds exactly the commits whose parents are all in it,
  with the records' parents and generations (a hypothesis property);
* on a real ledger, ``main~N``, the branch-delete check and ``status``
  agree with a walk over records; the graph follows commits and gc;
* a damaged graph is set aside, never trusted; a graph naming a commit the
  store lacks (written before another process's gc) never resolves to it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from helpers import load_script
from hypothesis import given
from hypothesis import strategies as st

from ledger import Ledger
from ledger.errors import CorruptionError, LedgerError
from ledger.history.commitgraph import (
    NONE,
    CommitGraph,
    Walker,
    build_graph,
    encode_graph,
    extend_graph,
    graph_path,
)
from ledger.history.graph import ancestors, first_parents
from ledger.history.records import CommitRecord, utcnow

gs = load_script("gc_state")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[bytes], dict[bytes, list[bytes]], set[bytes], int]:
    """Commits in creation order with their parents (0-3 earlier ones), the ones deleted,
    and how many of the first commits an older graph held."""
    n = draw(st.integers(1, 40))
    ids = [os.urandom(32) for _ in range(n)]
    parents: dict[bytes, list[bytes]] = {}
    for i, oid in enumerate(ids):
        k = draw(st.integers(0, min(3, i)))
        picks = (
            draw(st.lists(st.integers(0, i - 1), min_size=k, max_size=k, unique=True)) if i else []
        )
        parents[oid] = [ids[p] for p in picks]
    deleted = {ids[i] for i in draw(st.sets(st.integers(0, n - 1), max_size=n // 3))}
    return ids, parents, deleted, draw(st.integers(0, n))


def _record(parents: list[bytes], gen: int | None) -> CommitRecord:
    return CommitRecord(
        manifest="00" * 32, parents=[p.hex() for p in parents], time=utcnow(), generation=gen
    )


def _expected(
    ids: list[bytes], parents: dict[bytes, list[bytes]], present: set[bytes]
) -> dict[bytes, int]:
    """The commits a closed graph holds, with their generations (creation order is topological)."""
    gens: dict[bytes, int] = {}
    for oid in ids:
        ps = parents[oid]
        if oid in present and len(ps) <= 2 and all(p in gens for p in ps):
            gens[oid] = 1 + max((gens[p] for p in ps), default=0)
    return gens


@given(histories())
def test_a_built_graph_holds_exactly_the_closed_commits_with_their_parents(
    history: tuple[list[bytes], dict[bytes, list[bytes]], set[bytes], int],
) -> None:
    ids, parents, deleted, older = history
    reads: list[bytes] = []

    def read(oid: bytes) -> CommitRecord | None:
        reads.append(oid)
        return _record(parents[oid], None)

    old = CommitGraph(build_graph(ids[:older], None, read))  # before anything was deleted
    assert len(old) == len(_expected(ids[:older], parents, set(ids)))
    reads.clear()
    present = set(ids) - deleted
    graph = CommitGraph(build_graph([i for i in ids if i in present], old, read))
    want = _expected(ids, parents, present)
    assert sorted(graph.id_at(p) for p in range(len(graph))) == sorted(want)
    for oid, gen in want.items():
        pos = graph.position(oid)
        assert pos is not None and graph.generation(pos) == gen
        assert [graph.id_at(p) for p in graph.parent_positions(pos)] == parents[oid]
    for oid in present - set(want):
        assert graph.position(oid) is None
    # rows the old graph held are taken from it, not read again
    assert not {r for r in reads if old.position(r) is not None}
    # adding the newer commits to the old graph gives the graph built whole
    extended = extend_graph(old, ids[older:], read)
    whole = build_graph(ids, None, read)
    assert (old.data if extended is None else extended) == whole


def test_a_graph_row_that_points_outside_or_upwards_is_refused() -> None:
    a, b = b"a" * 32, b"b" * 32
    up = CommitGraph(encode_graph([a, b], [(1, NONE, 1), (NONE, NONE, 1)]))
    with pytest.raises(CorruptionError, match="bad row"):
        up.parent_positions(0)  # a parent whose generation is not below: a cycle could follow
    out = CommitGraph(encode_graph([a], [(7, NONE, 2)]))
    with pytest.raises(CorruptionError, match="bad row"):
        out.parent_positions(0)
    data = bytearray(encode_graph([a], [(NONE, NONE, 1)]))
    data[20] ^= 1
    with pytest.raises(CorruptionError, match="checksum"):
        CommitGraph(bytes(data))
    with pytest.raises(CorruptionError, match="footer"):
        CommitGraph(bytes(data[:-3]))


def _by_records(lg: Ledger) -> Walker:
    return Walker(None, lambda cid: lg.record(cid).parents)


def test_walks_over_the_graph_agree_with_walks_over_records(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        for i in range(40):
            if i == 20:
                lg.branch("side")
            gs.commit_state(lg, 1, i, n=64, branch="side" if i % 3 == 0 and i > 20 else None)
        lg.compact()  # writes the graph
        graph = lg.graph.current()
        assert graph is not None and len(graph) == 40
        tip = lg.resolve("main")
        by_records = list(first_parents(_by_records(lg), tip))
        assert list(first_parents(lg.walker(), tip)) == by_records
        assert set(ancestors(lg.walker(), [lg.resolve("side")])) == set(
            ancestors(_by_records(lg), [lg.resolve("side")])
        )
    with Ledger.open(ledger_dir) as fresh:  # a new process: no record cached
        for n in (1, 7, len(by_records) - 1):
            assert fresh.resolve(f"main~{n}") == by_records[n]
        assert not fresh._records  # answered from the graph, no record read
        with pytest.raises(LedgerError):
            fresh.resolve(f"main~{len(by_records)}")  # past the root, as before


def test_commits_keep_the_graph_close_behind_and_gc_drops_what_it_deleted(
    ledger_dir: Path,
) -> None:
    from ledger.api.maintain import GRAPH_LAG

    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=64).id for i in range(GRAPH_LAG - 2)]
        lg.branch("side")
        side = [gs.commit_state(lg, 2, i, n=64, branch="side").id for i in range(2)]
        lg._join_compaction()  # the 16th commit started a rewrite in the background
        assert _held(lg) == set(ids + side)
        lg.delete_branch("side", force=True)
        lg.gc(grace=0)
        assert not any(lg.store.has(bytes.fromhex(c)) for c in side)
        assert _held(lg) == set(ids)


def _held(lg: Ledger) -> set[str]:
    graph = lg.graph.current()
    assert graph is not None
    return {graph.id_at(p).hex() for p in range(len(graph))}


def test_a_damaged_graph_is_set_aside_and_walks_read_records(
    ledger_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=64).id for i in range(8)]
        lg.compact()
    path = graph_path(ledger_dir)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with Ledger.open(ledger_dir) as lg, caplog.at_level(logging.WARNING, "ledger.commitgraph"):
        assert lg.resolve("main~5") == ids[2]
        assert lg.graph.current() is None and "checksum" in caplog.text
        lg.compact()  # writes a good one again
        assert lg.graph.current() is not None and lg.resolve("main~7") == ids[0]


def test_a_graph_that_names_a_commit_the_store_lacks_never_resolves_to_it(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=64).id for i in range(3)]
    gone = b"\xee" * 32  # as a graph written before another process's gc could still say
    rows = {bytes.fromhex(ids[2]): (gone, 3), gone: (bytes.fromhex(ids[0]), 2)}
    rows[bytes.fromhex(ids[0])] = (None, 1)
    order = sorted(rows)
    graph_path(ledger_dir).write_bytes(
        encode_graph(
            order,
            [
                (NONE if rows[i][0] is None else order.index(rows[i][0]), NONE, rows[i][1])
                for i in order
            ],
        )
    )
    with Ledger.open(ledger_dir) as lg:
        assert lg.resolve("main~2") == ids[0]  # through the graph: ancestry is a fact
        with pytest.raises(LedgerError, match="eeeeeeeeeeee"):
            lg.resolve("main~1")


def test_verify_finds_a_graph_that_disagrees_with_the_records_and_repair_rebuilds_it(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=64).id for i in range(3)]
        lg.compact()
        assert lg.verify().ok
    graph = CommitGraph.read(graph_path(ledger_dir))
    order = [graph.id_at(p) for p in range(len(graph))]
    rows = [graph.row(p) for p in range(len(graph))]
    tip, root = order.index(bytes.fromhex(ids[2])), order.index(bytes.fromhex(ids[0]))
    rows[tip] = (root, NONE, rows[tip][2])  # a well-formed row that skips a commit
    graph_path(ledger_dir).write_bytes(encode_graph(order, rows))
    with Ledger.open(ledger_dir) as lg:
        assert lg.resolve("main~1") == ids[0]  # what a wrong graph would make of it
        report = lg.verify()
        assert not report.ok and report.repairable
        assert any("commit graph disagrees with 1 commit record" in p for p in report.problems)
        fixed = lg.verify(repair=True)
        assert fixed.ok and any("rebuilt the commit graph" in r for r in fixed.repaired)
        assert lg.resolve("main~1") == ids[1] and lg.verify().ok


def test_verify_notes_a_damaged_graph_and_repair_rebuilds_it(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        for i in range(3):
            gs.commit_state(lg, 1, i, n=64)
        lg.compact()
    path = graph_path(ledger_dir)
    path.write_bytes(path.read_bytes()[:-5])
    with Ledger.open(ledger_dir) as lg:
        report = lg.verify()
        assert report.ok and report.repairable
        assert any("commit graph was set aside" in n for n in report.notes)
        assert lg.verify(repair=True).repaired
        assert lg.graph.current() is not None and not lg.verify().repairable


def test_a_bad_row_makes_the_walk_read_records_and_verify_say_so(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=64).id for i in range(3)]
        lg.compact()
    graph = CommitGraph.read(graph_path(ledger_dir))
    order = [graph.id_at(p) for p in range(len(graph))]
    rows = [graph.row(p) for p in range(len(graph))]
    tip = order.index(bytes.fromhex(ids[2]))
    rows[tip] = (tip, NONE, rows[tip][2])  # its own parent: a walk could never end
    graph_path(ledger_dir).write_bytes(encode_graph(order, rows))
    with Ledger.open(ledger_dir) as lg:
        assert lg.resolve("main~2") == ids[0]  # from the records
        assert not lg.verify().ok
        assert lg.verify(repair=True).ok and lg.resolve("main~1") == ids[1]


def test_a_gc_that_deletes_no_commit_leaves_the_graph_as_it_is(ledger_dir: Path) -> None:
    from ledger.retention import KeepLast

    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        for i in range(6):
            gs.commit_state(lg, 1, i, n=4096)
        lg.compact()
        gs.commit_state(lg, 1, 6, n=4096)  # outside the graph: a rewrite would add it
        before = graph_path(ledger_dir).read_bytes()
        lg.set_retention(KeepLast(2))
        report = lg.gc(grace=0)  # expires states: their chunks go, every commit stays
        assert report.objects_freed and report.expired
        assert graph_path(ledger_dir).read_bytes() == before
