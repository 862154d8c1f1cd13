"""One rank of a gloo job for tests/test_adapter_distributed.py.

Usage: adapter_dist_worker.py SCENARIO RANK WORLD INIT_FILE LEDGER OUT_DIR

Scenarios: ``commit`` (commit a sharded state, then draw from the RNG),
``roundtrip`` (commit, then restore into fresh objects in the same job),
``restore`` (same world size: restore into fresh objects, draw from the RNG),
``reshard`` (another world size), ``kill`` (rank 1 dies right after its chunks
are durable, before it reports), ``hang`` (rank 1 stops answering), ``fail``
(rank 1's state holds a function).
Each rank writes what it ends with to OUT_DIR/rank<R> (adapter_util image)
or OUT_DIR/rank<R>.error (the exception and how long it took).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from adapter_util import save_image
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

from ledger import Ledger
from ledger.adapters import distributed

FULL = torch.arange(30, dtype=torch.float32).reshape(10, 3) * 1.5


def make_state(rank: int, world: int, seed: int, filled: bool) -> dict[str, Any]:
    """A rank's state: a row-sharded DTensor, per-rank tensor/value/optimizer/generator."""
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(seed)
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if filled:
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
    return {
        "w": distribute_tensor(FULL if filled else torch.zeros(10, 3), mesh, [Shard(0)]),
        "local": torch.randn(4),
        "count": rank * 10 if filled else -1,
        "model": model,
        "opt": opt,
        "gen": torch.Generator().manual_seed(seed),
    }


def image(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "w_local": state["w"].to_local(),
        "w_full": state["w"].full_tensor(),
        "local": state["local"],
        "count": state["count"],
        "model": state["model"].state_dict(),
        "opt": state["opt"].state_dict(),
        "gen": state["gen"].get_state(),
        "after": torch.rand(3),  # the global RNG continues where it was
    }


def die_after_chunks(lg: Ledger) -> None:
    """Make this rank die (SIGKILL) the moment its chunks are durable."""
    make = lg.store.writer

    def writer(*args: Any, **kw: Any) -> Any:
        w = make(*args, **kw)
        finish = w.finish

        def finish_and_die() -> list[str]:
            finish()
            os.kill(os.getpid(), signal.SIGKILL)
            return []

        w.finish = finish_and_die
        return w

    lg.store.writer = writer  # type: ignore[method-assign]


def main() -> None:
    scenario, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    init, where, out = sys.argv[4], sys.argv[5], Path(sys.argv[6])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    lg = Ledger.open(where, fsync=False)
    started = time.monotonic()
    try:
        if scenario == "commit":
            state = make_state(rank, world, seed=rank, filled=True)
            distributed.commit(lg, state, step=7, metrics={"loss": 0.5}, timeout=30)
        elif scenario == "roundtrip":  # commit, then restore into fresh objects
            state = make_state(rank, world, seed=rank, filled=True)
            distributed.commit(lg, state, step=7, timeout=30)
            save_image(image(state), out / f"rank{rank}-saved")
            state = make_state(rank, world, seed=100 + rank, filled=False)
            distributed.restore(lg, state, timeout=30)
        elif scenario in ("restore", "reshard"):
            state = make_state(rank, world, seed=100 + rank, filled=False)
            distributed.restore(lg, state, timeout=30)
        elif scenario == "kill":
            state = make_state(rank, world, seed=rank, filled=True)
            if rank == 1:
                die_after_chunks(lg)
            distributed.commit(lg, state, step=8, timeout=10)
        elif scenario == "hang":
            state = make_state(rank, world, seed=rank, filled=True)
            if rank == 1:
                time.sleep(600)  # stops answering; the test kills it
            distributed.commit(lg, state, step=8, timeout=3)
        elif scenario == "fail":
            state = make_state(rank, world, seed=rank, filled=True)
            if rank == 1:
                state["bad"] = lambda: None
            distributed.commit(lg, state, step=8, timeout=30)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except Exception as e:
        took = time.monotonic() - started
        (out / f"rank{rank}.error").write_text(f"{type(e).__name__}\n{took:.1f}\n{e}")
        os._exit(3)  # the process group cannot shut down cleanly without the dead rank
    save_image(image(state), out / f"rank{rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
