"""A tiny seeded training loop that a test preempts with a signal, for tests/test_preempt.py.

Usage::

    preempt_train.py LEDGER TOTAL PAUSE_AT SIGNALS OUT [RANK WORLD INIT_FILE]

Trains steps ``resume() .. TOTAL-1`` (dropout, AdamW, a shuffled epoch of
``BATCHES`` batches drawn from a generator that is part of the state) with a
``Checkpointer(every=100, signals=SIGNALS, blocking=False)`` (so the first
commit installs ``ledger.pending``'s SIGTERM drain over the watch's handler). After each training step it
prints ``step N``; at step ``PAUSE_AT`` it then waits for a line on stdin (the
test sends the signal meanwhile, then the line), and only then calls
``ckpt.step``, so the signal lands mid-epoch between a step and the next safe
point. With ``RANK WORLD INIT_FILE`` it is one rank of a gloo job
(``sync_ranks=True``, ledger ``LEDGER/rank<R>``). A rank that stops because
another rank got the signal prints ``preempted N`` and exits 0; a run that
finishes writes its final weights to ``OUT`` (adapter_util image) and prints ``done``.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import torch
from adapter_util import save_image

from ledger.adapters.torch import Checkpointer

BATCHES = 5  # batches per epoch
BATCH = 4


def main() -> None:
    where, total, pause_at = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    signals, out = [s for s in sys.argv[4].split(",") if s], Path(sys.argv[5])
    torch.set_num_threads(1)
    sync = len(sys.argv) > 6
    if sync:
        import torch.distributed as dist

        rank, world = int(sys.argv[6]), int(sys.argv[7])
        dist.init_process_group(
            "gloo",
            init_method=f"file://{sys.argv[8]}",
            rank=rank,
            world_size=world,
            timeout=dt.timedelta(seconds=60),
        )
        where = where / f"rank{rank}"
    torch.manual_seed(7)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 2)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data_gen = torch.Generator().manual_seed(11)
    x = torch.randn(BATCHES * BATCH, 6, generator=torch.Generator().manual_seed(3))
    y = (x.sum(dim=1) > 0).long()
    state = {"data_gen": data_gen, "order": torch.randperm(BATCHES * BATCH, generator=data_gen)}
    ckpt = Checkpointer(
        where,
        model=model,
        optimizer=opt,
        state=state,
        every=100,
        signals=signals,
        sync_ranks=sync,
        blocking=False,  # the preemption commit must drain before the signal ends the process
    )
    for step in range(ckpt.resume(), total):
        if step % BATCHES == 0 and step:
            state["order"] = torch.randperm(BATCHES * BATCH, generator=data_gen)
        idx = state["order"][(step % BATCHES) * BATCH : (step % BATCHES + 1) * BATCH]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}", flush=True)
        if step == pause_at:
            sys.stdin.readline()
        ckpt.step(step, {"loss": loss})
        if ckpt.preempted:
            print(f"preempted {step}", flush=True)
            return
    save_image(dict(model.state_dict()), out)
    print("done", flush=True)


if __name__ == "__main__":
    main()
