"""Child process for tests/test_staging.py: stage one part of a commit, hand it to the parent.

    python stage_part.py LEDGER SEED [--die]

Opens the shared ledger, writes ``{"w": randn(...), "k": SEED}`` as a part in a
stage, and prints the encoded part as hex on one line. With ``--die`` it is
killed (SIGKILL, by itself) right after the part is durable, before anyone
commits it: the ledger must stay readable and unchanged.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

from ledger import Ledger


def main() -> None:
    root, seed = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(seed)
    with Ledger.open(root) as lg, lg.stage() as stage:
        part = stage.write({"w": torch.randn(64, 33), "k": seed})
        print(part.encode().hex(), flush=True)
        if "--die" in sys.argv:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
