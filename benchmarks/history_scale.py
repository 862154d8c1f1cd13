"""History scale: what everyday operations cost as a ledger's history grows.

One ledger grows to ``--max`` commits of a 1 MB state (16 tensors of 64 KiB,
unchanged, plus a 1 KiB tensor that changes every commit; a branch made every
100 commits), built with ``fsync=False``. At 100, 1,000, 10,000 and 100,000
commits (those up to ``--max``) it measures, each in a fresh ``Ledger``:

* ``Ledger.open`` (best of 3), ``resolve`` of a full id and of ``main~50``
  (the first call of a fresh ledger each time: refs, commit graph and records
  not yet read), ``main~50`` again in that ledger, ``ledger log -n 20``
  in-process (click's runner, the open included);
* a new commit with ``fsync=True`` (median of 3), beside ``torch.save`` of the
  same state with fsync in the same run (the ratio is what counts);
* ``table()``, ``du()``, ``gc(dry_run=True)`` and ``verify()`` (one run each;
  they are linear, so the report gives their cost per commit);
* the packs on disk and the in-memory index's bytes per object.

Run:  ``.venv/bin/python benchmarks/history_scale.py [--max 100000] [--json OUT]
[--plot docs/history-scale.png] [--workdir DIR]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _util import NoiseMeter, format_table, machine_info, time_call

from ledger import Ledger

ROOT = Path(__file__).resolve().parent
POINTS = (100, 1_000, 10_000, 100_000)
BRANCH_EVERY = 100


def _state(step: int) -> dict[str, Any]:
    torch.manual_seed(0)
    state: dict[str, Any] = {f"layer{i}": torch.randn(16384) for i in range(16)}
    state["moving"] = torch.full((256,), float(step))
    return state


def _grow(path: Path, start: int, end: int) -> None:
    """Commit steps ``start`` .. ``end - 1`` (fsync off; background compaction as usual)."""
    state = _state(0)
    with Ledger.open(path, create=True, fsync=False) as lg:
        for step in range(start, end):
            if step and step % BRANCH_EVERY == 0:
                lg.branch(f"b{step // BRANCH_EVERY:05d}")
            state["moving"].fill_(float(step))
            lg.commit(state, step=step, metrics={"loss": 1.0 / (step + 1)}, rng=False)


def _best(fn: Any, repeat: int) -> float:
    return min(time_call(fn) for _ in range(repeat))


def _open_time(path: Path) -> float:
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        lg = Ledger.open(path)
        times.append(time.perf_counter() - t0)
        lg.close()
    return min(times)


def _resolve_times(path: Path) -> tuple[float, float, float]:
    """Resolve of a full id and of ``main~50``, each the first call of a fresh ``Ledger``
    (it reads the refs and the commit graph), and ``main~50`` again in that ledger."""
    with Ledger.open(path) as lg:
        full = lg.resolve("main~7")
    full_s, back_s, again_s = [], [], []
    for _ in range(3):
        with Ledger.open(path) as lg:
            full_s.append(time_call(lambda lg=lg: lg.resolve(full)))
        with Ledger.open(path) as lg:
            back_s.append(time_call(lambda lg=lg: lg.resolve("main~50")))
            again_s.append(time_call(lambda lg=lg: lg.resolve("main~50")))
    return min(full_s), min(back_s), min(again_s)


def _log_time(path: Path) -> float:
    from click.testing import CliRunner

    from ledger.cli.app import cli

    runner = CliRunner()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        result = runner.invoke(cli, ["--dir", str(path), "log", "-n", "20"])
        times.append(time.perf_counter() - t0)
        assert result.exit_code == 0, result.output
        assert result.output.count("\n") == 20, result.output
    return min(times)


def _fsync_commit(path: Path, step: int) -> float:
    times = []
    state = _state(0)
    with Ledger.open(path, fsync=True) as lg:
        for i in range(3):
            state["moving"].fill_(float(-step - i))
            times.append(time_call(lambda i=i: lg.commit(state, step=step + i, rng=False)))
    return statistics.median(times)


def _torch_save(dirpath: Path) -> float:
    state = _state(0)
    times = []
    for i in range(3):
        target = dirpath / f"ref{i}.pt"

        def save(target: Path = target) -> None:
            with open(target, "wb") as f:
                buf = io.BytesIO()
                torch.save(state, buf)
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())

        times.append(time_call(save))
        target.unlink()
    return statistics.median(times)


def measure(path: Path, commits: int, scratch: Path) -> dict[str, Any]:
    """Every figure at the ledger's current size (``commits`` commits)."""
    meter = NoiseMeter()
    meter.start()
    row: dict[str, Any] = {"commits": commits}
    row["open_s"] = _open_time(path)
    row["resolve_full_s"], row["resolve_back50_s"], row["resolve_back50_again_s"] = _resolve_times(
        path
    )
    row["log_n20_s"] = _log_time(path)
    with Ledger.open(path) as lg:
        row["packs"] = len(lg.store.pack_names())
        objects = sum(len(lg.store.ids(k)) for k in ("chunk", "manifest", "commit", "blob"))
        row["objects"] = objects
        row["index_bytes_per_object"] = lg.store.index_bytes() / max(1, objects)
    for name in ("table", "du"):
        with Ledger.open(path) as lg:
            row[f"{name}_s"] = time_call(getattr(lg, name))
    with Ledger.open(path) as lg:
        row["gc_dry_s"] = time_call(lambda: lg.gc(dry_run=True))
    with Ledger.open(path) as lg:
        row["verify_s"] = time_call(lg.verify)
    row["commit_fsync_s"] = _fsync_commit(path, 10_000_000 + commits)
    row["torch_save_fsync_s"] = _torch_save(scratch)
    row["noise"] = meter.stop()
    return row


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Log-log growth curves of the measured times."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["commits"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label in (
        ("open_s", "Ledger.open"),
        ("resolve_back50_s", "resolve main~50"),
        ("log_n20_s", "log -n 20"),
        ("commit_fsync_s", "commit (fsync)"),
        ("table_s", "table()"),
        ("du_s", "du()"),
        ("gc_dry_s", "gc(dry_run=True)"),
        ("verify_s", "verify()"),
    ):
        ax.plot(n, [r[key] for r in rows], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("commits in the ledger (1 MB state)")
    ax.set_ylabel("seconds")
    ax.set_title("History scale (benchmarks/history_scale.py)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def report(rows: list[dict[str, Any]]) -> str:
    """The table of every point, times in ms, linear ones also per commit."""
    headers = [
        "commits",
        "packs",
        "open ms",
        "resolve id ms",
        "resolve ~50 ms",
        "again ms",
        "log -n 20 ms",
        "commit fsync ms",
        "x torch.save",
        "table s (us/commit)",
        "du s (us/commit)",
        "gc dry s",
        "verify s",
        "index B/object",
        "noise",
    ]

    def per(r: dict[str, Any], key: str) -> str:
        return f"{r[key]:.2f} ({r[key] / r['commits'] * 1e6:.0f})"

    body = [
        [
            r["commits"],
            r["packs"],
            f"{r['open_s'] * 1e3:.1f}",
            f"{r['resolve_full_s'] * 1e3:.3f}",
            f"{r['resolve_back50_s'] * 1e3:.2f}",
            f"{r.get('resolve_back50_again_s', float('nan')) * 1e3:.2f}",
            f"{r['log_n20_s'] * 1e3:.1f}",
            f"{r['commit_fsync_s'] * 1e3:.1f}",
            f"{r['commit_fsync_s'] / r['torch_save_fsync_s']:.2f}",
            per(r, "table_s"),
            per(r, "du_s"),
            f"{r['gc_dry_s']:.2f}",
            f"{r['verify_s']:.2f}",
            f"{r['index_bytes_per_object']:.0f}",
            f"{r['noise']:.0%}",
        ]
        for r in rows
    ]
    return format_table(headers, body, title="history scale, 1 MB state, built with fsync=False")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max", type=int, default=100_000, help="largest history (commits)")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--plot", type=Path, help="write a PNG of the growth curves here")
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "history_scale")
    parser.add_argument("--keep", action="store_true", help="leave the ledger in --workdir")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    path = args.workdir / "ledger"
    rows: list[dict[str, Any]] = []
    built = 0
    for point in [p for p in POINTS if p <= args.max] or [args.max]:
        t0 = time.perf_counter()
        _grow(path, built, point)
        print(f"built {point} commits (+{time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        built = point
        rows.append(measure(path, point, args.workdir))
        built += 3  # the fsync'd commits measure() added
        print(report(rows[-1:]), file=sys.stderr)
    print(report(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "rows": rows}, indent=2))
    if args.plot:
        plot(rows, args.plot)
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
