"""Resume lineage: restore/base_on record where the live state came from; commits tell the truth.

Checks docs/design-decisions.md ("History", "Resume lineage"): the next commit's
parent is the restored commit, the branch tip it moves off is kept on an
automatic branch ``orig/<branch>/<id>``, HEAD never moves on restore, each
``Ledger`` instance has its own lineage, and a concurrent writer still loses
the compare-and-swap. A hypothesis state machine drives random sequences of
commits, restores, ``base_on``, branches and deletions against a model.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import Ledger
from ledger.errors import DetachedHeadError, RefConflictError
from ledger.history.graph import ancestors
from ledger.history.lineage import AUTO_BRANCH_PREFIX
from tests.helpers import finish, run_cli, start, tiny_state


def commit_n(lg: Ledger, n: int, start: int = 0) -> list[str]:
    return [lg.commit(tiny_state(start + i), rng=False, step=start + i).id for i in range(n)]


def live() -> dict[str, Any]:
    return {"w": torch.zeros(3), "i": -1}


def reachable(lg: Ledger) -> set[str]:
    refs = lg.refs.snapshot()
    tips = [v for k, v in refs.items() if k.startswith("refs/")]
    head = lg.head
    if head is not None:
        tips.append(head.id)
    return set(ancestors(lambda c: lg.record(c).parents, tips))


def test_restore_then_commit_takes_the_restored_commit_as_parent(lg: Ledger) -> None:
    ids = commit_n(lg, 4)
    state = live()
    lg.restore(state, "main~2", rng=False)
    assert state["i"] == 1 and torch.equal(state["w"], tiny_state(1)["w"])
    based = lg.based_on
    assert based is not None and based.id == ids[1]
    assert lg.head is not None and lg.head.id == ids[3], "restore moved HEAD"
    made = lg.commit(state, rng=False, step=2)
    assert made.parents == [ids[1]]
    assert lg.branches() == {"main": made.id, f"{AUTO_BRANCH_PREFIX}main/{ids[3][:12]}": ids[3]}
    based = lg.based_on
    assert based is not None and based.id == made.id
    # The next commit continues normally: no second automatic branch.
    again = lg.commit(state, rng=False, step=3)
    assert again.parents == [made.id]
    assert len(lg.branches()) == 2


def test_the_automatic_branch_event_says_why(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.restore(live(), ids[0], rng=False)
    made = lg.commit(live(), rng=False)
    events = lg.refs.log.read_from(0).events
    kept = [e for e in events if getattr(e, "ref", "").startswith("refs/heads/orig/")]
    assert len(kept) == 1
    (event,) = kept
    assert event.old is None and event.new == ids[2]  # type: ignore[union-attr]
    reason = event.reason  # type: ignore[union-attr]
    assert ids[2][:12] in reason and ids[0][:12] in reason and "restore of" in reason
    moved = [e for e in events if getattr(e, "new", None) == made.id]
    assert moved and moved[0].reason == f"commit {made.id[:12]}"  # type: ignore[union-attr]


def test_restoring_the_tip_or_an_ancestor_of_another_ref_keeps_no_extra_branch(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.restore(live(), "HEAD", rng=False)
    made = lg.commit(live(), rng=False)
    assert made.parents == [ids[2]] and set(lg.branches()) == {"main"}
    lg.tag("keep", at=made.id)
    lg.restore(live(), ids[0], rng=False)
    forked = lg.commit(live(), rng=False)
    assert forked.parents == [ids[0]]
    assert set(lg.branches()) == {"main"}, "the old tip is tagged: no automatic branch needed"
    assert made.id in reachable(lg)


def test_base_on_declares_lineage_without_loading(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    state = live()
    c = lg.base_on("main~1")
    assert c.id == ids[1]
    assert state["i"] == -1 and torch.equal(state["w"], torch.zeros(3)), "base_on loaded something"
    made = lg.commit(state, rng=False, branch="exp")
    assert made.parents == [ids[1]], "a new branch starts at the base, not at HEAD"
    assert lg.branches()["main"] == ids[2]


def test_checkout_does_not_record_lineage(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.checkout(ids[0])
    made = lg.commit(live(), rng=False)
    assert made.parents == [ids[2]]


def test_two_instances_eval_restoring_best_leaves_train_alone(ledger_dir: Path) -> None:
    with (
        Ledger.open(ledger_dir, create=True, fsync=False) as train,
        Ledger.open(ledger_dir, fsync=False) as evaluator,
    ):
        ids = commit_n(train, 3)
        train.branch("best", at=ids[0])
        evaluator.restore(live(), "best", rng=False)
        assert evaluator.based_on is not None and evaluator.based_on.id == ids[0]
        nxt = train.commit(tiny_state(9), rng=False)
        assert nxt.parents == [ids[2]]
        assert set(train.branches()) == {"main", "best"}
        assert train.head is not None and train.head.id == nxt.id


def test_a_concurrent_writer_still_loses_the_compare_and_swap(
    ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        Ledger.open(ledger_dir, create=True, fsync=False) as slow,
        Ledger.open(ledger_dir, fsync=False) as fast,
    ):
        ids = commit_n(slow, 3)
        slow.restore(live(), ids[0], rng=False)
        real = slow.refs.update
        rival: list[str] = []

        def update_after_rival(changes: dict[str, Any], reason: str, **kw: Any) -> None:
            if not rival:
                rival.append(fast.commit(tiny_state(50), rng=False).id)
            real(changes, reason, **kw)

        monkeypatch.setattr(slow.refs, "update", update_after_rival)
        with pytest.raises(RefConflictError, match="branch 'main'"):
            slow.commit(live(), rng=False)
        monkeypatch.undo()
        assert slow.resolve("main") == rival[0]
        assert not any(b.startswith(AUTO_BRANCH_PREFIX) for b in slow.branches())
        # The lineage survives the lost race: the retry still continues from ids[0]
        # and keeps the rival's commit on an automatic branch.
        retry = slow.commit(live(), rng=False)
        assert retry.parents == [ids[0]]
        assert slow.branches()[f"{AUTO_BRANCH_PREFIX}main/{rival[0][:12]}"] == rival[0]


def test_async_and_staged_commits_follow_lineage(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.restore(live(), ids[1], rng=False)
    handle = lg.commit(live(), rng=False, blocking=False)
    made = handle.result()
    assert made.parents == [ids[1]]
    based = lg.based_on
    assert based is not None and based.id == made.id
    lg.base_on(ids[0])
    with lg.stage() as st:
        staged = st.commit({"p": st.write({"w": torch.ones(2)})})
    assert staged.parents == [ids[0]]
    assert {ids[2], made.id} <= reachable(lg)


def test_detached_head_still_needs_a_branch(lg: Ledger) -> None:
    ids = commit_n(lg, 2)
    lg.switch(ids[0])
    lg.restore(live(), rng=False)
    with pytest.raises(DetachedHeadError):
        lg.commit(live(), rng=False)
    made = lg.commit(live(), rng=False, branch="fix")
    assert made.parents == [ids[0]]


def test_log_graph_shows_the_fork_and_the_automatic_branch(lg: Ledger) -> None:
    ids = commit_n(lg, 3)
    lg.restore(live(), ids[0], rng=False)
    made = lg.commit(live(), rng=False, message="resumed")
    lg.close()
    result = run_cli("--dir", str(lg.root), "log", "--graph")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    graph = [line.split(" ", 1)[0] if line[:1] in "*|" else line for line in lines]
    by_id = {
        cid[:12]: i for cid in (*ids, made.id) for i, line in enumerate(lines) if cid[:12] in line
    }
    assert f"orig/main/{ids[2][:12]}" in lines[by_id[ids[2][:12]]]
    assert "HEAD -> main" in lines[by_id[made.id[:12]]]
    assert any(line.startswith("|/") for line in lines), graph  # the two lines join at ids[0]
    assert by_id[ids[0][:12]] > by_id[ids[1][:12]] and by_id[ids[0][:12]] > by_id[made.id[:12]]


DIST_WORKER = textwrap.dedent(
    """
    import datetime as dt, json, sys, torch
    import torch.distributed as dist
    from ledger.adapters import distributed

    rank, init, where, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2,
                            timeout=dt.timedelta(seconds=60))
    state = {"w": torch.full((2,), float(rank)), "n": 0}
    ids = []
    for step in range(3):
        state["n"] = step
        ids.append(distributed.commit(where, state, step=step).id)
    fresh = {"w": torch.zeros(2), "n": -1}
    restored = distributed.restore(where, fresh, ids[0])  # the path again: same instance
    assert fresh["n"] == 0 and restored.id == ids[0], fresh
    made = distributed.commit(where, fresh, step=1)
    if rank == 0:
        open(out, "w").write(json.dumps({"ids": ids, "made": made.id, "parents": made.parents}))
    dist.destroy_process_group()
    """
)


@pytest.mark.slow  # two gloo processes: about a minute on a busy 2-core machine
def test_distributed_restore_then_commit_continues_from_the_restored_commit(
    tmp_path: Path,
) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(DIST_WORKER)
    ledger = tmp_path / "ledger"
    out = tmp_path / "out.json"
    init = tmp_path / "rendezvous"
    procs = [start(worker, rank, init, ledger, out) for rank in range(2)]
    for proc in procs:
        finish(proc, timeout=120)
    got = json.loads(out.read_text())
    ids = got["ids"]
    assert got["parents"] == [ids[0]], "the commit after restore must continue from it"
    with Ledger.open(ledger) as lg:
        assert lg.branches() == {"main": got["made"], f"orig/main/{ids[2][:12]}": ids[2]}


class LineageMachine(RuleBasedStateMachine):
    """Random commits/restores/base_on/branches: nothing is lost, parents tell the truth."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.root = Path(tempfile.mkdtemp()) / "ledger"
        self.lg = Ledger.open(self.root, create=True, fsync=False)
        self.evaluator = Ledger.open(self.root, fsync=False)  # a second process's view
        self.n = 0
        self.made: list[str] = []
        self.deleted: set[str] = set()  # commits whose only ref we deleted on purpose
        self.base: str | None = None  # what the model says the next commit's parent is
        self.explicit = False

    def teardown(self) -> None:
        self.lg.close()
        self.evaluator.close()

    def reachable_in_order(self) -> list[str]:
        """The commits still reachable, oldest first (ids are random: never sort by them)."""
        found = reachable(self.lg)
        return [c for c in self.made if c in found]

    def _commit(self, branch: str | None) -> None:
        self.n += 1
        refs = self.lg.refs.snapshot()
        if branch is None and not refs["HEAD"].startswith("ref: "):
            return
        target = branch or refs["HEAD"][len("ref: refs/heads/") :]
        tip = refs.get("refs/heads/" + target)
        c = self.lg.commit(tiny_state(self.n), rng=False, branch=branch)
        if self.explicit:
            assert c.parents == [self.base], "the parent is not the restored commit"
        elif tip is not None:
            assert c.parents == [tip]
        self.made.append(c.id)
        self.base, self.explicit = c.id, False

    @rule()
    def commit_on_head(self) -> None:
        self._commit(None)

    @precondition(lambda self: bool(self.made))
    @rule(name=st.sampled_from(["a", "b", "exp/1"]))
    def commit_to(self, name: str) -> None:
        self._commit(name)

    @precondition(lambda self: bool(self.reachable_in_order()))
    @rule(data=st.data(), base_on=st.booleans())
    def restore_or_base_on(self, data: st.DataObject, base_on: bool) -> None:
        cid = data.draw(st.sampled_from(self.reachable_in_order()))
        head = self.lg.refs.snapshot()["HEAD"]
        if base_on:
            self.lg.base_on(cid)
        else:
            state = {"w": torch.zeros(3), "i": -1}
            self.lg.restore(state, cid, rng=False)
            stored = self.lg.checkout(cid)
            assert state["i"] == stored["i"] and torch.equal(state["w"], stored["w"])
        assert self.lg.refs.snapshot()["HEAD"] == head, "restore/base_on moved HEAD"
        self.base, self.explicit = cid, True

    @precondition(lambda self: bool(self.reachable_in_order()))
    @rule(data=st.data())
    def evaluator_restores(self, data: st.DataObject) -> None:
        """Another instance restoring any commit changes nothing for this one."""
        cid = data.draw(st.sampled_from(self.reachable_in_order()))
        refs = self.lg.refs.snapshot()
        self.evaluator.restore({"w": torch.zeros(3), "i": -1}, cid, rng=False)
        based = self.evaluator.based_on
        assert based is not None and based.id == cid
        assert self.lg.refs.snapshot() == refs, "a restore moved a ref"

    @precondition(lambda self: bool(self.reachable_in_order()))
    @rule(name=st.sampled_from(["a", "b", "exp/1"]), data=st.data())
    def branch(self, name: str, data: st.DataObject) -> None:
        if name in self.lg.branches():
            return
        self.lg.branch(name, at=data.draw(st.sampled_from(self.reachable_in_order())))

    @precondition(lambda self: len(self.lg.branches()) > 1)
    @rule(data=st.data())
    def delete_a_branch(self, data: st.DataObject) -> None:
        current = self.lg.current_branch
        names = sorted(b for b in self.lg.branches() if b != current)
        if not names:
            return
        name = data.draw(st.sampled_from(names))
        before = reachable(self.lg)
        self.lg.delete_branch(name, force=True)
        self.deleted |= before - reachable(self.lg)

    @invariant()
    def nothing_became_unreachable(self) -> None:
        lost = set(self.made) - reachable(self.lg) - self.deleted
        assert not lost, f"commits lost without a deliberate delete: {sorted(lost)}"


TestLineageMachine = LineageMachine.TestCase
TestLineageMachine.settings = settings(max_examples=20, stateful_step_count=20, deadline=None)
