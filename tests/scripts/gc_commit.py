"""Child process for tests/test_gc.py: commit a run of states to one branch.

Usage: ``python gc_commit.py LEDGER_DIR RUN BRANCH COUNT [--retry] [--go FILE] [--pause S]``.

Opens the ledger, prints ``ready``, waits until ``--go FILE`` exists (so
several children start committing at the same moment), then commits
``gc_state.make_state(RUN, i)`` for i in 0..COUNT-1 to BRANCH, printing
``commit <id>`` after each returned commit. A ``RefConflictError`` (another
writer moved the branch) prints ``conflict <i>``; with ``--retry`` the same
state is committed again on top of the new tip, otherwise it is skipped.
``--pause`` sleeps after each commit (a training step between saves).
Prints ``exit`` at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gc_state as gs


def main() -> None:
    """Commit COUNT states, reporting each one that returned and each conflict."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("run", type=int)
    parser.add_argument("branch")
    parser.add_argument("count", type=int)
    parser.add_argument("--retry", action="store_true")
    parser.add_argument("--go", default=None)
    parser.add_argument("--pause", type=float, default=0.0)
    args = parser.parse_args()

    from ledger import Ledger
    from ledger.errors import RefConflictError

    out = sys.stdout
    with Ledger.open(args.root, fsync=False) as lg:
        out.write("ready\n")
        out.flush()
        while args.go and not Path(args.go).exists():
            time.sleep(0.002)
        i = 0
        while i < args.count:
            try:
                c = gs.commit_state(lg, args.run, i, branch=args.branch)
            except RefConflictError:
                out.write(f"conflict {i}\n")
                out.flush()
                if not args.retry:
                    i += 1
                continue
            out.write(f"commit {c.id}\n")
            out.flush()
            time.sleep(args.pause)
            i += 1
    out.write("exit\n")
    out.flush()


if __name__ == "__main__":
    main()
