"""One process of a 2-process Accelerate (gloo, CPU) job for tests/test_adapter_accelerate.py.

Usage: RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. adapter_accelerate_ddp.py LEDGER OUT_DIR [async]

Trains a DDP model 4 steps, ``save_state``s, draws from the RNG (each process
has its own), then frees the prepared objects, prepares fresh ones,
``load_state``s and draws again. Writes both images per rank. With ``async``
the save is ``blocking=False`` and the weights change before the commit is
awaited: the commit must hold them as they were at the call.
"""

from __future__ import annotations

import copy
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
from ledger.pending import CommitHandle

warnings.filterwarnings("ignore")


def cpu_accelerator(**kwargs: Any) -> Accelerator:
    """One thread, CPU, a stateful loader with a seedable sampler (what exact resume needs)."""
    torch.set_num_threads(1)
    return Accelerator(
        cpu=True,
        dataloader_config=DataLoaderConfiguration(
            use_stateful_dataloader=True, use_seedable_sampler=True
        ),
        **kwargs,
    )


def prepared(
    accelerator: Accelerator, seed: int
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    torch.manual_seed(seed)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(
        TensorDataset(x, x.sum(1, keepdim=True)),
        batch_size=4,
        shuffle=True,
        generator=torch.Generator(),
    )
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return accelerator.prepare(model, opt, loader)


def image(
    accelerator: Accelerator, model: nn.Module, opt: torch.optim.Optimizer, loader: DataLoader
) -> dict[str, object]:
    return {
        "model": accelerator.unwrap_model(model).state_dict(),
        "opt": opt.state_dict(),
        "position": loader.state_dict(),
        "after": torch.rand(3),
    }


def main() -> None:
    where, out = sys.argv[1], Path(sys.argv[2])
    background = sys.argv[3:] == ["async"]
    accelerator = cpu_accelerator()
    rank = accelerator.process_index
    model, opt, loader = prepared(accelerator, seed=0)
    torch.manual_seed(1000 + rank)  # every process has its own RNG stream
    for i, (xb, yb) in enumerate(loader):
        loss = nn.functional.mse_loss(model(xb), yb)
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        if i == 3:
            break
    if background:
        handle = save_state(accelerator, where, step=4, metrics={"loss": loss}, blocking=False)
        assert isinstance(handle, CommitHandle)
        saved = copy.deepcopy(image(accelerator, model, opt, loader))  # as it was at the call
        with torch.no_grad():  # changes made while the commit is written are not in it
            for p in model.parameters():
                p.add_(1.0)
        commit = handle.result()
    else:
        commit = save_state(accelerator, where, step=4, metrics={"loss": loss})
        saved = image(accelerator, model, opt, loader)
    assert commit is not None and commit.step == 4
    save_image(saved, out / f"rank{rank}-saved")

    accelerator.free_memory()
    model, opt, loader = prepared(accelerator, seed=5)
    restored = load_state(accelerator, where)
    assert restored is not None and restored.id == commit.id
    save_image(image(accelerator, model, opt, loader), out / f"rank{rank}")
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
