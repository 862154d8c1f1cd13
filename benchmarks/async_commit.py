"""Asynchronous commits: how long the training loop is blocked, against dcp.async_save.

Two measurements, each in this one process (same state, same disk):

1. Blocking time of one save of a ~600 MB fp32 model + AdamW state: a plain host
   copy of every tensor (the floor for any snapshot), ``ledger.commit(blocking=False)``,
   ``torch.distributed.checkpoint.async_save`` (no process group, ``no_dist=True``),
   and a blocking ``ledger.commit``. Also checks whether values changed right after
   the call leak into what was saved (dcp's known fault without a staging copy).
2. A training loop (small MLP, a commit every N steps): wall time with no commits,
   with blocking commits and with async commits (interleaved, best of ``--repeat``);
   reports what commits cost the loop, also estimated within each run from its
   own quiet steps (robust to the machine's speed drifting between runs).

Run: ``.venv/bin/python benchmarks/async_commit.py [--size-mb 600] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from _util import prefault

from ledger import Ledger


def build_state(size_mb: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """An fp32 linear stack whose weights + AdamW moments total about ``size_mb``."""
    per_layer = 1024 * 1024 * 4 * 3  # weight + exp_avg + exp_avg_sq, fp32
    layers = max(1, round(size_mb * 2**20 / per_layer))
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()
    return model, opt


def host_copy(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    started = time.perf_counter()
    copies = [t.detach().clone() for t in model.state_dict().values()]
    for state in opt.state.values():
        copies += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return time.perf_counter() - started


def blocking_times(size_mb: float, work: Path) -> dict[str, Any]:
    model, opt = build_state(size_mb)
    out: dict[str, Any] = {
        "state_mb": sum(t.numel() * 4 for t in model.state_dict().values()) * 3 / 2**20
    }
    out["host_copy_s"] = min(host_copy(model, opt) for _ in range(3))

    lg = Ledger.open(work / "ledger", create=True, fsync=True, async_budget=64 << 30)
    lg.commit({"model": model, "optim": opt}, rng=False)  # warm: imports, pools, chunks seen
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    started = time.perf_counter()
    handle = lg.commit({"model": model, "optim": opt}, rng=False, blocking=False)
    out["ledger_async_blocking_s"] = time.perf_counter() - started
    first = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)  # changed right after the call
    commit = handle.result()
    out["ledger_async_total_s"] = time.perf_counter() - started
    saved = lg.checkout(commit.id, paths=["model"])["model"]["0.weight"]
    out["ledger_saved_values_from_call_time"] = bool(torch.equal(saved, first))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    started = time.perf_counter()
    lg.commit({"model": model, "optim": opt}, rng=False)
    out["ledger_blocking_s"] = time.perf_counter() - started
    lg.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = {"model": model.state_dict(), "optim": opt.state_dict()}
        dcp.save(state, checkpoint_id=str(work / "dcp-warm"), no_dist=True)
        first = model[0].weight.detach().clone()
        started = time.perf_counter()
        future = dcp.async_save(state, checkpoint_id=str(work / "dcp"), no_dist=True)
        out["dcp_async_blocking_s"] = time.perf_counter() - started
        with torch.no_grad():
            model[0].weight.add_(1.0)
        future.result()
        out["dcp_async_total_s"] = time.perf_counter() - started
        loaded = {"model": {k: torch.empty_like(v) for k, v in model.state_dict().items()}}
        dcp.load(loaded, checkpoint_id=str(work / "dcp"), no_dist=True)
        out["dcp_saved_values_from_call_time"] = bool(
            torch.equal(loaded["model"]["0.weight"], first)
        )
    return out


def training_loop(mode: str, steps: int, every: int, work: Path) -> tuple[float, float]:
    """One loop; returns (wall time, what commits cost it).

    The cost is the wall time minus ``steps`` quiet steps, a quiet step being
    the median of the steps in the second half of each commit interval of this
    same run (by then a background commit has landed). Taken within one run,
    it is not moved by the machine getting slower or faster between runs,
    which on a shared 2-core VM is the size of the effect being measured.
    """
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 512)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randn(64, 512)
    lg = Ledger.open(work / f"loop-{mode}", create=True, fsync=True) if mode != "none" else None
    prefault(1 << 30)  # host-backed free pages for the loop and the commits (see _util)
    step_s: list[float] = []
    started = time.perf_counter()
    for step in range(1, steps + 1):
        began = time.perf_counter()
        loss = model(data).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_s.append(time.perf_counter() - began)
        if lg is not None and step % every == 0:
            lg.commit(
                {"model": model, "optim": opt}, step=step, rng=False, blocking=mode == "blocking"
            )
    if lg is not None:
        lg.wait()
    elapsed = time.perf_counter() - started
    if lg is not None:
        lg.close()
    quiet = statistics.median(t for i, t in enumerate(step_s) if i % every >= every // 2)
    return elapsed, elapsed - steps * quiet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=600)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the loop's compute on one core, the commit's I/O on the other
    work = args.out or Path(tempfile.mkdtemp(prefix="ledger-async-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = blocking_times(args.size_mb, work)
        # Interleaved repeats, best of each mode: the loop is short and a shared
        # 2-core machine is noisy; the best run is the one least disturbed.
        runs: dict[str, list[float]] = {"none": [], "blocking": [], "async": []}
        costs: dict[str, list[float]] = {"none": [], "blocking": [], "async": []}
        for rep in range(args.repeat):
            for mode in runs:
                wall, cost = training_loop(mode, args.steps, args.every, work / str(rep))
                runs[mode].append(wall)
                costs[mode].append(cost)
        loop = {mode: min(times) for mode, times in runs.items()}
        result["loop_runs_s"] = runs
        result["loop_s"] = loop
        cost_blocking = loop["blocking"] - loop["none"]
        cost_async = loop["async"] - loop["none"]
        result["loop_async_cost_vs_blocking"] = (
            cost_async / cost_blocking if cost_blocking > 0 else None
        )
        # The same ratio from each run's own quiet steps (see training_loop); the
        # "none" runs show this estimator's error (their true cost is 0).
        result["loop_cost_in_run_s"] = costs
        paired = {mode: statistics.median(c) for mode, c in costs.items()}
        result["loop_cost_in_run_median_s"] = paired
        result["loop_async_cost_vs_blocking_in_run"] = (
            paired["async"] / paired["blocking"] if paired["blocking"] > 0 else None
        )
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    result["ratio_ledger_async_blocking_to_host_copy"] = (
        result["ledger_async_blocking_s"] / result["host_copy_s"]
    )
    result["ratio_dcp_async_blocking_to_host_copy"] = (
        result["dcp_async_blocking_s"] / result["host_copy_s"]
    )
    for key, value in result.items():
        print(f"{key:45s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
