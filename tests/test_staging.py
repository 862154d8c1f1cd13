"""The staged-commit path: parts stored durably now (here or in another process), one commit later.

``Ledger.commit`` takes the same path, so the rest of the suite covers the
commit writer itself; these tests prove what only staging offers: parts that
travel as bytes between processes, trees mixing parts and values, the gc lock
held for the whole session, and the compare-and-swap branch move.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, bits, finish, start
from hypothesis import given
from hypothesis import strategies as st

from ledger import Ledger, Part, Stage
from ledger.errors import (
    ClosedLedgerError,
    CorruptionError,
    DetachedHeadError,
    RefConflictError,
    UnsupportedValueError,
)
from ledger.history.records import LedgerConfig
from ledger.history.refs import GcLock, RefStore
from ledger.objects.store import ObjectStore
from ledger.retention import KeepLast


def test_parts_from_two_processes_make_one_commit(ledger_dir: Path) -> None:
    Ledger.open(ledger_dir, create=True).close()
    children = [start(SCRIPTS / "stage_part.py", ledger_dir, seed) for seed in (1, 2)]
    parts = [Part.decode(bytes.fromhex(finish(c).strip().splitlines()[-1])) for c in children]
    with Ledger.open(ledger_dir) as lg, lg.stage() as stage:
        made = stage.commit({"world": 2, "ranks": parts}, "two ranks", step=7)
    with Ledger.open(ledger_dir) as lg:
        tree = lg.checkout(made.id)
        assert lg.head is not None and lg.head.id == made.id and made.step == 7
    for seed, rank in zip((1, 2), tree["ranks"], strict=True):
        torch.manual_seed(seed)
        assert torch.equal(rank["w"], torch.randn(64, 33)) and rank["k"] == seed
    assert tree["world"] == 2
    assert made.stats.tensors == 2 and made.stats.chunks_written >= 2


def test_a_process_killed_after_staging_leaves_no_commit(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True) as lg:
        first = lg.commit({"w": torch.ones(3)})
    child = start(SCRIPTS / "stage_part.py", ledger_dir, 3, "--die")
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -9, out
    with Ledger.open(ledger_dir) as lg:
        assert lg.branches() == {"main": first.id}
        assert lg.verify(full=True).ok
        freed = lg.gc(grace=0).bytes_freed  # the orphaned part is unreachable: swept
        assert freed > 64 * 33 * 4 // 2
        assert torch.equal(lg.checkout("HEAD")["w"], torch.ones(3))


def test_a_tree_mixes_parts_values_and_tensors(lg: Ledger) -> None:
    shared = torch.arange(6.0)
    with lg.stage() as stage:
        a = stage.write({"x": shared, "y": shared[2:]})  # a view: an alias inside the part
        b = stage.write({"x": torch.zeros(4), "same": torch.zeros(4)})
        made = stage.commit(
            {"parts": [a, {"inner": b}], "t": torch.full((2,), 3.0), "n": 5, "pair": (a, 1)},
            metrics={"loss": 0.5},
        )
    tree = lg.checkout(made.id)
    assert torch.equal(tree["parts"][0]["x"], shared)
    assert torch.equal(tree["parts"][0]["y"], shared[2:])
    assert torch.equal(tree["parts"][1]["inner"]["same"], torch.zeros(4))
    assert torch.equal(tree["t"], torch.full((2,), 3.0)) and tree["n"] == 5
    assert bits(tree["pair"][0]) == bits(tree["parts"][0]) and tree["pair"][1] == 1
    assert made.metrics == {"loss": 0.5}
    # the caller's parts are not changed by committing them (ids renumbered in a copy)
    assert Part.decode(a.encode()) == a


def test_committing_the_same_parts_twice_gives_equal_trees(lg: Ledger) -> None:
    with lg.stage() as stage:
        part = stage.write({"w": torch.randn(10)})
        one = stage.commit({"p": part})
        two = stage.commit({"p": part, "q": part})
    assert bits(lg.checkout(one.id)["p"]) == bits(lg.checkout(two.id)["q"])
    assert two.parents == [one.id]


def test_stage_holds_the_gc_lock_until_it_closes(ledger_dir: Path) -> None:
    Ledger.open(ledger_dir, create=True, fsync=False).close()
    with Ledger.open(ledger_dir, fsync=False) as writer, Ledger.open(ledger_dir) as collector:
        finished = threading.Event()

        def gc() -> None:
            collector.gc(grace=0)
            finished.set()

        with writer.stage() as stage:
            part = stage.write({"w": torch.randn(1000)})  # unreachable until committed
            thread = threading.Thread(target=gc)
            thread.start()
            assert not finished.wait(1.0), "gc ran while a stage was open"
            made = stage.commit({"p": part})
        thread.join(60)
        assert finished.is_set()
        assert writer.checkout(made.id)["p"]["w"].shape == (1000,)
        assert collector.verify(full=True).ok


def test_stage_used_outside_with_is_refused(lg: Ledger) -> None:
    stage = lg.stage()
    with pytest.raises(ClosedLedgerError, match="context manager"):
        stage.write({"w": torch.ones(1)})
    with stage, pytest.raises(UnsupportedValueError, match="do not nest"):
        stage.__enter__()


def test_commit_inside_an_open_stage_is_refused(lg: Ledger) -> None:
    with lg.stage() as stage:
        with pytest.raises(UnsupportedValueError, match=r"stage\.commit"):
            lg.commit({"w": torch.ones(1)})
        inside = stage.commit({"w": torch.ones(1)})
    assert lg.commit({"w": torch.zeros(1)}).parents == [inside.id]


def test_stage_commit_errors_name_the_path_and_commit_nothing(lg: Ledger) -> None:
    with lg.stage() as stage:
        part = stage.write({"w": torch.ones(2)})
        with pytest.raises(UnsupportedValueError, match=r"state\['bad'\]\[0\]"):
            stage.commit({"p": part, "bad": [object()]})
        with pytest.raises(UnsupportedValueError, match="string keys"):
            stage.commit({"p": {1: part}})
        with pytest.raises(UnsupportedValueError, match=r"state\['x'\]"):
            stage.write({"x": lambda: None})
    assert lg.branches() == {}


def test_stage_commit_on_detached_head_needs_a_branch(lg: Ledger) -> None:
    first = lg.commit({"w": torch.ones(1)})
    lg.switch(first.id)
    with lg.stage() as stage:
        part = stage.write({"w": torch.zeros(1)})
        with pytest.raises(DetachedHeadError):
            stage.commit({"p": part})
        made = stage.commit({"p": part}, branch="side")
    assert lg.branches()["side"] == made.id and made.parents == [first.id]


def test_a_stage_builds_from_plain_parts(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "l", create=True, fsync=False) as lg:
        config: LedgerConfig = lg.config
    store = ObjectStore(tmp_path / "l", fsync=False)
    refs = RefStore(tmp_path / "l", fsync=False)
    seen: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        stage = Stage(
            store=store,
            refs=refs,
            gc_lock=GcLock(tmp_path / "l" / "gc.lock"),
            config=config,
            pool=pool,
            on_commit=lambda cid, _rec: seen.append(cid),
        )
        with stage:
            made = stage.commit({"w": stage.write(torch.ones(5))}, step=1)
    store.close()
    assert seen == [made.id] and stage.commits == [made]
    with Ledger.open(tmp_path / "l") as lg:
        assert torch.equal(lg.checkout("HEAD")["w"], torch.ones(5))


def test_auto_gc_runs_when_the_stage_closes(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, auto_gc=1) as lg:
        lg.set_retention(KeepLast(1))
        with lg.stage() as stage:
            first = stage.commit({"w": stage.write(torch.ones(2))})
            stage.commit({"w": stage.write(torch.zeros(2))})
            assert lg.refs.state().expired == {}  # gc waits for the lock the stage holds
        assert set(lg.refs.state().expired) == {first.id}


def test_move_branch_is_compare_and_swap(lg: Ledger) -> None:
    a = lg.commit({"w": torch.ones(1)})
    b = lg.commit({"w": torch.zeros(1)})
    lg.move_branch("best", a.id, expected=None)
    with pytest.raises(RefConflictError):
        lg.move_branch("best", b.id, expected=None)  # it exists now
    with pytest.raises(RefConflictError):
        lg.move_branch("best", b.id, expected=b.id)  # it is at a, not b
    assert lg.branches()["best"] == a.id
    moved = lg.move_branch("best", "main", expected=a.id)
    assert moved.id == b.id and lg.branches()["best"] == b.id


tensors = st.builds(
    lambda n, seed: torch.randn(n, generator=torch.Generator().manual_seed(seed)),
    st.integers(0, 300),
    st.integers(0, 2**31),
)
trees = st.recursive(
    st.one_of(tensors, st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.none()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text("abc", max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(st.dictionaries(st.text("xyz", min_size=1, max_size=3), trees, max_size=4))
def test_a_part_round_trips_through_bytes_and_a_commit(tmp_path_factory, value) -> None:  # type: ignore[no-untyped-def]
    with Ledger.open(tmp_path_factory.mktemp("l"), create=True, fsync=False) as lg:
        with lg.stage() as stage:
            part = stage.write(value)
            again = Part.decode(part.encode())
            assert again == part
            made = stage.commit({"v": again})
        assert bits(lg.checkout(made.id)["v"]) == bits(value)


@given(st.binary(max_size=200))
def test_decoding_arbitrary_bytes_is_a_part_or_a_corruption_error(data: bytes) -> None:
    try:
        Part.decode(data)
    except CorruptionError as e:
        assert "part" in str(e)
