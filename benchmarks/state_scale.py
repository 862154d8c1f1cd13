"""The state-size curve: ledger against safetensors at several state sizes, as ratios.

For every ``--sizes`` entry (decimal GB) one fresh subprocess builds the
benchmark state (fp32 ``nn.Linear`` stack + AdamW moments, ``_state.py``),
writes a ledger with some history (one full commit, then ``--history``
commits that change the last layer), and measures in that one process:

- saves: safetensors ``save_file`` + fsync (the baseline); a full commit of a
  state whose every tensor changed; an unchanged re-commit and a last-layer
  commit, by default and with ``trust_versions=True``; the blocking time of
  ``commit(blocking=False)`` against a plain host copy of every tensor;
- cold reads (page cache evicted with ``posix_fadvise(DONTNEED)``, as in
  ``run.py``): ``restore`` into the live model and optimizer against
  safetensors ``load_file`` + copy into them; ``checkout`` (new tensors)
  against the same baseline; with the peak RSS above the RSS before each call.

Ratios are median time / baseline median in the same process (below 1 =
faster). Memory is freed between sizes (each has its own process); where two
copies of the state would not fit ``--max-gb``, the baseline loads tensor by
tensor (``safe_open``) and the async commit is skipped, as the table says.

Run:  ``.venv/bin/python benchmarks/state_scale.py --sizes 0.25,1,4 [--png docs/state_scale.png]``
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import _methods as m
import torch
from _state import build_state, digests, flatten, live_tensors, state_nbytes
from _util import (
    NoiseMeter,
    evict,
    format_table,
    machine_info,
    peak_rss_bytes,
    prefault,
    reset_peak_rss,
    rss_bytes,
    summarize,
)

HERE = Path(__file__).resolve().parent
RESULT_TAG = "@@SCALE "
GB = 1e9

# op -> (label, baseline op): the rows of the table, in order.
ROWS: dict[str, tuple[str, str]] = {
    "st_save": ("safetensors save_file + fsync (baseline)", "st_save"),
    "full": ("ledger full commit, fsync", "st_save"),
    "unchanged": ("ledger unchanged re-commit", "st_save"),
    "unchanged_trusted": ("ledger unchanged re-commit, trust_versions", "st_save"),
    "last_layer": ("ledger last-layer commit", "st_save"),
    "last_layer_trusted": ("ledger last-layer commit, trust_versions", "st_save"),
    "host_copy": ("host copy of every tensor (baseline)", "host_copy"),
    "async_blocking": ("ledger commit(blocking=False), blocked", "host_copy"),
    "st_load_copy": ("safetensors load + copy, cold (baseline)", "st_load_copy"),
    "restore": ("ledger restore, cold", "st_load_copy"),
    "checkout": ("ledger checkout, cold", "st_load_copy"),
}


class Timer:
    """Times calls of one operation and keeps the peak RSS they added."""

    def __init__(self, prefault_bytes: int) -> None:
        self.prefault_bytes = prefault_bytes
        self.times: dict[str, list[float]] = {}
        self.peak: dict[str, int] = {}

    def __call__(
        self, op: str, fn: Callable[[], Any], before: Callable[[], Any] = gc.collect
    ) -> Any:
        """Run ``before`` and a pre-fault untimed, then ``fn`` timed; return what ``fn`` returned."""
        before()
        gc.collect()
        prefault(self.prefault_bytes)
        reset_peak_rss()
        rss = rss_bytes()
        t0 = time.perf_counter()
        result = fn()
        self.times.setdefault(op, []).append(time.perf_counter() - t0)
        self.peak[op] = max(self.peak.get(op, 0), peak_rss_bytes() - rss)
        return result


def perturb_all(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Change every tensor, so every chunk of the next commit is new, keeping its entropy.

    Scaling keeps each value's spread of bits (as a training step does); adding
    a constant would pull the tiny AdamW second moments onto one exponent and
    let the codec shrink them, which no real step does.
    """
    with torch.no_grad():
        for t in live_tensors(model, opt).values():
            t.mul_(1.0009765625)  # 1 + 2**-10: every non-zero float changes


def timed_commits(
    timer: Timer,
    lg: Any,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    plan: Sequence[tuple[str, Callable[[], Any]]],
    reps: int,
    steps: Iterator[int],
) -> None:
    """Time ``reps`` commits of the state on ``lg`` for each (op, untimed change before it)."""
    for op, before in plan:
        for _ in range(reps):
            step = next(steps)
            timer(op, lambda s=step: m.ledger_commit(lg, model, opt, step=s), before)


def zero_all(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Zero the live tensors, so a restore that skipped one is caught by the digest check."""
    with torch.no_grad():
        for t in live_tensors(model, opt).values():
            t.zero_()


def st_load_copy_lean(path: Path, dest: dict[str, torch.Tensor]) -> None:
    """safetensors load + copy one tensor at a time (one tensor beyond the state in memory)."""
    from safetensors import safe_open

    with safe_open(str(path / "ckpt.safetensors"), framework="pt") as f, torch.no_grad():
        for k, t in dest.items():
            t.copy_(f.get_tensor(k))


def work(size_gb: float, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Measure every operation at one state size (this process only)."""
    torch.set_num_threads(os.cpu_count() or 1)
    model, opt = build_state(size_gb * 1000, seed=0)
    n = state_nbytes(live_tensors(model, opt))
    two_fit = 2 * n <= args.max_gb * GB
    timer = Timer(2 * n + (512 << 20) if two_fit else (512 << 20))
    reps = args.repeat
    st = workdir / "st"
    for _ in range(reps):
        shutil.rmtree(st, ignore_errors=True)
        timer("st_save", lambda: m.safetensors_save(model, opt, st, True))

    path = workdir / "lg"
    lg = m.ledger_open(path, fsync=True, create=True)
    steps = itertools.count()
    m.ledger_commit(lg, model, opt, step=next(steps))
    for _ in range(args.history):
        m.ledger_touch_last_layer(model)
        m.ledger_commit(lg, model, opt, step=next(steps))
    everything, last = partial(perturb_all, model, opt), partial(m.ledger_touch_last_layer, model)
    plan = [("full", everything), ("unchanged", gc.collect), ("last_layer", last)]
    timed_commits(timer, lg, model, opt, plan, reps, steps)
    if two_fit:
        for _ in range(reps):
            timer("host_copy", lambda: [t.clone() for t in live_tensors(model, opt).values()])
            handle = timer(
                "async_blocking",
                lambda: lg.commit({"model": model, "optim": opt}, step=next(steps), blocking=False),
                everything,
            )
            handle.result()
    lg.close()
    trusted = m.ledger_open(path, fsync=True, trust_versions=True)
    m.ledger_commit(trusted, model, opt, step=next(steps))  # this instance learns the versions
    plan = [("unchanged_trusted", gc.collect), ("last_layer_trusted", last)]
    timed_commits(timer, trusted, model, opt, plan, reps, steps)
    trusted.close()
    want = digests(live_tensors(model, opt))

    def cold(src: Path) -> Callable[[], None]:
        def prepare() -> None:
            zero_all(model, opt)
            evict(src)

        return prepare

    verified: dict[str, bool] = {}
    dest = live_tensors(model, opt)
    load_copy = partial_load_copy(st, dest, two_fit)
    for _ in range(reps):
        timer("st_load_copy", load_copy, cold(st))
        timer("restore", lambda: m.ledger_restore(path, model, opt), cold(path))
    verified["restore"] = digests(live_tensors(model, opt)) == want
    del dest, load_copy, everything, last, plan  # nothing may keep the live state alive
    model = opt = None  # type: ignore[assignment]
    gc.collect()
    for _ in range(reps):
        got = timer("checkout", lambda: m.ledger_checkout(path), lambda: evict(path))
        verified["checkout"] = digests(flatten(got["model"], got["optim"])) == want
        del got
    ledger_bytes = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return {
        "size_gb": size_gb,
        "state_bytes": n,
        "history": args.history,
        "ledger_bytes": ledger_bytes,
        "baseline_lean": not two_fit,
        "times": timer.times,
        "median": {op: summarize(ts)["median_s"] for op, ts in timer.times.items()},
        "peak_delta": timer.peak,
        "verified": verified,
    }


def partial_load_copy(st: Path, dest: dict[str, torch.Tensor], whole: bool) -> Callable[[], None]:
    """The safetensors baseline read: ``load_file`` + copy, or tensor by tensor when memory is short."""
    if whole:
        return lambda: m.safetensors_load_copy(st, dest)
    return lambda: st_load_copy_lean(st, dest)


def ratios(result: dict[str, Any]) -> dict[str, float]:
    """op -> median / its baseline's median."""
    med = result["median"]
    return {op: med[op] / med[base] for op, (_, base) in ROWS.items() if op in med and base in med}


def table(results: Sequence[dict[str, Any]]) -> str:
    """Ratios (and seconds) per operation and size; peak RSS added by the reads."""
    headers = ["operation"] + [f"{r['size_gb']:g} GB" for r in results]
    rows: list[list[Any]] = []
    for op, (label, _) in ROWS.items():
        cells = []
        for r in results:
            if op not in r["median"]:
                cells.append("-")
                continue
            cells.append(f"{ratios(r)[op]:.2f}x ({r['median'][op]:.2f} s)")
        rows.append([label, *cells])
    for op in ("st_load_copy", "restore", "checkout"):
        rows.append(
            [f"peak RSS added, {op} (MB)"]
            + [f"{r['peak_delta'].get(op, 0) / 1e6:.0f}" for r in results]
        )
    return format_table(headers, rows)


def plot(results: Sequence[dict[str, Any]], png: Path) -> None:
    """The curve: ratio against safetensors per operation, by state size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = [r["size_gb"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for op in (
        "full",
        "restore",
        "checkout",
        "unchanged",
        "unchanged_trusted",
        "last_layer_trusted",
        "async_blocking",
    ):
        ys = [ratios(r).get(op, float("nan")) for r in results]
        ax.plot(sizes, ys, marker="o", label=ROWS[op][0].removeprefix("ledger "))
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.set_xlabel("state size (GB)")
    ax.set_ylabel("time / baseline (same run)")
    ax.set_title("ledger against safetensors by state size (async: against a host copy)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    """Drive one subprocess per size (or, as a worker, measure one size)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="0.25,1,4", help="comma-separated state sizes, decimal GB")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per operation (median)")
    ap.add_argument("--history", type=int, default=20, help="last-layer commits before measuring")
    ap.add_argument("--max-gb", type=float, default=12.0, help="memory the run may take (GB)")
    ap.add_argument("--workdir", default=str(HERE / "out" / "scale"), help="scratch directory")
    ap.add_argument("--json", type=Path, default=None, help="write every figure here")
    ap.add_argument("--png", type=Path, default=None, help="plot the curve here")
    ap.add_argument("--merge", type=Path, nargs="+", default=None, help="only combine --json files")
    ap.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    root = Path(args.workdir)
    if args.worker is not None:
        result = work(args.worker, args, root)
        print(RESULT_TAG + json.dumps(result), flush=True)
        return 0
    results: list[dict[str, Any]] = []
    if args.merge:
        for p in args.merge:
            results += json.loads(p.read_text())["results"]
        results.sort(key=lambda r: r["size_gb"])
    for size in [] if args.merge else [float(s) for s in args.sizes.split(",") if s]:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        cmd = [sys.executable, __file__, "--worker", str(size), "--repeat", str(args.repeat),
               "--history", str(args.history), "--max-gb", str(args.max_gb), "--workdir", str(root)]  # fmt: skip
        noise = NoiseMeter(children=True)
        noise.start()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        shutil.rmtree(root, ignore_errors=True)
        found = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_TAG)]
        if proc.returncode or not found:
            print(f"{size:g} GB: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        result = json.loads(found[0][len(RESULT_TAG) :])
        result["noise"] = noise.stop()
        print(
            f"  {size:g} GB: {time.perf_counter() - t0:.0f} s, noise {result['noise']:.0%}",
            file=sys.stderr,
        )
        results.append(result)
    info = machine_info()
    print(
        f"# {info.get('cpu_model', '?')}, {info['cpus']} cpus, {info.get('ram_gib', '?')} GiB RAM"
    )
    print(table(results))
    print("verified bit-exact:", {r["size_gb"]: r["verified"] for r in results})
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    if args.png:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
