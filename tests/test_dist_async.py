"""``distributed.commit(..., blocking=False)``: gloo jobs committing in the background.

Real 2-rank process groups on CPU (tests/scripts/dist_async_worker.py): a DDP
loop keeps training (its all_reduce on the default group) while a commit is
written, the snapshot holds the values of the call, commits land in order and
one waits for the other, a failure on one rank (a full disk, an unstorable
value) surfaces on every rank's handle and next call and leaves no commit, a
state over the budget is committed synchronously, ``close()`` drains; and
(slow tier) SIGTERM to both ranks during a pending commit lets it land, while
a rank killed mid-write leaves no commit and the survivor fails fast. The
plumbing under it (``Ledger.snapshot``, ``Stage.write`` of a snapshot,
``Ledger.submit``) is tested on its own, in one process.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SCRIPTS, start

from ledger import Commit, Ledger
from ledger.errors import UnsupportedValueError
from ledger.pending import BACKGROUND_NICE

WORKER = SCRIPTS / "dist_async_worker.py"


class Job:
    """``world`` worker processes running one scenario of the worker against a ledger."""

    def __init__(self, tmp: Path, ledger: Path, scenario: str, world: int = 2) -> None:
        self.out = tmp / scenario
        self.out.mkdir()
        init = self.out / "rendezvous"
        self.procs = [
            start(WORKER, scenario, rank, world, init, ledger, self.out) for rank in range(world)
        ]

    def finish(self, timeout: float = 120) -> list[int]:
        try:
            for proc in self.procs:
                proc.wait(timeout=timeout)
        finally:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return [proc.returncode for proc in self.procs]

    def output(self, rank: int) -> str:
        proc = self.procs[rank]
        return proc.stdout.read() if proc.stdout else ""

    def record(self, rank: int) -> dict[str, Any]:
        path = self.out / f"rank{rank}.json"
        assert path.exists(), f"rank {rank} wrote no record: {self.output(rank)}"
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    Ledger.open(tmp_path / "ckpt", create=True, fsync=False).close()
    return tmp_path / "ckpt"


def test_background_commits_of_a_ddp_job(tmp_path: Path, ledger_path: Path) -> None:
    job = Job(tmp_path, ledger_path, "async")
    codes = job.finish()
    assert codes == [0, 0], [job.output(r) for r in range(2)]
    ranks = [job.record(r) for r in range(2)]
    for rank, rec in enumerate(ranks):
        # returned before the write was done; the DDP loop ran while it was in flight
        assert rec["pending_after_call"] and rec["steps_in_flight"] >= 1, rec
        assert rec["snapshot_exact"], rank  # values changed after the call did not leak in
        assert rec["second_waited_for_first"]  # one outstanding commit: the next call waited
        c2_parents, c3_parents, c2 = rec["parents"]
        assert c2_parents == [rec["c1"]] and c3_parents == [c2]  # in order
        assert rec["c6_parents"] == [rec["c3"]]  # the failed commit left nothing behind
        assert rec["h8"][0] and any("memory budget" in m for m in rec["h8"][1])
        assert rec["h9_done_at_close"] and rec["h9"] == 9
    # A full disk on rank 1 during the background write: every rank's handle fails,
    # and every rank's next call raises it again (never lost).
    assert ranks[1]["h4"].startswith("DiskFullError")
    assert ranks[0]["h4"].startswith("DistributedCommitError")
    assert "no commit was made; rank 1: DiskFullError" in ranks[0]["h4"]
    for rec in ranks:
        assert rec["h4_next_call"] == rec["h4"]
    # A value rank 1 cannot store: rank 1 raises at the call, rank 0's handle fails.
    assert ranks[1]["h7_call"].startswith("UnsupportedValueError")
    assert "state['bad']" in ranks[1]["h7_call"]
    assert ranks[0]["h7_call"] is None
    assert "rank 1: UnsupportedValueError" in ranks[0]["h7"]
    assert ranks[0]["h7_next_restore"] == ranks[0]["h7"]
    assert ranks[1]["h7_next_restore"].startswith("UnsupportedValueError")
    with Ledger.open(ledger_path) as lg:
        assert [c.step for c in lg.log()] == [9, 6, 3, 2, 1]
        assert ranks[0]["restored"] == lg.resolve("HEAD~1")  # restore found commit 6
        assert lg.get("tight").step == 8 and lg.get("tight").parents == [lg.resolve("HEAD~1")]
        head = lg.checkout("HEAD", paths=["world_size"])
        assert head["world_size"] == 2
        assert not list((lg.root / "objects" / "tmp").glob("*.pack"))
        assert lg.verify(full=True).ok


# -- the plumbing it is built on: Ledger.snapshot, Stage.write(snapshot), Ledger.submit ---------


def test_a_snapshot_holds_the_values_of_its_call_and_is_written_once(lg: Ledger) -> None:
    w = torch.arange(1000, dtype=torch.float32)
    snap = lg.snapshot({"w": w})
    assert snap.copied and snap.nbytes == 4000
    w += 1  # after the snapshot: must not reach the stored part
    with lg.stage() as stage:
        part = stage.write(snap)
        made = stage.commit({"ranks": [part]}, step=1)
        with pytest.raises(UnsupportedValueError, match="already written"):
            stage.write(snap)
    assert torch.equal(lg.checkout(made.id)["ranks"][0]["w"], torch.arange(1000.0))


def test_a_snapshot_over_the_budget_is_not_copied(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, async_budget=100) as lg:
        snap = lg.snapshot({"w": torch.zeros(1000)})
        assert not snap.copied and snap.nbytes == 4000


def test_submitted_work_runs_on_the_writer_and_its_error_surfaces_twice(lg: Ledger) -> None:
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)  # the calling thread's (Linux)

    seen: list[int] = []

    def work() -> Commit:
        with lg.stage() as stage:  # on the writer: the background threads hash and write
            seen.append(stage.pool.submit(nice).result())
            return stage.commit({"w": torch.ones(3)}, step=1)

    first = lg.submit(work).result()
    if os.uname().sysname == "Linux":
        assert seen == [min(19, nice() + BACKGROUND_NICE)]

    def broken() -> Commit:
        raise UnsupportedValueError("broken on purpose")

    handle = lg.submit(broken)
    with pytest.raises(UnsupportedValueError, match="on purpose"):
        handle.result()
    with pytest.raises(UnsupportedValueError, match="on purpose"):  # the next call: never lost
        lg.branches()
    assert lg.head is not None and lg.head.id == first.id


@pytest.mark.slow
def test_sigterm_to_both_ranks_lets_the_pending_commit_land(
    tmp_path: Path, ledger_path: Path
) -> None:
    job = Job(tmp_path, ledger_path, "sigterm")
    try:
        for rank, proc in enumerate(job.procs):
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line == "started", f"rank {rank}: {line}{job.output(rank)}"
        for proc in job.procs:
            os.kill(proc.pid, signal.SIGTERM)
    finally:
        codes = job.finish(timeout=60)
    assert codes == [-signal.SIGTERM] * 2  # the default action still happens, after the drain
    for rank in range(2):
        assert job.record(rank)["pending_at_signal"]
    with Ledger.open(ledger_path) as lg:
        assert [c.step for c in lg.log()] == [1]
        tree = lg.checkout("HEAD", paths=["world_size", "ranks/1/state/rank"])
        assert tree["world_size"] == 2 and tree["ranks"][0]["state"]["rank"] == 1
        assert lg.verify(full=True).ok


@pytest.mark.slow
def test_a_rank_killed_mid_write_leaves_no_commit_and_the_other_fails_fast(
    tmp_path: Path, ledger_path: Path
) -> None:
    started = time.monotonic()
    job = Job(tmp_path, ledger_path, "kill")
    codes = job.finish(timeout=90)
    assert codes == [0, -signal.SIGKILL], job.output(0)
    rec = job.record(0)
    assert rec["error"].startswith("DistributedCommitError"), rec
    assert rec["took"] < 10 + 5, rec  # within the timeout (10 s)
    assert rec["next_call"] == rec["error"]  # and once more on the next call
    assert time.monotonic() - started < 90
    with Ledger.open(ledger_path) as lg:
        assert lg.branches() == {} and lg.head is None  # no commit, no moved ref
        assert lg.verify().ok
