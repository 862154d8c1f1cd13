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
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from helpers import SCRIPTS, bits, load_script

from ledger import Ledger
from ledger.state.rng import RNG_KEY, python_state

SCRIPT = SCRIPTS / "resume_train.py"
rt = load_script("resume_train")


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one thread, like the child process, so float sums add up in one order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def _adamw(steps: int, seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(torch.randn(4, 6)).square().sum().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _state_storages(opt: torch.optim.Optimizer) -> dict[tuple[int, str], int]:
    return {
        (i, name): t.untyped_storage().data_ptr()
        for i, p in enumerate(opt.param_groups[0]["params"])
        for name, t in opt.state[p].items()
    }


def _commit_adamw(lg: Ledger) -> tuple[str, Any]:
    """Commit a 3-step AdamW run; return the commit id and the optimizer's state image."""
    model, opt = _adamw(3)
    return lg.commit({"model": model, "optim": opt}, rng=False).id, bits(opt.state_dict())


def test_restore_reads_optimizer_state_into_the_live_state_tensors(lg: Ledger) -> None:
    """A stepped optimizer keeps its state tensors: the stored moments are read into them."""
    model, opt = _adamw(3)
    c = lg.commit({"model": model, "optim": opt}, rng=False)
    expected = bits(opt.state_dict())
    before = _state_storages(opt)
    _, other = _adamw(5, seed=1)  # different values, same shapes
    opt.load_state_dict(other.state_dict())
    opt.param_groups[0]["lr"] = 0.5
    assert bits(opt.state_dict()) != expected
    moved = _state_storages(opt)
    lg.restore({"model": model, "optim": opt}, c.id, rng=False)
    assert bits(opt.state_dict()) == expected  # moments, steps and lr, bit for bit
    assert _state_storages(opt) == moved != before  # the live tensors, filled in place


def test_restore_into_an_optimizer_with_a_load_hook_or_other_dtype_gets_new_tensors(
    lg: Ledger,
) -> None:
    """Where torch's load would not keep the live tensors, the restore builds new ones, exactly."""
    cid, expected = _commit_adamw(lg)
    hooked_model, hooked = _adamw(2, seed=1)
    seen: list[int] = []
    hooked.register_load_state_dict_pre_hook(lambda o, sd: seen.append(len(sd["state"])))
    hooked_ptrs = _state_storages(hooked)
    lg.restore({"model": hooked_model, "optim": hooked}, cid, rng=False)
    assert seen == [2 * 2]  # four parameters, the hook ran once
    assert bits(hooked.state_dict()) == expected
    assert set(_state_storages(hooked).values()).isdisjoint(hooked_ptrs.values())

    odd_model, odd = _adamw(2, seed=2)
    for st in odd.state.values():  # moments held in float64: not the stored dtype
        st["exp_avg"] = st["exp_avg"].double()
    lg.restore({"model": odd_model, "optim": odd}, cid, rng=False)
    assert bits(odd.state_dict()) == expected


def test_restore_into_an_optimizer_sharing_one_tensor_between_entries_is_exact(
    lg: Ledger,
) -> None:
    """Two state entries on one live tensor: only one may be read in place, the other is new."""
    cid, expected = _commit_adamw(lg)
    live_model, live = _adamw(2, seed=1)
    first = next(iter(live.state.values()))
    first["exp_avg_sq"] = first["exp_avg"]  # one storage under two names
    lg.restore({"model": live_model, "optim": live}, cid, rng=False)
    assert bits(live.state_dict()) == expected


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


def test_python_rng_state_is_one_array_and_the_older_tuple_of_ints_still_restores(
    lg: Ledger,
) -> None:
    random.seed(5)
    random.random()
    c = lg.commit({"old": random.getstate()})  # what commits held before: 625 ints
    stored = lg.checkout(c.id)
    _, words, _ = stored[RNG_KEY]["python"]
    assert isinstance(words, np.ndarray) and words.dtype == np.uint32 and words.shape == (625,)
    expected = [random.random() for _ in range(3)]
    for form in (stored["old"], stored[RNG_KEY]["python"]):
        random.seed(99)
        random.setstate(python_state(form))
        assert [random.random() for _ in range(3)] == expected
