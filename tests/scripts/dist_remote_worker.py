"""One rank of a gloo job for tests/test_dist_remote.py: commits and restores straight to a URL.

Usage: dist_remote_worker.py SCENARIO RANK WORLD INIT_FILE URL OUT_DIR

Scenarios: ``commit`` (commit the filled state of adapter_dist_worker at
step 7), ``roundtrip`` (commit, then restore into fresh objects: rank<R>-saved
and rank<R>), ``commit-again`` (restore, then commit the same state with its
counter moved, step 9), ``restore`` (restore into fresh objects: same or
another world size), ``stall`` (commit; the test kills a rank mid-upload).
Each rank writes what it ends with to OUT_DIR/rank<R> (adapter_util image) and
the commit id to OUT_DIR/rank<R>.commit, or OUT_DIR/rank<R>.error. The
rank's private directory is its TMPDIR; the remote's endpoint comes from the
environment (AWS_ENDPOINT_URL and the AWS keys for S3).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from adapter_dist_worker import image, make_state
from adapter_util import save_image

from ledger.adapters import distributed


def main() -> None:
    scenario, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    init, url, out = sys.argv[4], sys.argv[5], Path(sys.argv[6])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    started = time.monotonic()
    made = None
    try:
        if scenario in ("commit", "stall"):
            state = make_state(rank, world, seed=rank, filled=True)
            made = distributed.commit(url, state, step=7, metrics={"loss": 0.5}, timeout=20)
        elif scenario == "commit-again":
            state = make_state(rank, world, seed=100 + rank, filled=False)
            distributed.restore(url, state, timeout=30)
            state["count"] += 1
            made = distributed.commit(url, state, step=9, timeout=30)
        elif scenario == "roundtrip":  # commit, then restore into fresh objects in the same job
            state = make_state(rank, world, seed=rank, filled=True)
            made = distributed.commit(url, state, step=7, metrics={"loss": 0.5}, timeout=30)
            save_image(image(state), out / f"rank{rank}-saved")
            state = make_state(rank, world, seed=100 + rank, filled=False)
            distributed.restore(url, state, timeout=30)
        elif scenario == "restore":
            state = make_state(rank, world, seed=100 + rank, filled=False)
            made = distributed.restore(url, state, timeout=30)
        else:
            raise SystemExit(f"unknown scenario {scenario}")
    except Exception as e:
        took = time.monotonic() - started
        (out / f"rank{rank}.error").write_text(f"{type(e).__name__}\n{took:.1f}\n{e}")
        os._exit(3)  # the process group cannot shut down cleanly without the dead rank
    if made is not None:
        (out / f"rank{rank}.commit").write_text(made.id)
    save_image(image(state), out / f"rank{rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
