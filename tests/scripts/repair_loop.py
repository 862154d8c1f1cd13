"""Child process for tests/test_verify_repair.py: damage the last event, repair it, in a loop.

Usage::

    python repair_loop.py LEDGER_DIR

Opens the ledger (fsync on), prints ``ready``, then loops: flip one bit in the
last byte of ``events.log`` (the newest event, which moved main to its tip:
readers now see the tip's parent), print ``flipped``, run
``verify(repair=True)`` (which restores main from the commit objects) and
print ``repaired``. The test SIGKILLs it at random moments, most of them
inside the repair. It never imports torch, so it starts fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ledger import Ledger


def main() -> None:
    root = Path(sys.argv[1])
    log = root / "events.log"
    with Ledger.open(root, fsync=True) as lg:
        print("ready", flush=True)
        while True:
            with open(log, "r+b") as f:
                f.seek(-1, 2)
                byte = f.read(1)[0]
                f.seek(-1, 2)
                f.write(bytes([byte ^ 1]))
            print("flipped", flush=True)
            report = lg.verify(repair=True)
            assert report.ok, report.problems
            print("repaired", flush=True)


if __name__ == "__main__":
    main()
