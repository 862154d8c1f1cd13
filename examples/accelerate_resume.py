"""Accelerate with ``ledger.adapters.accelerate``: ``save_state``/``load_state`` into a ledger.

A loop with gradient accumulation, a stateful shuffled loader and an object
registered for checkpointing commits every 10 batches; it "crashes" after 25,
and a second run of the same loop resumes mid-epoch from the ledger. CPU
only, a few seconds (``accelerate launch`` works the same way)::

    python examples/accelerate_resume.py [--dir /tmp/ckpt]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import Ledger
from ledger.adapters.accelerate import load_state, save_state


class Seen:
    """User state registered with the accelerator: how many samples were trained on."""

    def __init__(self) -> None:
        self.samples = 0

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples = state["samples"]


def run(where: str, total: int, crash_at: int | None) -> None:
    torch.manual_seed(0)
    accelerator = Accelerator(
        cpu=True,
        gradient_accumulation_steps=2,
        # a stateful loader remembers the position inside the epoch; a seedable
        # sampler makes each epoch's order a function of (seed, epoch)
        dataloader_config=DataLoaderConfiguration(
            use_stateful_dataloader=True, use_seedable_sampler=True
        ),
    )
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(x, x.sin().sum(1, keepdim=True))
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator())
    model = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    seen = Seen()
    accelerator.register_for_checkpointing(seen)

    commit = load_state(accelerator, where)  # None on a new ledger
    done = 0 if commit is None else int(commit.step or 0)
    accelerator.print(f"starting at batch {done} ({seen.samples} samples seen)")
    while done < total:
        for xb, yb in loader:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(xb), yb)
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
            seen.samples += len(xb)
            done += 1
            if done % 10 == 0 or done == crash_at:  # after an optimizer step (accumulation 2)
                save_state(accelerator, where, step=done, metrics={"loss": loss.item()})
            if done == crash_at:
                accelerator.print(f"crash after batch {done}")
                return
            if done == total:
                break


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    args = parser.parse_args()
    where = args.dir or tempfile.mkdtemp(prefix="ledger-accelerate-")
    run(where, total=40, crash_at=26)
    run(where, total=40, crash_at=None)
    with Ledger.open(where) as lg:
        for c in lg.log():
            print(f"{c.id[:12]}  batch {c.step:>2}  loss {c.metrics['loss']:.4f}")


if __name__ == "__main__":
    main()
