"""Child process: commit once from a git checkout while secrets sit in env, argv and remote."""

from __future__ import annotations

import sys

import torch

from ledger import Ledger

if __name__ == "__main__":
    ledger_dir = sys.argv[1]
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit(
            {"model": torch.nn.Linear(3, 2), "note": "hello"},
            step=1,
            metrics={"loss": 1.0},
            params={"lr": 0.1},
            data={"dataset": "synthetic", "revision": "v1"},
        )
