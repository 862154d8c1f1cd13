"""Child process for tests/test_gc.py and tests/test_gc_crash.py: run gc(grace=0) in a loop.

Usage::

    python gc_loop.py LEDGER_DIR RUN [--commit-every K] [--branches a,b] [--stop FILE]
                      [--fsync] [--max-gcs N] [--pause SECONDS] [--slow-gc SECONDS]

Opens the ledger, prints ``ready``, then loops: ``gc(grace=0)`` (printing
``gc start`` before and ``gc done <expired> <objects freed> <bytes freed>``
after it), and with ``--commit-every K`` also commits K states between two
gcs, round-robin over ``--branches`` (``commit <branch> <id>`` after each
returned commit; the state is ``gc_state.make_state(RUN, i)``, named by the
commit message). It stops when ``--stop FILE`` exists or after ``--max-gcs``
gcs, printing ``exit <gcs>``; the crash tests SIGKILL it instead. ``--pause``
sleeps after each gc; ``--slow-gc`` widens the windows inside gc (see
:func:`widen_gc_windows`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import gc_state as gs


def widen_gc_windows(lg: Any, seconds: float) -> None:
    """Sleep inside gc: after expiry is recorded, and after the rewrite, before the deletes.

    So a SIGKILL aimed at a gc lands in its most delicate moments more often.
    """
    store = lg.store
    real_writer, real_remove = store.writer, store.remove_packs

    def writer(pool: Any, **kw: Any) -> Any:
        if pool is None:  # gc's rewrite (commits pass their thread pool)
            time.sleep(seconds)
        return real_writer(pool, **kw)

    def remove_packs(names: Any) -> None:
        time.sleep(seconds)
        real_remove(names)

    store.writer = writer
    store.remove_packs = remove_packs


def main() -> None:
    """Loop until stopped or killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("run", type=int)
    parser.add_argument("--commit-every", type=int, default=0)
    parser.add_argument("--branches", default="main")
    parser.add_argument("--stop", default=None)
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--max-gcs", type=int, default=0)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--slow-gc", type=float, default=0.0)
    args = parser.parse_args()

    from ledger import Ledger

    lg = Ledger.open(args.root, fsync=args.fsync)
    if args.slow_gc:
        widen_gc_windows(lg, args.slow_gc)
    branches = args.branches.split(",")
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    i = gcs = 0
    while True:
        if args.stop and Path(args.stop).exists():
            break
        for _ in range(args.commit_every):
            branch = branches[i % len(branches)]
            c = gs.commit_state(lg, args.run, i, branch=branch)
            out.write(f"commit {branch} {c.id}\n")
            out.flush()
            i += 1
        out.write("gc start\n")
        out.flush()
        report = lg.gc(grace=0)
        gcs += 1
        out.write(f"gc done {len(report.expired)} {report.objects_freed} {report.bytes_freed}\n")
        out.flush()
        if args.max_gcs and gcs >= args.max_gcs:
            break
        time.sleep(args.pause)
    lg.close()
    out.write(f"exit {gcs}\n")
    out.flush()


if __name__ == "__main__":
    main()
