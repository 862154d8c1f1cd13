"""Child process for tests/test_crash.py: commit forever until killed.

Usage: ``python crash_commit.py LEDGER_DIR RUN``. Opens the ledger with
``fsync=True``, prints ``ready``, then commits a changing state in a loop. After
each ``commit()`` returns it prints ``<commit id> <digest of the state>`` and
flushes, so the parent knows exactly which commits were reported as done.
``digest`` is imported by the parent to check restored states (it imports
``gc_state`` from its own folder, which is on ``sys.path`` when it runs as a
script and when :func:`helpers.load_script` loads it).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from gc_state import tree_digest

USER_KEYS = ("fixed", "moving", "small", "meta", "nested")


def make_state(run: int, i: int) -> dict[str, Any]:
    """A state with an unchanging tensor (deduplicated) and new bytes every commit."""
    g = torch.Generator().manual_seed(run * 1_000_003 + i)
    return {
        "fixed": torch.arange(64 * 1024, dtype=torch.float32),
        "moving": torch.rand(96 * 1024, generator=g),
        "small": torch.tensor([i, run], dtype=torch.int64),
        "meta": {"run": run, "i": i, "name": f"r{run}-{i}"},
        "nested": [torch.randint(0, 255, (i % 7 + 1, 3), generator=g, dtype=torch.uint8), (i, "x")],
    }


def digest(tree: Any) -> str:
    """A hash of the user part of a state (tensors by dtype, shape and bytes; plain values by repr)."""
    return tree_digest(tree, USER_KEYS)


def main() -> None:
    """Commit until killed, reporting every returned commit."""
    from ledger import Ledger

    root, run = sys.argv[1], int(sys.argv[2])
    lg = Ledger.open(root, fsync=True)
    print("ready", flush=True)
    i = 0
    while True:
        s = make_state(run, i)
        c = lg.commit(s, step=i, message=f"run {run} commit {i}")
        sys.stdout.write(f"{c.id} {digest(s)}\n")
        sys.stdout.flush()
        i += 1


if __name__ == "__main__":
    main()
