"""Start-up: how long `ledger --help`, `--version` and the read-only commands take.

Each command runs as a fresh process (what a user's shell does), ``--repeat``
times after one warm-up run (so the files are in the page cache); the median
and best are reported, beside two baselines measured in the same run:
``python -c pass`` (the interpreter alone) and ``python -c "import torch"``
(what every command cost before the CLI stopped importing torch). The target
(issue: living with a ledger) is ``ledger --help`` under 0.3 s on this machine.

Run:  ``.venv/bin/python benchmarks/startup.py [--repeat 15] [--commits 200] [--json OUT]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _util import NoiseMeter, format_table, machine_info, wait_for_idle

ROOT = Path(__file__).resolve().parent


def _ledger() -> list[str]:
    exe = Path(sys.executable).with_name("ledger")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ledger.cli"]


def _build(path: Path, commits: int) -> None:
    """A ledger with ``commits`` small commits on two branches (untimed)."""
    code = (
        "import sys, torch\n"
        "from ledger import Ledger\n"
        "with Ledger.open(sys.argv[1], create=True, fsync=False) as lg:\n"
        "    for i in range(int(sys.argv[2])):\n"
        "        if i == int(sys.argv[2]) // 2: lg.branch('exp')\n"
        "        lg.commit({'w': torch.full((256,), float(i))}, step=i, metrics={'loss': 1 / (i + 1)})\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path), str(commits)], check=True)


def _time(cmd: list[str], repeat: int) -> dict[str, float]:
    subprocess.run(cmd, capture_output=True, check=True)  # warm the page cache
    times = []
    meter = NoiseMeter(children=True)
    meter.start()
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    noise = meter.stop()
    return {"median_s": statistics.median(times), "best_s": min(times), "noise": noise}


def main() -> None:
    """Measure and print the table (and ``--json``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--wait-idle", type=float, default=120.0)
    args = ap.parse_args()

    work = ROOT / "out" / "startup"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    led = work / "ckpt"
    _build(led, args.commits)
    d = ["--dir", str(led)]
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "ledger --help": [*_ledger(), "--help"],
        "ledger --version": [*_ledger(), "--version"],
        "ledger log -n 20": [*_ledger(), "log", "-n", "20", *d],
        "ledger show HEAD": [*_ledger(), "show", "HEAD", *d],
        "ledger branch": [*_ledger(), "branch", *d],
        "ledger du": [*_ledger(), "du", *d],
    }
    results = {}
    for name, cmd in cases.items():
        wait_for_idle(args.wait_idle, quiet_s=3)
        results[name] = _time(cmd, args.repeat)
    base = results["python -c pass"]["median_s"]
    torch_s = results["python -c 'import torch'"]["median_s"]
    rows = [
        [
            name,
            f"{r['median_s']:.3f}",
            f"{r['best_s']:.3f}",
            f"{r['median_s'] - base:.3f}",
            f"{r['median_s'] / torch_s:.2f}",
            f"{r['noise']:.0%}",
        ]
        for name, r in results.items()
    ]
    headers = ["command", "median s", "best s", "over python", "x import torch", "noise"]
    title = f"start-up, {args.commits} commits, median of {args.repeat}"
    print(format_table(headers, rows, title=title))
    if args.json:
        doc = {"machine": machine_info(), "commits": args.commits, "results": results}
        args.json.write_text(json.dumps(doc, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
