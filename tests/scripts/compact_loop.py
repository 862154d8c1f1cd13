"""Child process for tests/test_midx.py: commit small states and compact, in a loop.

Usage::

    python compact_loop.py LEDGER_DIR RUN [--commit-every K] [--slow SECONDS]

Opens the ledger (fsync on), prints ``ready``, then loops: ``--commit-every``
commits of ``gc_state.make_state(RUN, i)`` (``commit <id>`` after each returned
commit; one small pack each), then ``Ledger.compact()`` between ``compact
start`` and ``compact done <packs after>``. ``--slow`` sleeps inside the
compaction (before the merged packs are written, before the old ones are
deleted) so a SIGKILL lands there more often. The test kills it.
"""

from __future__ import annotations

import argparse
import sys

import gc_state as gs
from gc_loop import widen_gc_windows


def main() -> None:
    """Loop until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("run", type=int)
    parser.add_argument("--commit-every", type=int, default=3)
    parser.add_argument("--slow", type=float, default=0.0)
    args = parser.parse_args()

    from ledger import Ledger

    lg = Ledger.open(args.root, fsync=True)
    if args.slow:
        widen_gc_windows(lg, args.slow)  # the same two moments: the copies, the deletes
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    i = 0
    while True:
        for _ in range(args.commit_every):
            c = gs.commit_state(lg, args.run, i, n=256)
            out.write(f"commit {c.id}\n")
            out.flush()
            i += 1
        out.write("compact start\n")
        out.flush()
        report = lg.compact()
        out.write(f"compact done {report.packs_after}\n")
        out.flush()


if __name__ == "__main__":
    main()
