"""Exact resume: training N steps, committing, and resuming in a new process is bit-exact.

Run A trains 2N steps straight. Run B trains N steps, commits, and a *new
process* (tests/scripts/resume_train.py) builds fresh objects from another
seed, restores the commit and trains N more. Parameters, optimizer state, LR
schedule, data position and the per-step losses of both runs are bitwise
equal. Control runs that skip the RNG or the data position diverge, which
shows the comparison is sensitive enough to catch a broken resume.
"""

from __future__ import annotations

import random
import struct
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SCRIPTS, load_script

from ledger import Ledger
from ledger.state.rng import RNG_KEY

SCRIPT = SCRIPTS / "resume_train.py"
rt = load_script("resume_train")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one thread, like the child process, so float sums add up in one order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def bits(value: Any) -> Any:
    """A comparable image of a state: tensors as (dtype, shape, bytes), floats as bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return (
            "tensor",
            str(t.dtype),
            tuple(t.shape),
            t.reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [bits(v) for v in value])
    return value


def live_image(trainer: Any) -> dict[str, Any]:
    """What a trainer's state looks like after a checkout (stateful objects as state dicts)."""
    return bits(
        {
            "model": dict(trainer.model.state_dict()),
            "optim": trainer.optim.state_dict(),
            "sched": trainer.sched.state_dict(),
            "data": trainer.data,
            "step": trainer.step,
            "losses": trainer.losses,
        }
    )


def committed_image(lg: Ledger, rev: str) -> dict[str, Any]:
    tree = lg.checkout(rev)
    tree.pop("__rng__")
    return bits(tree)


def straight_run(steps: int) -> Any:
    trainer = rt.Trainer(seed=0)
    trainer.train(steps)
    return trainer


def resume_in_new_process(lg: Ledger, python: str, rev: str, steps: int, branch: str) -> str:
    done = subprocess.run(
        [python, str(SCRIPT), str(lg.root), rev, str(steps), branch],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


@pytest.mark.parametrize(
    "n",
    [
        # Commit mid-epoch (epoch 1, batch 3 of 7); the resumed half crosses into epoch 2.
        10,
        # Commit on the last batch of an epoch: the resumed run starts by rolling over.
        rt.BATCHES_PER_EPOCH,
    ],
)
def test_resuming_in_a_new_process_matches_an_uninterrupted_run_bitwise(
    lg: Ledger, python: str, n: int
) -> None:
    a = straight_run(2 * n)

    b = rt.Trainer(seed=0)
    b.train(n)
    half = lg.commit(b.state(), step=b.step, epoch=b.data["epoch"])
    assert half.step == n
    if n == 10:
        assert (b.data["epoch"], b.data["batch"]) == (1, 3)
    else:
        assert (b.data["epoch"], b.data["batch"]) == (0, rt.BATCHES_PER_EPOCH)

    resumed = resume_in_new_process(lg, python, half.id, n, "resumed")

    assert lg.resolve("resumed") == resumed
    assert lg.get("resumed").parents == [half.id]
    final = committed_image(lg, "resumed")
    expected = live_image(a)
    assert final["step"] == 2 * n
    assert final["data"]["epoch"] == expected["data"]["epoch"] >= 1
    assert final["losses"] == expected["losses"]
    assert final["model"] == expected["model"]
    assert final["optim"] == expected["optim"]
    assert final["sched"] == expected["sched"]
    assert final["data"] == expected["data"]
    assert final == expected
    # The second half really trained: the weights moved away from the commit at step N.
    assert committed_image(lg, half.id)["model"] != final["model"]


@pytest.mark.parametrize("sabotage", ["no_rng", "no_data_position", "fresh_optimizer"])
def test_a_resume_missing_any_part_of_the_state_diverges(lg: Ledger, sabotage: str) -> None:
    """Controls: each part the ledger restores matters, so the exact test above can fail."""
    n = 10
    a = straight_run(2 * n)
    b = rt.Trainer(seed=0)
    b.train(n)
    lg.commit(b.state())

    c = rt.Trainer(seed=777)
    state = c.state()
    if sabotage == "fresh_optimizer":
        del state["optim"]
    lg.restore(state, strict=sabotage != "fresh_optimizer", rng=sabotage != "no_rng")
    c.after_restore(state)
    if sabotage == "no_data_position":
        c.data["batch"] = 0
    c.train(n)

    got, expected = live_image(c), live_image(a)
    assert got["step"] == expected["step"]
    assert got["model"] != expected["model"]
    assert got["losses"][1][:n] == expected["losses"][1][:n]  # the restored history is exact
    assert got["losses"][1][n:] != expected["losses"][1][n:]


def test_restore_in_the_same_process_after_more_training_rewinds_exactly(lg: Ledger) -> None:
    """Restoring into the very objects that trained on rewinds them: retraining repeats bitwise."""
    t = rt.Trainer(seed=0)
    t.train(5)
    c = lg.commit(t.state())
    t.train(6)
    after_11 = live_image(t)
    state = t.state()
    assert lg.restore(state, c.id).id == c.id
    t.after_restore(state)
    assert t.step == 5 and len(t.losses) == 5
    t.train(6)
    assert live_image(t) == after_11


def _draw() -> tuple[float, float, bytes]:
    return (
        random.random(),
        float(np.random.rand()),
        torch.rand(4).numpy().tobytes(),
    )


def test_restore_sets_back_the_global_rngs_of_python_numpy_and_torch(lg: Ledger) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn(3)  # leave numpy holding a cached gaussian
    c = lg.commit({"x": 1})
    assert set(lg.checkout(c.id)[RNG_KEY]) >= {"python", "numpy", "torch"}
    expected = _draw()
    _draw()

    lg.restore({"x": 0}, c.id, rng=False)  # rng=False leaves the generators alone
    assert _draw() != expected
    lg.restore({"x": 0}, c.id)
    assert _draw() == expected
