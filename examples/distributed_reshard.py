"""Multi-process commits with ``ledger.adapters.distributed``: save on 2 ranks, resume on 3.

Two gloo processes on the CPU each hold half of a row-sharded ``DTensor``
weight plus their own optimizer, counter and RNG; one ``distributed.commit``
stores every rank's shard in parallel and rank 0 writes a single commit.
Then three processes restore it: ``torch.distributed.checkpoint``'s planner
reshards the weight onto the new mesh, and the other values come from rank
0's shard. No GPU, no downloads, a few seconds::

    python examples/distributed_reshard.py [--dir /tmp/ckpt]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from ledger import Ledger
from ledger.adapters import distributed

FULL = torch.arange(24, dtype=torch.float32).reshape(8, 3)


def state_for(world: int, weight: torch.Tensor, counter: int) -> dict[str, Any]:
    mesh = init_device_mesh("cpu", (world,))
    return {
        "weight": distribute_tensor(weight, mesh, [Shard(0)]),  # rank r holds rows of its shard
        "counter": counter,
    }


def rank_main(rank: int, world: int, where: str, rendezvous: str, phase: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    if phase == "save":
        state = state_for(world, FULL, counter=100 + rank)
        made = distributed.commit(where, state, step=1, message=f"{world} ranks")
        if rank == 0:
            print(f"[save] one commit {made.id[:12]} for {world} ranks")
    else:
        state = state_for(world, torch.zeros(8, 3), counter=-1)
        distributed.restore(where, state)  # another world size: resharded
        local = state["weight"].to_local()
        rows = local[:, 0].div(3).int().tolist()
        print(f"[resume] rank {rank}/{world}: rows {rows}, counter {state['counter']}")
        assert state["weight"].full_tensor().equal(FULL)
    dist.destroy_process_group()


def run(world: int, where: str, phase: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ledger-rdzv-") as tmp:
        rendezvous = os.path.join(tmp, "init")  # a fresh file per process group
        mp.start_processes(
            rank_main, args=(world, where, rendezvous, phase), nprocs=world, start_method="spawn"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    args = parser.parse_args()
    where = args.dir or tempfile.mkdtemp(prefix="ledger-dist-") + "/ckpt"
    Ledger.open(where, create=True).close()
    run(2, where, "save")
    run(3, where, "resume")
    with Ledger.open(where) as lg:
        tree = lg.checkout("HEAD", paths=["world_size"])
        print(f"ledger {where}: HEAD was written by {tree['world_size']} ranks")


if __name__ == "__main__":
    main()
