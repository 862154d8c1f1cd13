"""A hand-written PyTorch loop checkpointed with ``ledger.adapters.torch.Checkpointer``.

Run it twice (or with ``--steps`` larger the second time): the second run
resumes where the first stopped, bit-exactly, because the same two lines both
start and resume a run. It needs no GPU and no downloads and takes a few
seconds on a CPU::

    python examples/torch_checkpointer.py --dir /tmp/ckpt --steps 300
    python examples/torch_checkpointer.py --dir /tmp/ckpt --steps 600
    ledger log /tmp/ckpt
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from torch import nn

from ledger.adapters.torch import Checkpointer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    parser.add_argument("--steps", type=int, default=300, help="train up to this step")
    args = parser.parse_args()
    where = args.dir or tempfile.mkdtemp(prefix="ledger-torch-")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=1000)
    data = torch.Generator().manual_seed(1)  # where the batch stream is: part of the state

    # the two lines: what to keep, how often, which commits survive gc
    ckpt = Checkpointer(
        where,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        state={"data": data},
        every=100,
        keep=3,
        on_best="val_loss",
    )
    start = ckpt.resume()  # 0 on a new ledger, else the step after the last commit
    print(f"ledger {where}: starting at step {start}")

    val_x = torch.randn(256, 8, generator=torch.Generator().manual_seed(2))
    val_y = val_x.sin().sum(1, keepdim=True)
    for step in range(start, args.steps):
        x = torch.randn(64, 8, generator=data)
        loss = nn.functional.mse_loss(model(x), x.sin().sum(1, keepdim=True))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        metrics = {"loss": loss.item()}
        if step % 50 == 0:
            model.eval()
            with torch.no_grad():
                metrics["val_loss"] = nn.functional.mse_loss(model(val_x), val_y).item()
            model.train()
        ckpt.step(step, metrics)  # commits every 100 steps and whenever val_loss improves
    if start < args.steps:
        ckpt.commit(args.steps - 1, {"loss": loss.item()}, message="end of run")

    lg = ckpt.ledger
    best = lg.get("best")
    print(f"best: step {best.step}, val_loss {best.metrics['val_loss']:.4f} ({best.id[:12]})")
    for c in lg.log():
        print(
            f"  {c.id[:12]} step {c.step:>4}  "
            + "  ".join(f"{k}={v:.4f}" for k, v in c.metrics.items())
        )
    report = lg.gc(grace=0)
    print(f"gc: {len(report.expired)} commits expired by KeepLast(3) + KeepBest(val_loss)")
    lg.close()


if __name__ == "__main__":
    main()
