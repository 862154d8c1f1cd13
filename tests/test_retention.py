"""Retention semantics (issue 5): which commits keep their state, and what expiry means.

* built-in policies (KeepLast, KeepBest, KeepEvery, KeepWithin) each keep
  what they say; policies combine (kept by any policy = kept);
* ``set_retention`` replaces the set of its scope; a branch's own set adds to
  the ledger-wide one; with no policy everything is kept; branch heads,
  tagged commits and a detached HEAD are always kept; a commit on several
  branches is kept when any of them keeps it;
* built-ins are stored in the ledger (a second ``Ledger`` on the same
  directory and a reopened one apply them); a custom policy (a callable given
  the branch history newest first) applies only in the instance that set it;
* expiry happens at a non-dry gc (or ``auto_gc``), is an event in the log,
  and is listed in ``report.expired``; an expired commit stays in ``log``,
  ``table()`` and ``diff`` metadata, while ``checkout``/``restore`` raise
  ``CommitExpiredError`` naming the policy and the time;
* ``expire(rev)`` drops one commit's state on purpose, keeping its history.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import bits, dir_bytes, load_script, object_ids, tree_bytes
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ledger import Ledger, LedgerError
from ledger.errors import CommitExpiredError, PolicyError, RefNameError, RevisionNotFoundError
from ledger.history.records import Commit, Expire
from ledger.history.tree import chunk_ids
from ledger.objects import direct
from ledger.retention import KeepBest, KeepEvery, KeepLast, KeepWithin

gs = load_script("gc_state")
N = 1024  # float32 per tensor: one 4 KiB chunk each in the ``small`` ledger


def commit(
    lg: Ledger, run: int, i: int, *, branch: str | None = None, loss: float | None = None
) -> Commit:
    """Commit state ``(run, i)`` with step ``i`` (and metric ``loss`` when given)."""
    metrics = None if loss is None else {"loss": loss}
    return gs.commit_state(lg, run, i, N, branch=branch, metrics=metrics)


def commits(lg: Ledger, run: int, steps: range, branch: str | None = None) -> dict[int, str]:
    """Commit one state per step; return step -> commit id."""
    return {i: commit(lg, run, i, branch=branch).id for i in steps}


def restores(lg: Ledger, cid: str) -> bool:
    """Whether ``cid`` checks out bit-exactly to the state its message names."""
    return gs.restores(lg, cid, N)


def expired_ids(lg: Ledger) -> set[str]:
    """Ids the event log says are expired."""
    return set(lg.refs.state().expired)


def assert_kept_exactly(lg: Ledger, ids: dict[int, str], kept_steps: set[int]) -> None:
    """Steps in ``kept_steps`` restore bit-exactly; every other step raises CommitExpiredError."""
    for step, cid in ids.items():
        if step in kept_steps:
            assert restores(lg, cid), f"step {step} should be kept"
        else:
            with pytest.raises(CommitExpiredError):
                lg.checkout(cid)


# -- no policy, built-ins, combination ---------------------------------------------------------


def test_no_policy_keeps_everything(small: Ledger) -> None:
    ids = commits(small, 1, range(6))
    small.branch("side", at=ids[2])
    assert small.retention() == []
    report = small.gc(grace=0)
    assert report.expired == [] and report.objects_freed == 0 and report.bytes_freed == 0
    assert expired_ids(small) == set()
    assert_kept_exactly(small, ids, set(range(6)))


@pytest.mark.parametrize(
    ("policy", "kept"),
    [
        (KeepLast(3), {9, 8, 7}),
        (KeepEvery(4), {0, 4, 8, 9}),  # 9: the branch head
        (KeepBest("loss", k=2, mode="min"), {2, 6, 9}),
        (KeepBest("loss", k=3, mode="max"), {3, 5, 7, 9}),
        (KeepWithin("7d"), set(range(10))),
        (KeepWithin(0), {9}),
    ],
)
def test_each_builtin_keeps_what_it_says(small: Ledger, policy: Any, kept: set[int]) -> None:
    # loss by step; steps 0 and 1 have no loss metric at all (KeepBest never keeps them).
    losses = {2: 0.1, 3: 0.9, 4: 0.5, 5: 0.8, 6: 0.2, 7: 0.7, 8: 0.4, 9: 0.3}
    ids = {i: commit(small, 1, i, loss=losses.get(i)).id for i in range(10)}
    small.set_retention(policy)
    time.sleep(0.01)  # KeepWithin(0) measures from gc's clock
    report = small.gc(grace=0)
    assert set(report.expired) == {ids[s] for s in set(ids) - kept}
    assert expired_ids(small) == set(report.expired)
    assert_kept_exactly(small, ids, kept)


def test_policies_combine_kept_by_any_is_kept(small: Ledger) -> None:
    ids = commits(small, 1, range(10))
    small.set_retention(KeepLast(2), KeepEvery(3))
    report = small.gc(grace=0)
    kept = {8, 9} | {0, 3, 6, 9}
    assert set(report.expired) == {ids[s] for s in set(range(10)) - kept}
    assert_kept_exactly(small, ids, kept)
    # The reason names every policy that was in force.
    reason = small.refs.state().expired[ids[1]].reason
    assert "KeepLast(2)" in reason and "KeepEvery(3)" in reason and "'main'" in reason


def test_invalid_policies_are_policy_errors(small: Ledger) -> None:
    for make in (
        lambda: KeepLast(0),
        lambda: KeepEvery(0),
        lambda: KeepBest("loss", k=1, mode="avg"),
        lambda: KeepWithin("soon"),
        lambda: KeepWithin(-1),
    ):
        with pytest.raises(PolicyError):
            make()
    with pytest.raises(PolicyError):
        small.set_retention("keep everything")  # type: ignore[arg-type]
    with pytest.raises(RefNameError):
        small.set_retention(KeepLast(1), branch="bad..name")
    assert issubclass(PolicyError, LedgerError)
    assert KeepWithin("12h").seconds == 12 * 3600


# -- scopes -------------------------------------------------------------------------------------


def test_set_retention_replaces_the_set_of_its_scope(small: Ledger) -> None:
    ids = commits(small, 1, range(8))
    small.set_retention(KeepLast(1))
    small.set_retention(KeepEvery(2))  # replaces KeepLast(1), does not add to it
    assert small.retention() == [KeepEvery(2)]
    report = small.gc(dry_run=True, grace=0)
    assert set(report.expired) == {ids[s] for s in (1, 3, 5)}  # 7 is the head
    small.set_retention()  # an empty set: no policy, everything kept
    assert small.retention() == []
    assert small.gc(grace=0).expired == []
    assert_kept_exactly(small, ids, set(range(8)))


def test_branch_sets_add_to_the_ledger_wide_set(small: Ledger) -> None:
    main = commits(small, 1, range(6))
    exp = commits(small, 2, range(10, 16), branch="exp")  # forks at main's head (step 5)
    small.set_retention(KeepLast(1))
    small.set_retention(KeepEvery(2), branch="exp")
    assert small.retention() == [KeepLast(1)]
    assert small.retention("exp") == [KeepLast(1), KeepEvery(2)]
    assert small.retention("main") == [KeepLast(1)]
    # Replacing the branch's set leaves the ledger-wide one alone, and vice versa.
    small.set_retention(KeepEvery(2), KeepEvery(5), branch="exp")
    small.set_retention(KeepLast(2))
    assert small.retention("exp") == [KeepLast(2), KeepEvery(2), KeepEvery(5)]
    small.gc(grace=0)
    # main: KeepLast(2) -> 4, 5. exp: KeepLast(2) -> 15, 14; KeepEvery(2) -> 10, 12, 14;
    # KeepEvery(5) -> 10, 15. exp's first-parent history also holds main 0..5:
    # KeepEvery(2) -> 0, 2, 4; KeepEvery(5) -> 0, 5.
    assert_kept_exactly(small, main, {0, 2, 4, 5})
    assert_kept_exactly(small, exp, {10, 12, 14, 15})


def test_per_branch_set_only_touches_its_branch(small: Ledger) -> None:
    main = commits(small, 1, range(5))
    side = commits(small, 2, range(10, 15), branch="side")
    small.set_retention(KeepLast(1), branch="side")
    small.gc(grace=0)
    # main has no policy: all of main is kept -- including the commits that are
    # also in side's history, which side's policy alone would have expired.
    assert_kept_exactly(small, main, set(range(5)))
    assert_kept_exactly(small, side, {14})


def test_a_commit_on_two_branches_is_kept_when_either_keeps_it(small: Ledger) -> None:
    main = commits(small, 1, range(6))
    small.branch("fork", at=main[3])
    fork = commits(small, 2, range(10, 12), branch="fork")
    small.set_retention(KeepLast(1), branch="main")
    small.set_retention(KeepLast(5), branch="fork")
    small.gc(grace=0)
    # fork's last five: 11, 10, main 3, 2, 1; main keeps only 5.
    assert_kept_exactly(small, main, {1, 2, 3, 5})
    assert_kept_exactly(small, fork, {10, 11})


def test_heads_tags_and_a_detached_head_are_always_kept(small: Ledger) -> None:
    ids = commits(small, 1, range(10))
    small.tag("best", at=ids[2])
    small.branch("old-idea", at=ids[4])
    small.switch(ids[6])  # detached HEAD
    small.set_retention(KeepEvery(1000))  # keeps step 0 only
    report = small.gc(grace=0)
    kept = {0, 2, 4, 6, 9}
    assert set(report.expired) == {ids[s] for s in set(range(10)) - kept}
    assert_kept_exactly(small, ids, kept)


def test_expiry_is_final_a_later_tag_does_not_bring_state_back(small: Ledger) -> None:
    ids = commits(small, 1, range(4))
    small.set_retention(KeepLast(1))
    small.gc(grace=0)
    small.tag("too-late", at=ids[0])
    small.set_retention()
    assert small.gc(grace=0).expired == []
    with pytest.raises(CommitExpiredError):
        small.checkout("too-late")


# -- persistence and custom policies -------------------------------------------------------------


def test_builtins_persist_across_reopen_and_other_instances(
    small: Ledger, ledger_dir: Path
) -> None:
    ids = commits(small, 1, range(6))
    small.set_retention(KeepLast(2), KeepBest("loss", k=1, mode="max"))
    small.set_retention(KeepEvery(2), branch="main")
    with Ledger.open(ledger_dir, fsync=False) as other:
        assert other.retention() == [KeepLast(2), KeepBest("loss", k=1, mode="max")]
        assert other.retention("main") == [*other.retention(), KeepEvery(2)]
        report = other.gc(grace=0)  # another process's gc applies the stored policies
    assert set(report.expired) == {ids[1], ids[3]}
    small.close()
    with Ledger.open(ledger_dir, fsync=False) as again:
        assert again.retention("main") == [
            KeepLast(2),
            KeepBest("loss", k=1, mode="max"),
            KeepEvery(2),
        ]
        assert_kept_exactly(again, ids, {0, 2, 4, 5})


def test_custom_policy_applies_only_in_the_instance_that_set_it(
    small: Ledger, ledger_dir: Path
) -> None:
    ids = commits(small, 1, range(8))
    seen: list[list[Commit]] = []

    def keep_odd_steps(history: list[Commit]) -> list[Any]:
        seen.append(history)
        odd = [c for c in history if c.step is not None and c.step % 2]
        # Either Commit objects or ids may be returned.
        return [*odd[:2], *(c.id for c in odd[2:])]

    small.set_retention(KeepLast(1), keep_odd_steps)
    assert small.retention() == [KeepLast(1), keep_odd_steps]

    with Ledger.open(ledger_dir, fsync=False) as other:
        # The other instance (another process, or `ledger gc` from a shell) sees the
        # built-in policy only.
        assert other.retention() == [KeepLast(1)]
        theirs = other.gc(dry_run=True, grace=0)
    mine = small.gc(dry_run=True, grace=0)
    assert set(theirs.expired) == {ids[s] for s in range(7)}
    assert set(mine.expired) == {ids[s] for s in (0, 2, 4, 6)}
    # The callable got the branch history, newest first, as Commit objects.
    history = seen[-1]
    assert [c.step for c in history] == list(range(7, -1, -1))
    assert all(isinstance(c, Commit) for c in history)

    report = small.gc(grace=0)
    assert set(report.expired) == {ids[s] for s in (0, 2, 4, 6)}
    assert_kept_exactly(small, ids, {1, 3, 5, 7})
    small.close()
    with Ledger.open(ledger_dir, fsync=False) as reopened:
        assert reopened.retention() == [KeepLast(1)]  # the callable did not persist


def test_custom_policy_per_branch(small: Ledger) -> None:
    main = commits(small, 1, range(4))
    exp = commits(small, 2, range(10, 14), branch="exp")

    def nothing(history: list[Commit]) -> list[str]:
        return []

    small.set_retention(nothing, branch="exp")
    assert small.retention("exp") == [nothing] and small.retention() == []
    small.gc(grace=0)
    # main has no policy, so main's commits (also in exp's history) stay.
    assert_kept_exactly(small, main, set(range(4)))
    assert_kept_exactly(small, exp, {13})


# -- expiry ---------------------------------------------------------------------------------------


def test_expiry_happens_at_a_non_dry_gc_and_is_an_event(small: Ledger) -> None:
    ids = commits(small, 1, range(5))
    small.set_retention(KeepLast(2))
    # Setting a policy expires nothing yet; neither does a dry run.
    assert restores(small, ids[0])
    dry = small.gc(dry_run=True, grace=0)
    assert set(dry.expired) == {ids[0], ids[1], ids[2]}
    assert expired_ids(small) == set()
    assert restores(small, ids[0])
    assert not [e for e in small.refs.log.read_from(0).events if isinstance(e, Expire)]

    report = small.gc()  # default grace: expiry does not wait for the grace period
    assert report.expired == dry.expired
    events = [e for e in small.refs.log.read_from(0).events if isinstance(e, Expire)]
    assert sorted(e.commit for e in events) == report.expired
    assert all("KeepLast(2)" in e.reason for e in events)
    assert expired_ids(small) == set(report.expired)
    assert small.refs.replay_state().expired == small.refs.state().expired
    # A second gc expires nothing new.
    assert small.gc(grace=0).expired == []
    assert_kept_exactly(small, ids, {3, 4})


def test_expired_commit_keeps_its_history(small: Ledger) -> None:
    ids = {i: commit(small, 1, i, loss=1.0 / (i + 1)).id for i in range(4)}
    small.set_retention(KeepLast(1))
    small.gc(grace=0)
    old = ids[0]
    expiry = small.refs.state().expired[old]

    assert [c.id for c in small.log()] == [ids[3], ids[2], ids[1], old]
    got = small.get(old)
    assert got.step == 0 and got.metrics == {"loss": 1.0} and got.message == gs.message(1, 0)
    table = small.table()
    assert old in table.column("id").to_pylist()
    row = table.column("id").to_pylist().index(old)
    assert table.column("metrics.loss").to_pylist()[row] == 1.0

    diff = small.diff(old, ids[3])
    assert [(m.name, m.a, m.b) for m in diff.metrics] == [("loss", 1.0, 0.25)]
    assert diff.tensors.unavailable is not None and "expired" in diff.tensors.unavailable

    for read in (
        lambda: small.checkout(old),
        lambda: small.checkout("main~3"),
        lambda: small.restore(gs.make_state(1, 0, N), old, rng=False),
    ):
        with pytest.raises(CommitExpiredError) as info:
            read()
        msg = str(info.value)
        assert isinstance(info.value, LedgerError)
        assert "KeepLast(1)" in msg, msg  # which policy
        assert f"{expiry.time:%Y-%m-%d %H:%M:%S}" in msg, msg  # and when
        assert old[:12] in msg
    # restore refused before changing anything
    live = gs.make_state(9, 9, N)
    before = gs.digest(live)
    with pytest.raises(CommitExpiredError):
        small.restore(live, old, rng=False)
    assert gs.digest(live) == before


def test_show_of_an_expired_commit_shows_its_metadata(small: Ledger) -> None:
    ids = {i: commit(small, 1, i, loss=1.0 / (i + 1)).id for i in range(3)}
    small.set_retention(KeepLast(1))
    small.gc(grace=0)
    report = small.show(ids[0])
    assert report.commit.id == ids[0] and report.commit.metrics == {"loss": 1.0}
    assert report.tensors == [] and report.expired is not None and "KeepLast(1)" in report.expired


def test_expire_by_hand_drops_one_commit_state(small: Ledger) -> None:
    ids = commits(small, 1, range(4))
    packs = small.root / "objects" / "packs"
    before = sum(p.stat().st_size for p in packs.iterdir())
    cid = small.expire("main~2", reason="data licence withdrawn")
    assert cid == ids[1]
    assert small.expire(ids[1]) == cid  # twice: no second event
    events = [e for e in small.refs.log.read_from(0).events if isinstance(e, Expire)]
    assert [(e.commit, e.reason) for e in events] == [(cid, "data licence withdrawn")]
    # Unreadable at once; its bytes stay until a gc (younger than grace: kept).
    with pytest.raises(CommitExpiredError, match="data licence withdrawn"):
        small.checkout(cid)
    assert small.gc().bytes_freed == 0
    report = small.gc(grace=0)
    assert report.expired == [] and report.objects_freed >= 2  # its unique chunk, its manifest
    after = sum(p.stat().st_size for p in packs.iterdir())
    assert report.bytes_freed == before - after > 4096
    assert [c.id for c in small.log()] == [ids[3], ids[2], cid, ids[0]]
    assert_kept_exactly(small, ids, {0, 2, 3})
    assert small.verify(full=True).ok


def test_expire_by_hand_wins_over_head_and_tag(small: Ledger) -> None:
    """Heads and tags are always kept by *policies*; an explicit expire still drops the state."""
    ids = commits(small, 1, range(3))
    small.tag("release", at=ids[1])
    small.expire("release", reason="privacy request")
    small.expire("HEAD", reason="privacy request")
    small.gc(grace=0)
    assert_kept_exactly(small, ids, {0})
    # The branch stays usable: a new commit on top of an expired head.
    nxt = commit(small, 1, 3)
    assert nxt.parents == [ids[2]]
    assert restores(small, nxt.id)


def test_auto_gc_expires_after_commits(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, chunk_size=4096, auto_gc=3) as lg:
        lg.set_retention(KeepLast(1))
        ids = commits(lg, 1, range(2))
        assert expired_ids(lg) == set()
        ids |= commits(lg, 1, range(2, 3))  # the third commit runs gc
        assert expired_ids(lg) == {ids[0], ids[1]}
        # auto gc uses the configured grace: the young packs are still there.
        assert len(lg.store.ids("chunk")) > 4


def test_keep_within_uses_commit_time(small: Ledger) -> None:
    old = commits(small, 1, range(3))
    time.sleep(1.2)
    new = commits(small, 1, range(3, 5))
    small.set_retention(KeepWithin(1.0))
    report = small.gc(grace=0)
    assert set(report.expired) == set(old.values())
    assert_kept_exactly(small, old | new, {3, 4})


def test_retention_reports_scope_policies_for_unknown_branch(small: Ledger) -> None:
    """A branch's own set may be set before the branch exists (it applies once it does)."""
    commits(small, 1, range(3))
    small.set_retention(KeepLast(1), branch="later")
    assert small.retention("later") == [KeepLast(1)]
    assert small.gc(grace=0).expired == []
    later = commits(small, 2, range(10, 13), branch="later")
    small.gc(grace=0)
    assert set(expired_ids(small)) == {later[10], later[11]}
    assert torch.equal(small.checkout("later")["unique"], gs.make_state(2, 12, N)["unique"])


# -- property test: a random life of a ledger against a model of what must survive ---------------

BRANCHES = ("main", "a", "b", "c")
TAGS = ("t0", "t1")
POOL = [torch.full((1024,), float(k)) + torch.arange(1024.0) / 7 for k in range(3)]
FOREVER, NEVER = KeepWithin("1000d"), KeepWithin(0)
POLICIES = st.one_of(
    st.builds(KeepLast, st.integers(1, 3)),
    st.builds(KeepBest, st.just("loss"), k=st.integers(1, 2), mode=st.sampled_from(["min", "max"])),
    st.builds(KeepEvery, st.integers(2, 4)),
    st.sampled_from([FOREVER, NEVER]),
)


# (pool, seed, step, loss) of one commit
COMMIT_ARGS = st.tuples(
    st.integers(0, 2),
    st.integers(0, 12),
    st.none() | st.integers(0, 12),
    st.none() | st.integers(0, 99),
)


def prop_state(pool: int, seed: int, n: int) -> dict[str, Any]:
    """A small state: a pool tensor (1 chunk), a tensor from ``seed`` (2 chunks), a counter.

    Seeds repeat across commits, so a new commit often reuses chunks of older
    ones -- including commits that lost their last ref or were swept.
    """
    g = torch.Generator().manual_seed(seed)
    return {"pool": POOL[pool].clone(), "u": torch.rand(2048, generator=g), "n": n}


@dataclass
class ModelCommit:
    """What the model knows about one commit."""

    parent: str | None
    step: int | None
    loss: float | None
    state: dict[str, Any]
    manifest: str
    chunks: set[str]


class LedgerLife(RuleBasedStateMachine):
    """Random commit / branch / tag / delete / policy / gc / expire / checkout / reopen.

    The model tracks refs, policies, expiry and which commits gc swept. After
    every step every commit that is neither expired nor swept restores
    bit-exactly, expired ones raise ``CommitExpiredError``, swept ones are not
    found; after every gc(grace=0) the store holds exactly the chunks,
    manifests and commit records that reachable, kept commits need.
    """

    FSYNC = False  # DurableLedgerLife: durable packs (O_DIRECT on Linux)
    MMAP = False  # DurableLedgerLife: read kept commits through checkout(mmap=True)

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="ledger-life-"))
        self.root = self.tmp / "ckpt"
        self.lg = Ledger.open(self.root, create=True, fsync=self.FSYNC, chunk_size=4096)
        self.commits: dict[str, ModelCommit] = {}
        self.order: list[str] = []
        self.branches: dict[str, str] = {}
        self.tags: dict[str, str] = {}
        self.wide: list[Any] = []
        self.scoped: dict[str, list[Any]] = {}
        self.expired: set[str] = set()
        self.swept: set[str] = set()

    def teardown(self) -> None:
        self.lg.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- the model ------------------------------------------------------------------

    def history(self, tip: str) -> list[str]:
        out: list[str] = []
        cur: str | None = tip
        while cur is not None:
            out.append(cur)
            cur = self.commits[cur].parent
        return out

    def reachable(self) -> set[str]:
        out: set[str] = set()
        for tip in [*self.branches.values(), *self.tags.values()]:
            out.update(self.history(tip))
        return out

    def keeps(self, policy: Any, hist: list[str]) -> set[str]:
        if isinstance(policy, KeepLast):
            return set(hist[: policy.n])
        if isinstance(policy, KeepEvery):
            return {
                c
                for c in hist
                if self.commits[c].step is not None and self.commits[c].step % policy.steps == 0
            }  # type: ignore[operator]
        if isinstance(policy, KeepBest):
            scored = sorted(
                (c for c in hist if self.commits[c].loss is not None),
                key=lambda c: self.commits[c].loss,  # type: ignore[arg-type,return-value]
                reverse=policy.mode == "max",
            )
            return set(scored[: policy.k])
        assert policy in (FOREVER, NEVER)
        return set(hist) if policy == FOREVER else set()

    def due(self) -> set[str]:
        """Commits a gc now must expire (not yet expired, dropped by every policy in force)."""
        keep = set(self.branches.values()) | set(self.tags.values())
        dropped: set[str] = set()
        for branch, tip in self.branches.items():
            hist = self.history(tip)
            policies = [*self.wide, *self.scoped.get(branch, [])]
            if not policies:
                keep.update(hist)
                continue
            kept: set[str] = set()
            for p in policies:
                kept |= self.keeps(p, hist)
            keep |= kept
            dropped |= set(hist) - kept
        return dropped - keep - self.expired

    def alive(self) -> list[str]:
        """Commits still stored (not swept), oldest first."""
        return [c for c in self.order if c not in self.swept]

    # -- rules -----------------------------------------------------------------------

    def one_commit(
        self, branch: str, pool: int, seed: int, step: int | None, loss: int | None
    ) -> None:
        n = len(self.order)
        parent = self.branches.get(branch, self.branches.get("main"))
        value = None if loss is None else loss + n / 1000  # distinct: no ties for KeepBest
        state = prop_state(pool, seed, n)
        c = self.lg.commit(
            state,
            step=step,
            metrics=None if value is None else {"loss": value},
            branch=branch,
            rng=False,
        )
        assert c.parents == ([] if parent is None else [parent])
        manifest = self.lg.manifest(c.id)[1]
        self.commits[c.id] = ModelCommit(
            parent, step, value, state, c.manifest, chunk_ids(manifest.root)
        )
        self.order.append(c.id)
        self.branches[branch] = c.id

    @initialize(commits=st.lists(COMMIT_ARGS, min_size=1, max_size=4))
    def start(self, commits: list[tuple[int, int, int | None, int | None]]) -> None:
        for args in commits:
            self.one_commit("main", *args)

    @rule(branch=st.sampled_from(BRANCHES), commits=st.lists(COMMIT_ARGS, min_size=1, max_size=3))
    def commit(self, branch: str, commits: list[tuple[int, int, int | None, int | None]]) -> None:
        """A few training steps on one branch (created at HEAD if missing)."""
        for args in commits:
            self.one_commit(branch, *args)

    def free_branches(self) -> list[str]:
        return [b for b in BRANCHES[1:] if b not in self.branches]

    @precondition(lambda self: self.free_branches() and self.alive())
    @rule(data=st.data())
    def branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.free_branches()))
        at = data.draw(st.sampled_from(self.alive()))
        self.lg.branch(name, at=at)
        self.branches[name] = at

    @precondition(lambda self: len(self.tags) < len(TAGS) and self.alive())
    @rule(data=st.data())
    def tag(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from([t for t in TAGS if t not in self.tags]))
        at = data.draw(st.sampled_from(self.alive()))
        self.lg.tag(name, at=at)
        self.tags[name] = at

    @precondition(lambda self: set(self.branches) - {"main"})
    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(set(self.branches) - {"main"})))
        assert self.lg.delete_branch(name, force=True) == self.branches.pop(name)

    @rule(scope=st.none() | st.sampled_from(BRANCHES), policies=st.lists(POLICIES, max_size=2))
    def set_policy(self, scope: str | None, policies: list[Any]) -> None:
        self.lg.set_retention(*policies, branch=scope)
        if scope is None:
            self.wide = list(policies)
        else:
            self.scoped[scope] = list(policies)

    @precondition(lambda self: self.alive())
    @rule(data=st.data())
    def expire(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.alive()))
        assert self.lg.expire(cid) == cid
        self.expired.add(cid)

    @rule()
    def gc(self) -> None:
        due = self.due()
        ids_before = object_ids(self.lg)
        size_before = dir_bytes(self.root / "objects" / "packs")
        report = self.lg.gc(grace=0)
        assert report.expired == sorted(due)
        self.expired |= due
        reachable = self.reachable()
        self.swept |= set(self.commits) - reachable
        # Exactly what reachable, kept commits need is stored -- nothing more.
        kept = reachable - self.expired
        store = self.lg.store
        store.sync()
        want_chunks = set().union(*(self.commits[c].chunks for c in kept))
        assert {o.hex() for o in store.ids("chunk")} == want_chunks
        assert {o.hex() for o in store.ids("manifest")} == {self.commits[c].manifest for c in kept}
        assert {o.hex() for o in store.ids("commit")} == reachable
        # The report counts what really left the disk.
        assert report.objects_freed == len(ids_before - object_ids(self.lg))
        assert report.bytes_freed == size_before - dir_bytes(self.root / "objects" / "packs")

    @rule()
    def gc_dry_run(self) -> None:
        before = tree_bytes(self.root)
        report = self.lg.gc(dry_run=True, grace=0)
        after = tree_bytes(self.root)
        # Only empty lock files may appear (a ledger that never took them lacks them).
        created = {k: v for k, v in after.items() if k not in before}
        assert set(created) <= {"gc.lock", "gc.intent"} and not any(created.values())
        assert {k: after[k] for k in before} == before
        assert report.expired == sorted(self.due())

    @precondition(lambda self: self.order)
    @rule(data=st.data())
    def checkout(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.order))
        if cid in self.swept:
            with pytest.raises(RevisionNotFoundError):
                self.lg.checkout(cid)
        elif cid in self.expired:
            with pytest.raises(CommitExpiredError):
                self.lg.checkout(cid)
            assert self.lg.get(cid).step == self.commits[cid].step  # history remains
        else:
            assert bits(self.lg.checkout(cid, mmap=self.MMAP)) == bits(self.commits[cid].state)

    @rule()
    def reopen(self) -> None:
        self.lg.close()
        self.lg = Ledger.open(self.root, fsync=self.FSYNC)
        assert self.lg.retention() == self.wide

    # -- after every step --------------------------------------------------------------

    @invariant()
    def everything_promised_survives(self) -> None:
        assert self.lg.branches() == self.branches
        assert self.lg.tags() == self.tags
        assert set(self.lg.refs.state().expired) == self.expired
        for branch in self.branches:
            assert self.lg.retention(branch) == [*self.wide, *self.scoped.get(branch, [])]
        for cid in self.alive():
            if cid in self.expired:
                with pytest.raises(CommitExpiredError):
                    self.lg.checkout(cid)
            else:
                got = self.lg.checkout(cid, mmap=self.MMAP)
                assert bits(got) == bits(self.commits[cid].state), cid[:12]


_SLOW = os.environ.get("HYPOTHESIS_PROFILE") == "slow"


def life_settings(examples: int, steps: int, slow_examples: int) -> settings:
    """Settings of a ledger-life machine (more under ``HYPOTHESIS_PROFILE=slow``)."""
    return settings(
        max_examples=slow_examples if _SLOW else examples,
        stateful_step_count=60 if _SLOW else steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


LedgerLife.TestCase.settings = life_settings(60, 40, slow_examples=300)
test_ledger_life = LedgerLife.TestCase


class DurableLedgerLife(LedgerLife):
    """The same life with fsync on (packs written with O_DIRECT) and mapped checkouts.

    One 4 KiB block per direct write, so even these small packs take the aligned
    path, not only the plain tail.
    """

    FSYNC = True
    MMAP = True

    def __init__(self) -> None:
        self.saved_buffer = direct.BUFFER
        direct.BUFFER = direct.BLOCK
        super().__init__()

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            direct.BUFFER = self.saved_buffer


DurableLedgerLife.TestCase.settings = life_settings(12, 30, slow_examples=100)
test_durable_ledger_life = DurableLedgerLife.TestCase
