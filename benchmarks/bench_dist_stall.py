"""Step-time stall of a multi-rank DDP training loop that checkpoints every N steps.

A gloo job of ``--world`` ranks (default 2, processes started by this script)
trains a DDP model (an fp32 linear stack of about ``--size-mb`` of weights +
AdamW moments per rank) and checkpoints every ``--every`` steps, in four modes,
interleaved and repeated ``--repeat`` times:

- ``none``: no checkpoint (the baseline step time);
- ``blocking``: ``ledger.adapters.distributed.commit(...)``;
- ``async``: ``distributed.commit(..., blocking=False)``;
- ``dcp``: ``torch.distributed.checkpoint.async_save`` into a new directory per
  checkpoint, waiting for the previous save before the next (as its docs do).

Both durable (ledger fsync on; DCP's writer fsyncs its files). Reported, from
rank 0, per mode: the mean step time over the loop as a ratio of the
``none`` mode's (the stall), the extra time per checkpoint, and that extra
time as a ratio of DCP's. Pending saves are waited for after the loop, outside
the timed part (shown apart as ``drain``). Runs in about 1-2 minutes at the
defaults; it is not part of ``make bench`` (run it on its own).

On a machine with fewer cores than ranks the ranks share cores, so the
figures measure contention as much as checkpointing; say so when reporting.

Run: ``.venv/bin/python benchmarks/bench_dist_stall.py [--world 2] [--size-mb 40] [--json OUT]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from _util import format_table, machine_info
from torch.nn.parallel import DistributedDataParallel

from ledger import Ledger
from ledger.adapters import distributed

MODES = ("none", "blocking", "async", "dcp")


def build(size_mb: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A linear stack whose weights + AdamW moments total about ``size_mb`` (same on every rank)."""
    width = 1024
    per_layer = width * width * 4 * 3
    layers = max(1, round(size_mb * 2**20 / per_layer))
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, opt


def loop(
    mode: str, args: argparse.Namespace, work: Path, rank: int, group: Any
) -> dict[str, float]:
    model, opt = build(args.size_mb)
    ddp = DistributedDataParallel(model)
    data = torch.randn(16, 1024, generator=torch.Generator().manual_seed(rank))

    def step() -> None:
        loss = ddp(data).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # AdamW state exists before the first checkpoint
    lg = (
        Ledger.open(work / "ledger", create=True, fsync=True)
        if mode in ("blocking", "async")
        else None
    )
    future: Any = None
    in_call = 0.0  # time spent inside the checkpoint calls (the rest of the stall: slower steps)
    dist.barrier()
    started = time.perf_counter()
    for i in range(1, args.steps + 1):
        step()
        if i % args.every:
            continue
        state = {"model": model, "optim": opt}
        called = time.perf_counter()
        if mode == "blocking":
            distributed.commit(lg, state, step=i)
        elif mode == "async":
            future = distributed.commit(lg, state, step=i, blocking=False)
        elif mode == "dcp":
            if future is not None:
                future.result()
            sd = {"model": model.state_dict(), "optim": opt.state_dict()}
            # On its own gloo group, as for the ledger: the default one is DDP's, and
            # DCP's saving thread sharing it with the training loop hangs the job.
            future = dcp.async_save(sd, checkpoint_id=str(work / f"dcp-{i}"), process_group=group)
        in_call += time.perf_counter() - called
    elapsed = time.perf_counter() - started
    if future is not None:
        future.result()
    drain = time.perf_counter() - started - elapsed
    dist.barrier()
    if lg is not None:
        lg.close()
    return {"loop_s": elapsed, "drain_s": drain, "in_call_s": in_call}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{args.init}",
        rank=args.rank,
        world_size=args.world,
        timeout=dt.timedelta(seconds=120),
    )
    work = Path(args.work)
    group = dist.new_group(backend="gloo")  # DCP's (see loop)
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for rep in range(args.repeat):
        for mode in MODES:
            where = work / f"{mode}-{rep}"
            if args.rank == 0:
                where.mkdir(parents=True)
            dist.barrier()
            runs[mode].append(loop(mode, args, where, args.rank, group))
            dist.barrier()
            if args.rank == 0:
                shutil.rmtree(where, ignore_errors=True)
    if args.rank == 0:
        Path(args.result).write_text(json.dumps(runs))
    dist.destroy_process_group()


def report(runs: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> dict[str, Any]:
    checkpoints = args.steps // args.every
    loop_s = {m: statistics.median(r["loop_s"] for r in runs[m]) for m in MODES}
    base = loop_s["none"]
    extra = {m: (loop_s[m] - base) / checkpoints for m in MODES}
    out: dict[str, Any] = {
        "world": args.world,
        "cores": os.cpu_count(),
        "size_mb_per_rank": args.size_mb,
        "steps": args.steps,
        "every": args.every,
        "repeat": args.repeat,
        "step_s_none": base / args.steps,
        "runs": runs,
        "machine": machine_info(),
    }
    rows = []
    for m in MODES:
        ratio_step = loop_s[m] / base
        ratio_dcp = extra[m] / extra["dcp"] if extra["dcp"] > 0 else float("nan")
        drain = statistics.median(r["drain_s"] for r in runs[m])
        in_call = statistics.median(r["in_call_s"] for r in runs[m]) / checkpoints
        out[m] = {
            "step_time_vs_none": ratio_step,
            "extra_s_per_checkpoint": extra[m],
            "extra_vs_dcp": ratio_dcp,
            "drain_s": drain,
            "in_call_s_per_checkpoint": in_call,
        }
        rows.append([m, ratio_step, extra[m], ratio_dcp, in_call, drain])
    title = (
        f"{args.world} ranks on {os.cpu_count()} cores, {args.size_mb:g} MB/rank, "
        f"{args.steps} steps, a checkpoint every {args.every}, median of {args.repeat}"
    )
    headers = [
        "mode",
        "step time x none",
        "extra s / ckpt",
        "extra x dcp",
        "in call s / ckpt",
        "drain s",
    ]
    print(format_table(headers, rows, title))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--size-mb", type=float, default=40)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--init", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        worker(args)
        return
    base = Path(__file__).resolve().parent / "out"
    base.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dist-stall-", dir=base))
    try:
        common = [
            f"--world={args.world}",
            f"--size-mb={args.size_mb}",
            f"--steps={args.steps}",
            f"--every={args.every}",
            f"--repeat={args.repeat}",
            f"--init={work / 'rendezvous'}",
            f"--work={work}",
            f"--result={work / 'result.json'}",
        ]
        procs = [
            subprocess.Popen([sys.executable, __file__, f"--rank={r}", *common])
            for r in range(args.world)
        ]
        codes = [p.wait(timeout=900) for p in procs]
        if any(codes):
            raise SystemExit(f"a rank failed: exit codes {codes}")
        runs = json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = report(runs, args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
