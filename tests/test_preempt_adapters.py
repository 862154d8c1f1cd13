"""Preemption in the framework adapters, in process: Lightning's ``LedgerCheckpoint`` and HF's ``LedgerCallback``.

A signal raised in the middle of a training step (SIGUSR2, whose previous
handler records that it ran) makes the adapter commit at the end of that
step, stop training, and then run the previous handler; ``every_seconds``
commits on an injected clock advanced by the training step itself. The
exact resume after a real preemption is tested in tests/test_preempt.py.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import test_preempt
import torch
from test_adapter_lightning import Tiny, _loader
from test_adapter_lightning import _trainer as lightning_trainer
from test_adapter_transformers import _trainer as hf_trainer
from test_adapter_transformers import quiet  # noqa: F401 - autouse fixture
from transformers import TrainerCallback

from ledger import Ledger
from ledger.adapters.lightning import LedgerCheckpoint
from ledger.adapters.transformers import LedgerCallback

recorded = test_preempt.recorded  # SIGUSR2 recorded by the handler before the ledger's


class SignalledTiny(Tiny):
    """Raises SIGUSR2 in the training step of batch ``at``; advances ``now`` one per step."""

    def __init__(self, at: int | None, now: list[float]) -> None:
        super().__init__()
        self.at, self.now = at, now

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        self.now[0] += 1
        if self.global_step == self.at:
            signal.raise_signal(signal.SIGUSR2)
        return super().training_step(batch, idx)


def test_lightning_commits_the_signalled_step_stops_and_runs_the_previous_handler(
    lg: Ledger, recorded: list[int]
) -> None:
    cb = LedgerCheckpoint(lg, every_n_epochs=None, signals=["SIGUSR2"])
    trainer = lightning_trainer(cb, epochs=3)
    trainer.fit(SignalledTiny(at=5, now=[0.0]), _loader())
    assert [(c.step, c.message) for c in lg.log()] == [(6, "preempted")]
    assert trainer.global_step == 6  # stopped after the step the signal came in
    assert recorded == [signal.SIGUSR2]
    signal.raise_signal(signal.SIGUSR2)
    assert recorded == [signal.SIGUSR2] * 2


def test_lightning_every_seconds_commits_on_the_clock(lg: Ledger) -> None:
    now = [0.0]
    cb = LedgerCheckpoint(
        lg, every_n_epochs=None, signals=None, every_seconds=3, clock=lambda: now[0]
    )
    lightning_trainer(cb, epochs=2).fit(SignalledTiny(at=None, now=now), _loader())
    assert [c.step for c in lg.log()] == [6, 3]  # 8 steps, one clock second each


class RaiseAt(TrainerCallback):
    def __init__(self, step: int | None, now: list[float]) -> None:
        self.step, self.now = step, now

    def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.now[0] += 1
        if state.global_step == self.step:
            signal.raise_signal(signal.SIGUSR2)


def test_hf_trainer_commits_the_signalled_step_stops_and_runs_the_previous_handler(
    lg: Ledger, tmp_path: Path, recorded: list[int]
) -> None:
    cb = LedgerCallback(lg, signals=["SIGUSR2"])
    trainer = hf_trainer(cb, tmp_path / "out", max_steps=8, save_strategy="no")
    trainer.add_callback(RaiseAt(2, [0.0]))
    trainer.train()
    assert [c.step for c in lg.log()] == [3]
    assert trainer.state.global_step == 3
    assert recorded == [signal.SIGUSR2]


def test_hf_trainer_every_seconds_commits_on_the_clock(lg: Ledger, tmp_path: Path) -> None:
    now = [0.0]
    cb = LedgerCallback(lg, signals=None, every_seconds=3, clock=lambda: now[0])
    trainer = hf_trainer(cb, tmp_path / "out", max_steps=7, save_strategy="no")
    trainer.add_callback(RaiseAt(None, now))
    trainer.train()
    assert [c.step for c in lg.log()] == [6, 3]
