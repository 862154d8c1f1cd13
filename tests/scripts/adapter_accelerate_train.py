"""Train with Accelerate and ``ledger.adapters.accelerate``; resume from the ledger if it has commits.

Usage: adapter_accelerate_train.py LEDGER_DIR TOTAL_STEPS IMAGE_PATH [STOP_AT]

Dropout, a shuffled stateful loader with Accelerate's seedable sampler
(resumed mid-epoch), gradient
accumulation (the accelerator's step counter), AdamW, StepLR and an object
registered with ``register_for_checkpointing`` make every part of the
resumed state matter. ``STOP_AT`` commits after that many batches and exits
(the "crash"). At the end it writes an image of the whole state and the
losses seen after the stop point for the test to compare bitwise.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from adapter_util import save_image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger.adapters.accelerate import load_state, save_state

warnings.filterwarnings("ignore")


class Average:
    """A running average of the weights: user state registered for checkpointing."""

    def __init__(self, model: nn.Module) -> None:
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.count = 0

    def update(self, model: nn.Module) -> None:
        self.count += 1
        for k, v in model.state_dict().items():
            self.avg[k] += (v.detach() - self.avg[k]) / self.count

    def state_dict(self) -> dict[str, Any]:
        return {"avg": self.avg, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.avg = {k: v.clone() for k, v in state["avg"].items()}
        self.count = state["count"]


def main() -> None:
    where, total, image = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    stop_at = int(sys.argv[4]) if len(sys.argv) > 4 else None
    torch.set_num_threads(1)
    torch.manual_seed(0)
    accelerator = Accelerator(
        cpu=True,
        gradient_accumulation_steps=2,
        dataloader_config=DataLoaderConfiguration(
            use_stateful_dataloader=True, use_seedable_sampler=True
        ),
    )
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(1))
    # Its own generator: creating an iterator then draws from it, not from the global RNG
    # (a resumed run creates one mid-epoch where the original run did not).
    loader = DataLoader(
        TensorDataset(x, x.sum(1, keepdim=True)),
        batch_size=4,
        shuffle=True,
        generator=torch.Generator().manual_seed(2),
    )
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    model, opt, sched, loader = accelerator.prepare(model, opt, sched, loader)
    average = Average(model)
    accelerator.register_for_checkpointing(average)

    commit = load_state(accelerator, where)
    done = 0 if commit is None else int(commit.step or 0)
    losses: dict[str, float] = {}
    while done < total:
        for xb, yb in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
            average.update(model)
            done += 1
            losses[str(done)] = loss.item()
            if done == stop_at:
                save_state(accelerator, where, step=done, metrics={"loss": loss})
                return
            if done == total:
                break
    save_image(
        {
            "params": model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "average": average.state_dict(),
            "accelerator_step": accelerator.step,
            "losses": {k: v for k, v in losses.items() if int(k) > 14},
        },
        image,
    )


if __name__ == "__main__":
    main()
