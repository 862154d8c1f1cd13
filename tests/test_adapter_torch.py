"""``ledger.adapters.torch.Checkpointer``: schedule, retention, the best branch, exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import load_script
from torch import nn

from ledger import Ledger
from ledger.adapters._common import AdapterError, ResumeError
from ledger.adapters.torch import Checkpointer
from ledger.errors import CommitExpiredError, RevisionNotFoundError, StateMismatchError
from ledger.retention import KeepBest, KeepLast

util = load_script("adapter_util")


class Run:
    """A tiny regression run: dropout (global RNG), AdamW, StepLR, batches drawn from a generator."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 1))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-2)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, 4, 0.5)
        self.data = torch.Generator().manual_seed(seed + 1)

    def checkpointer(self, lg: Ledger, **kw: Any) -> Checkpointer:
        return Checkpointer(
            lg,
            model=self.model,
            optimizer=self.opt,
            scheduler=self.sched,
            state={"data": self.data},
            **kw,
        )

    def step(self) -> float:
        x = torch.randn(8, 4, generator=self.data)
        loss = nn.functional.mse_loss(self.model(x), x.sum(1, keepdim=True))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss.item()

    def image(self) -> Any:
        return util.bits(
            {
                "model": self.model.state_dict(),
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
            }
        )


def test_commits_every_n_steps_with_step_metrics_and_params(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=3, params={"lr": 1e-2, "act": nn.ReLU()})
    made = [ckpt.step(step, {"loss": torch.tensor(run.step())}) for step in range(10)]
    assert [c.step for c in made if c is not None] == [0, 3, 6, 9]
    assert [c.step for c in lg.log()] == [9, 6, 3, 0]
    head = lg.head
    assert head is not None and isinstance(head.metrics["loss"], float)
    assert head.params == {"lr": 1e-2, "act": "ReLU()"}
    assert sorted(lg.checkout()) == ["__rng__", "data", "model", "optimizer", "scheduler"]


def test_resume_returns_the_next_step_and_continues_bit_exactly(lg: Ledger) -> None:
    straight = Run(0)
    for _ in range(20):
        straight.step()

    first = Run(0)
    ckpt = first.checkpointer(lg, every=5)
    for step in range(11):
        first.step()
        ckpt.step(step)
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG it starts with

    second = Run(7)  # fresh objects, different weights and data generator
    ckpt = second.checkpointer(lg, every=5)
    start = ckpt.resume()
    assert start == 11
    for step in range(start, 20):
        second.step()
        ckpt.step(step)
    assert second.image() == straight.image()
    assert second.data.get_state().equal(straight.data.get_state())


def test_resume_on_an_empty_ledger_starts_at_zero(lg: Ledger) -> None:
    assert Run(0).checkpointer(lg).resume() == 0


def test_resume_of_an_unknown_revision_is_an_error(lg: Ledger) -> None:
    ckpt = Run(0).checkpointer(lg)
    ckpt.step(0)
    with pytest.raises(RevisionNotFoundError):
        ckpt.resume("nope")


def test_resume_into_a_different_model_changes_nothing(lg: Ledger) -> None:
    Run(0).checkpointer(lg).step(0)
    other = Checkpointer(lg, model=nn.Linear(3, 3))
    before = util.bits(other.state["model"].state_dict())
    with pytest.raises(StateMismatchError):
        other.resume()
    assert util.bits(other.state["model"].state_dict()) == before


def test_resume_of_a_commit_without_step_is_a_resume_error(lg: Ledger) -> None:
    run = Run(0)
    lg.commit({"model": run.model})
    with pytest.raises(ResumeError, match="no step"):
        Checkpointer(lg, model=run.model).resume()


def test_keep_becomes_keep_last_and_gc_drops_older_states(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=1, keep=2)
    for step in range(5):
        run.step()
        ckpt.step(step)
    assert lg.retention() == [KeepLast(2)]
    lg.gc(grace=0)
    lg.checkout("HEAD")
    lg.checkout("HEAD~1")
    with pytest.raises(CommitExpiredError):
        lg.checkout("HEAD~2")


def test_on_best_moves_the_best_branch_commits_off_schedule_and_keeps_best(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=100, keep=1, on_best="val", mode="min")
    vals = [5.0, 3.0, 4.0, 2.0, 6.0, 7.0]
    made = [ckpt.step(step, {"val": v}) for step, v in enumerate(vals)]
    # step 0 is on schedule; steps 1 and 3 improve; the rest neither
    assert [c.step for c in made if c is not None] == [0, 1, 3]
    assert lg.get("best").step == 3 and lg.get("best").metrics["val"] == 2.0
    assert lg.retention() == [KeepLast(1), KeepBest("val", k=1, mode="min")]
    ckpt.commit(10, {"val": 9.0})
    lg.gc(grace=0)
    assert lg.checkout("best")["model"].keys() == run.model.state_dict().keys()


def test_best_so_far_survives_a_resume(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=1, on_best="val", mode="max")
    ckpt.step(0, {"val": 0.9})
    ckpt.step(1, {"val": 0.5})
    again = Run(0).checkpointer(lg, every=1, on_best="val", mode="max")
    assert again.resume() == 2
    again.step(2, {"val": 0.7})
    assert lg.get("best").step == 0


def test_takes_a_path_and_creates_the_ledger(tmp_path: Path) -> None:
    ckpt = Run(0).checkpointer(tmp_path / "new", every=1)  # type: ignore[arg-type]
    ckpt.step(0)
    with Ledger.open(tmp_path / "new") as lg:
        assert lg.head is not None and lg.head.step == 0
    ckpt.ledger.close()


def test_background_commits_land_in_order(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=1, blocking=False, on_best="loss")
    for step in range(3):
        ckpt.step(step, {"loss": 1.0 / (step + 1)})
    lg.wait()
    assert [c.step for c in lg.log()] == [2, 1, 0]
    assert lg.get("best").step == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every": 0}, "every=0"),
        ({"mode": "up"}, "mode='up'"),
        ({"gc_every": -1}, "gc_every=-1"),
        ({"state": {"model": 1}}, "clashes"),
    ],
)
def test_bad_arguments_are_adapter_errors(lg: Ledger, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        Checkpointer(lg, model=nn.Linear(1, 1), **kwargs)


def test_nothing_to_checkpoint_is_an_adapter_error(lg: Ledger) -> None:
    with pytest.raises(AdapterError, match="nothing to checkpoint"):
        Checkpointer(lg)


# -- plain values in state=, and lineage ------------------------------------------------------


def test_plain_values_are_committed_current_and_restored_into_the_users_mapping(
    lg: Ledger,
) -> None:
    run = Run(0)
    counters: dict[str, Any] = {"epoch": 0, "samples": 0, "history": [], "data": run.data}
    ckpt = Checkpointer(lg, model=run.model, optimizer=run.opt, state=counters, every=2)
    for step in range(6):
        run.step()
        counters["samples"] += 8
        counters["history"] = [*counters["history"], step]
        if step % 3 == 2:
            counters["epoch"] += 1
        ckpt.step(step)
    committed = {c.step: lg.checkout(c.id) for c in lg.log()}
    assert {s: (t["epoch"], t["samples"]) for s, t in committed.items()} == {
        4: (1, 40),
        2: (1, 24),
        0: (0, 8),
    }
    assert committed[4]["history"] == [0, 1, 2, 3, 4]

    fresh = Run(3)
    mine: dict[str, Any] = {"epoch": -1, "samples": -1, "history": ["x"], "data": fresh.data}
    again = Checkpointer(lg, model=fresh.model, optimizer=fresh.opt, state=mine, every=2)
    assert again.resume("main~1") == 3
    assert mine["epoch"] == 1 and mine["samples"] == 24 and mine["history"] == [0, 1, 2]
    assert mine["data"] is fresh.data and fresh.data.get_state().equal(
        committed[2]["data"].get_state()
    )
    # A key added to the mapping later is committed too.
    mine["lr_scale"] = 0.5
    made = again.commit(3)
    assert lg.checkout(made.id)["lr_scale"] == 0.5  # type: ignore[union-attr]


def test_resume_of_an_older_commit_continues_from_it_and_keeps_the_old_tip(lg: Ledger) -> None:
    run = Run(0)
    ckpt = run.checkpointer(lg, every=1, on_best="loss")
    ids = []
    for step, loss in enumerate([3.0, 1.0, 2.0, 4.0]):
        run.step()
        made = ckpt.step(step, {"loss": loss})
        assert made is not None
        ids.append(made.id)  # type: ignore[union-attr]
    assert lg.branches()["best"] == ids[1]
    again = Run(1).checkpointer(Ledger.open(lg.root, fsync=False), every=1, on_best="loss")
    assert again.resume("best") == 2
    made = again.step(2, {"loss": 5.0})
    assert made is not None and made.parents == [ids[1]]  # type: ignore[union-attr]
    branches = again.ledger.branches()
    assert branches["main"] == made.id  # type: ignore[union-attr]
    assert branches[f"orig/main/{ids[3][:12]}"] == ids[3], "the old tip became unreachable"
    again.ledger.close()


def test_a_clash_added_to_state_later_is_an_adapter_error(lg: Ledger) -> None:
    run = Run(0)
    extra: dict[str, Any] = {"n": 1}
    ckpt = Checkpointer(lg, model=run.model, state=extra)
    extra["model"] = 2
    with pytest.raises(AdapterError, match="clashes with the model= argument"):
        ckpt.commit(0)
