"""``ledger.adapters.accelerate``: save_state/load_state of everything an Accelerator tracks.

A two-process gloo job (tests/scripts/adapter_accelerate_ddp.py) commits
once, and each process gets its own RNG back. The exact-resume test
(tests/scripts/adapter_accelerate_train.py) trains 30
batches straight and 14 + resume in a new process + 16: dropout, a shuffled
stateful loader resumed mid-epoch, gradient accumulation, AdamW, StepLR and
an object registered for checkpointing; parameters, optimizer, scheduler,
the registered object, the accelerator's step and the losses after the
resume point are bitwise equal.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from helpers import SCRIPTS, finish, load_script, start
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import Ledger
from ledger.adapters._common import MissingExtraError, ResumeError
from ledger.adapters.accelerate import load_state, save_state
from ledger.errors import RevisionNotFoundError, StateMismatchError

TRAIN = SCRIPTS / "adapter_accelerate_train.py"


util = load_script("adapter_util")


def _train(tmp: Path, run: str, *argv: str) -> subprocess.Popen[str]:
    return start(TRAIN, tmp / run, *argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 batches straight (ledger a); 14, then a new process resuming to 30 (ledger b)."""

    def build(tmp: Path) -> None:
        straight = _train(tmp, "a", "30", str(tmp / "a"))
        first = _train(tmp, "b", "30", str(tmp / "b-half"), "14")
        finish(straight)
        finish(first)
        finish(_train(tmp, "b", "30", str(tmp / "b")))

    tmp = util.shared_dir(tmp_path_factory, "accelerate", build)
    return tmp


def test_resume_in_a_new_process_mid_epoch_equals_a_straight_run(runs: Path) -> None:
    straight, resumed = util.load_image(runs / "a"), util.load_image(runs / "b")
    assert resumed["tensors"] == straight["tensors"]
    assert resumed["plain"] == straight["plain"]
    assert len(straight["plain"]) > 30  # losses of batches 15..30 are part of the comparison


def test_the_commit_holds_every_tracked_object_and_the_data_position(runs: Path) -> None:
    with Ledger.open(runs / "b") as lg:
        commits = list(lg.log())
        assert len(commits) == 1 and commits[0].step == 14 and "loss" in commits[0].metrics
        tree = lg.checkout(commits[0].id)
        assert sorted(tree) == [
            "__rng__",
            "accelerator",
            "custom",
            "dataloaders",
            "models",
            "optimizers",
            "schedulers",
        ]
        position = tree["dataloaders"][0]
        assert position["iteration"] == 1  # the second epoch ...
        assert position["stateful"]["_num_yielded"] == 4  # ... 4 batches in
        assert position["sampler"] == {"epoch": 1, "initial_seed": 0}
        assert tree["custom"][0]["count"] == 14


# -- in-process --------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]


def _prepared(seed: int) -> tuple[Accelerator, nn.Module, torch.optim.Optimizer, Counter]:
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=2, shuffle=True)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    return accelerator, model, opt, counter


def test_registered_objects_models_and_grad_scaler_round_trip(lg: Ledger) -> None:
    accelerator, model, opt, counter = _prepared(0)
    counter.n = 7
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=3)
    saved_scaler = accelerator.scaler.state_dict()
    commit = save_state(accelerator, lg, step=5, metrics={"loss": torch.tensor(0.25)})
    assert commit is not None and commit.metrics == {"loss": 0.25}

    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # momentum buffers to carry over
    commit = save_state(accelerator, lg, step=6)
    again, model2, opt2, counter2 = _prepared(1)
    again.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    restored = load_state(again, lg)
    assert restored is not None and restored.step == 6
    assert counter2.n == 7
    assert util.bits(model2.state_dict()) == util.bits(model.state_dict())
    assert util.bits(opt2.state_dict()) == util.bits(opt.state_dict())
    assert again.scaler.state_dict() == saved_scaler


def test_load_state_is_none_on_an_empty_ledger_and_an_error_for_unknown_names(lg: Ledger) -> None:
    accelerator, *_ = _prepared(0)
    assert load_state(accelerator, lg) is None
    save_state(accelerator, lg)
    with pytest.raises(RevisionNotFoundError):
        load_state(accelerator, lg, "nope")


def test_a_commit_not_made_by_save_state_is_refused(lg: Ledger) -> None:
    lg.commit({"w": torch.zeros(1)})
    accelerator, *_ = _prepared(0)
    with pytest.raises(ResumeError, match="not made by"):
        load_state(accelerator, lg)


def test_different_registered_objects_change_nothing(lg: Ledger) -> None:
    accelerator, *_ = _prepared(0)
    save_state(accelerator, lg)
    other, model, _, _ = _prepared(1)
    other.register_for_checkpointing(Counter())  # one more than was committed
    before = util.bits(model.state_dict())
    with pytest.raises(StateMismatchError):
        load_state(other, lg)
    assert util.bits(model.state_dict()) == before


def test_saving_mid_accumulation_warns(lg: Ledger) -> None:
    # Accelerate keeps its state in process-wide singletons; a Trainer test run before this
    # one in the same process leaves gradient_accumulation_steps=1 behind, and then the
    # accumulate() block below would sync at once and nothing would be mid-accumulation.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = accelerator.prepare(nn.Linear(2, 1))
    with accelerator.accumulate(model):
        model(torch.ones(1, 2)).sum().backward()
    with pytest.warns(UserWarning, match="gradient accumulation"):
        save_state(accelerator, lg)


def test_importing_without_accelerate_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['accelerate'] = None\n"
        "try:\n    import ledger.adapters.accelerate\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert MissingExtraError.__name__ in out.stdout
    assert "pip install 'training-ledger[accelerate]'" in out.stdout


def test_two_processes_commit_once_and_each_gets_its_own_rng_back(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        start(
            SCRIPTS / "adapter_accelerate_ddp.py",
            tmp_path / "lg",
            tmp_path,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
        for rank in range(2)
    ]
    for proc in procs:
        finish(proc)
    saved = [util.load_image(tmp_path / f"rank{r}-saved") for r in range(2)]
    assert saved[0] != saved[1]  # each process's own RNG stream
    for rank in range(2):
        assert util.load_image(tmp_path / f"rank{rank}") == saved[rank]
    with Ledger.open(tmp_path / "lg") as lg:
        assert len(list(lg.log())) == 1
        assert lg.checkout("HEAD", paths=["world_size"])["world_size"] == 2
