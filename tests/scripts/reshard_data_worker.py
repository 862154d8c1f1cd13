"""One process of a gloo job for tests/test_reshard_data.py: train on W ranks, resume on W'.

Usage: reshard_data_worker.py RANK BEFORE AFTER OUT_DIR LEDGER N BATCHES

Processes 0..BEFORE-1 first form a process group of BEFORE ranks (``train``):
they iterate a DataLoader (batch size 2) over a dataset of N sample ids
through ``ResumableSampler(N, BEFORE, rank, shuffle=True, seed=3)`` in epoch
1 for BATCHES batches and ``distributed.commit`` the sampler with the epoch.
Then all AFTER processes form a new group (``resume``): ``distributed.restore``
into a fresh sampler on AFTER ranks and iterate the rest of the epoch. (One
set of processes for both phases: importing torch is most of a job's time.)
Each writes OUT_DIR/rank<R>-<phase>.json: the sample ids it saw, its torch RNG
state right after the call (as a list of bytes) and three draws from the
global RNG.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from ledger import Ledger
from ledger.adapters import distributed


def phase(name: str, rank: int, world: int, out: Path, lg: Ledger, n: int, batches: int) -> None:
    init, limit = f"file://{out / ('rendezvous-' + name)}", dt.timedelta(seconds=60)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=limit)
    torch.manual_seed(1000 + rank)
    sampler = distributed.ResumableSampler(n, world, rank, shuffle=True, seed=3)
    loader = DataLoader(list(range(n)), batch_size=2, sampler=sampler)
    seen: list[int] = []
    state: dict[str, Any] = {"sampler": sampler, "epoch": 0}
    if name == "train":
        sampler.set_epoch(1)
        for i, batch in enumerate(loader):
            seen.extend(int(x) for x in batch)
            if i + 1 == batches:
                break
        state["epoch"] = 1
        distributed.commit(lg, state, step=batches, timeout=30)
        after = torch.get_rng_state()
    else:  # another timeout: a group of its own (the first one went with its process group)
        distributed.restore(lg, state, timeout=31)
        after = torch.get_rng_state()
        sampler.set_epoch(state["epoch"])
        for batch in loader:  # a DataLoader draws its base seed from the global RNG
            seen.extend(int(x) for x in batch)
    torch.set_rng_state(after)
    record = {"seen": seen, "rng": after.tolist(), "draws": torch.rand(3).tolist()}
    (out / f"rank{rank}-{name}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def main() -> None:
    rank, before, after = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    out, where = Path(sys.argv[4]), sys.argv[5]
    n, batches = int(sys.argv[6]), int(sys.argv[7])
    torch.set_num_threads(1)
    lg = Ledger.open(where, fsync=False)
    if rank < before:
        phase("train", rank, before, out, lg, n, batches)
    phase("resume", rank, after, out, lg, n, batches)


if __name__ == "__main__":
    main()
