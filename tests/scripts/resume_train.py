"""A small, fully seeded training loop for tests/test_resume.py, and its resume child.

The loop has everything that makes exact resume hard: dropout (global torch
RNG), AdamW, a warm-up + cosine LR schedule (SequentialLR of LinearLR and
CosineAnnealingLR) and a shuffled DataLoader whose sampler draws from its own
``torch.Generator``. The data position committed with the state is the epoch,
the batch index inside it and the sampler generator's state at the epoch's
start; resuming replays that epoch's shuffle and skips the batches done.

Usage as a child process::

    python resume_train.py LEDGER_DIR REV STEPS BRANCH

opens the ledger, builds fresh objects (from a different seed, so everything
must come from the ledger), restores ``REV`` into them, trains ``STEPS`` more
steps and commits the result to ``BRANCH``; it prints the new commit id.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.utils.data import DataLoader, TensorDataset

SAMPLES = 40
BATCH = 6
BATCHES_PER_EPOCH = -(-SAMPLES // BATCH)  # 7: six full batches and one of 4
WARMUP = 4
TOTAL = 40  # the cosine's horizon in steps


def make_dataset() -> TensorDataset:
    """The same synthetic classification data in every process."""
    gen = torch.Generator().manual_seed(2024)
    x = torch.randn(SAMPLES, 12, generator=gen)
    y = torch.randint(0, 3, (SAMPLES,), generator=gen)
    return TensorDataset(x, y)


class Trainer:
    """Model, optimizer, schedule, data loader and the loop's position."""

    def __init__(self, seed: int) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(
            torch.nn.Linear(12, 32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(32, 32),
            torch.nn.ReLU(),
            torch.nn.Dropout(0.3),
            torch.nn.Linear(32, 3),
        )
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=3e-3, weight_decay=0.05)
        self.sched = SequentialLR(
            self.optim,
            [
                LinearLR(self.optim, start_factor=0.1, total_iters=WARMUP),
                CosineAnnealingLR(self.optim, T_max=TOTAL - WARMUP),
            ],
            milestones=[WARMUP],
        )
        self.sampler_gen = torch.Generator().manual_seed(seed + 1)
        self.loader = DataLoader(
            make_dataset(), batch_size=BATCH, shuffle=True, generator=self.sampler_gen
        )
        self.data: dict[str, Any] = {
            "epoch": 0,
            "batch": 0,
            "epoch_start_rng": self.sampler_gen.get_state(),
        }
        self.step = 0
        self.losses: list[float] = []
        self._it: Iterator[Any] | None = None

    def state(self) -> dict[str, Any]:
        """What a commit stores (and what ``restore`` loads into)."""
        return {
            "model": self.model,
            "optim": self.optim,
            "sched": self.sched,
            "data": self.data,
            "step": self.step,
            "losses": self.losses,
        }

    def after_restore(self, state: dict[str, Any]) -> None:
        """Pick up the plain values ``restore`` assigned back into ``state``."""
        self.data = state["data"]
        self.step = state["step"]
        self.losses = state["losses"]
        self._it = None  # replay the shuffle of the current epoch

    def _next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._it is None:
                self.sampler_gen.set_state(self.data["epoch_start_rng"])
                self._it = iter(self.loader)
                for _ in range(self.data["batch"]):
                    next(self._it)
            try:
                x, y = next(self._it)
            except StopIteration:
                self.data["epoch"] += 1
                self.data["batch"] = 0
                self.data["epoch_start_rng"] = self.sampler_gen.get_state()
                self._it = None
                continue
            self.data["batch"] += 1
            return x, y

    def train(self, steps: int) -> None:
        """``steps`` optimizer steps."""
        self.model.train()
        for _ in range(steps):
            x, y = self._next_batch()
            loss = torch.nn.functional.cross_entropy(self.model(x), y)
            self.optim.zero_grad()
            loss.backward()
            self.optim.step()
            self.sched.step()
            self.step += 1
            self.losses.append(loss.item())


def main(argv: list[str]) -> None:
    from ledger import Ledger

    ledger_dir, rev, steps, branch = argv
    torch.set_num_threads(1)
    with Ledger.open(ledger_dir, fsync=False) as lg:
        trainer = Trainer(seed=777)  # deliberately not the seed of the committed run
        state = trainer.state()
        lg.restore(state, rev)
        trainer.after_restore(state)
        trainer.train(int(steps))
        c = lg.commit(
            trainer.state(), branch=branch, step=trainer.step, epoch=trainer.data["epoch"]
        )
    print(c.id, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
