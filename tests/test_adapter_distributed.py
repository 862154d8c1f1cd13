"""``ledger.adapters.distributed``: gloo jobs on CPU commit per-rank shards as one commit.

Every test runs real process groups (tests/scripts/adapter_dist_worker.py,
one process per rank, gloo over localhost): 2- and 4-rank commits restored
bitwise (DTensor shards, per-rank tensors, optimizers, generators and the
global RNG), resharding to another world size through
torch.distributed.checkpoint's planner, and failures (a rank killed after
writing its chunks, a rank that hangs, a rank whose state cannot be stored)
that leave no commit behind and end the other ranks within the timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, load_script, start
from safetensors.torch import load_file

from ledger import Ledger
from ledger.adapters._common import AdapterError

WORKER = SCRIPTS / "adapter_dist_worker.py"
FULL = torch.arange(30, dtype=torch.float32).reshape(10, 3) * 1.5


util = load_script("adapter_util")


class Job:
    """One gloo job: ``world`` worker processes running ``scenario`` against a ledger."""

    def __init__(self, tmp: Path, ledger: Path, scenario: str, world: int) -> None:
        self.out = tmp / f"{scenario}-{world}-{time.monotonic_ns()}"
        self.out.mkdir()
        init = self.out / "rendezvous"
        self.procs = [
            start(WORKER, scenario, rank, world, init, ledger, self.out) for rank in range(world)
        ]

    def wait(self, ranks: list[int] | None = None, timeout: float = 120) -> None:
        for rank in ranks if ranks is not None else range(len(self.procs)):
            self.procs[rank].wait(timeout=timeout)

    def ok(self) -> None:
        self.wait()
        for rank, proc in enumerate(self.procs):
            out = proc.stdout.read() if proc.stdout else ""
            assert proc.returncode == 0, f"rank {rank}: {out}"

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def error(self, rank: int) -> tuple[str, float, str]:
        kind, took, message = (self.out / f"rank{rank}.error").read_text().split("\n", 2)
        return kind, float(took), message

    def image(self, rank: int) -> dict[str, object]:
        return util.load_image(self.out / f"rank{rank}")


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    Ledger.open(tmp_path / "ckpt", create=True, fsync=False).close()
    return tmp_path / "ckpt"


def _committed(tmp: Path, ledger: Path, world: int) -> Job:
    job = Job(tmp, ledger, "commit", world)
    job.ok()
    return job


def test_two_ranks_write_one_commit_and_each_restores_its_own_shard_bitwise(
    tmp_path: Path, ledger_path: Path
) -> None:
    saved = _committed(tmp_path, ledger_path, 2)
    with Ledger.open(ledger_path) as lg:
        commits = list(lg.log())
        assert len(commits) == 1 and commits[0].step == 7 and commits[0].metrics == {"loss": 0.5}
        tree = lg.checkout("HEAD")
        assert tree["world_size"] == 2 and len(tree["ranks"]) == 2
        assert tree["ranks"][1]["state"]["w"]["__dtensor__"] == {
            "global_shape": [10, 3],
            "offsets": [5, 0],
        }
        assert commits[0].stats.tensors > 0
    restored = Job(tmp_path, ledger_path, "restore", 2)
    restored.ok()
    for rank in range(2):
        # DTensor shard, per-rank tensor and value, module, optimizer, generator, RNG draws
        assert restored.image(rank) == saved.image(rank)
    assert saved.image(0) != saved.image(1)


def test_four_ranks_restore_bitwise_and_reshard_onto_two(tmp_path: Path, ledger_path: Path) -> None:
    job = Job(tmp_path, ledger_path, "roundtrip", 4)
    job.ok()
    for rank in range(4):
        assert job.image(rank) == util.load_image(job.out / f"rank{rank}-saved")
    with Ledger.open(ledger_path) as lg:
        assert lg.checkout("HEAD", paths=["world_size"])["world_size"] == 4
    resharded = Job(tmp_path, ledger_path, "reshard", 2)
    resharded.ok()
    _check_resharded(resharded, job.out / "rank0-saved", 2)


def test_two_ranks_reshard_onto_three_with_uneven_shards(tmp_path: Path, ledger_path: Path) -> None:
    saved = _committed(tmp_path, ledger_path, 2)
    resharded = Job(tmp_path, ledger_path, "reshard", 3)
    resharded.ok()
    _check_resharded(resharded, saved.out / "rank0", 3)
    sizes = [
        load_file(str(resharded.out / f"rank{r}.safetensors"))["w_local"].shape[0] for r in range(3)
    ]
    assert sizes == [4, 4, 2]


def _check_resharded(job: Job, saved_rank0: Path, world: int) -> None:
    rank0 = load_file(str(saved_rank0.with_suffix(".safetensors")))
    for rank in range(world):
        got = load_file(str(job.out / f"rank{rank}.safetensors"))
        assert got["w_full"].equal(FULL)  # the DTensor, resharded by DCP's planner
        for key in ("local", "model/weight", "opt/state/0/momentum_buffer"):
            assert got[key].equal(rank0[key]), key  # everything else comes from rank 0's shard
        plain = job.image(rank)["plain"]
        assert isinstance(plain, dict) and plain["count"] == 0


def test_a_rank_killed_mid_commit_leaves_no_commit_and_the_others_fail_fast(
    tmp_path: Path, ledger_path: Path
) -> None:
    job = Job(tmp_path, ledger_path, "kill", 3)
    try:
        job.wait(timeout=60)
    finally:
        job.kill()
    assert job.procs[1].returncode == -9
    for rank in (0, 2):
        kind, took, message = job.error(rank)
        assert kind == "DistributedCommitError" and took < 10 + 5, message
    with Ledger.open(ledger_path) as lg:
        assert lg.branches() == {} and lg.head is None
        assert lg.verify().ok


def test_a_rank_that_hangs_makes_the_others_fail_within_the_timeout(
    tmp_path: Path, ledger_path: Path
) -> None:
    job = Job(tmp_path, ledger_path, "hang", 2)
    try:
        job.wait([0], timeout=60)
    finally:
        job.kill()
    kind, took, message = job.error(0)
    assert kind == "DistributedCommitError" and "timed out after 3s" in message
    assert took < 3 + 10
    with Ledger.open(ledger_path) as lg:
        assert lg.branches() == {}


def test_a_rank_with_an_unstorable_value_fails_every_rank_with_its_reason(
    tmp_path: Path, ledger_path: Path
) -> None:
    job = Job(tmp_path, ledger_path, "fail", 2)
    job.wait()
    kind, _, message = job.error(1)
    assert kind == "UnsupportedValueError" and "state['bad']" in message
    kind, _, message = job.error(0)
    assert kind == "DistributedCommitError"
    assert "no commit was made; rank 1: UnsupportedValueError" in message
    with Ledger.open(ledger_path) as lg:
        assert lg.branches() == {}


def test_without_a_process_group_it_says_what_to_do(lg: Ledger) -> None:
    from ledger.adapters import distributed

    with pytest.raises(AdapterError, match="init_process_group"):
        distributed.commit(lg, {"w": torch.zeros(1)})
