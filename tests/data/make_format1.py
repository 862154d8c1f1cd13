"""Write the format-1 fixture ledger that tests/test_compat.py must always read.

Run once when the fixture was made (2026-11-23, training-ledger 0.1.0); never
re-run to "fix" a failing compat test: a failure means new code no longer
reads ledgers written by old code.

    python tests/data/make_format1.py tests/data/ledger-format1
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch

from ledger import Ledger


def fixture_state(step: int) -> dict[str, Any]:
    """The deterministic state committed at ``step`` (the test rebuilds it to compare)."""
    g = torch.Generator().manual_seed(step)
    emb = torch.randn(64, 16, generator=g) * 0.02
    return {
        "model": {
            "embed.weight": emb,
            "head.weight": emb,  # tied: one storage, two names
            "proj": (torch.randn(32, 32, generator=g) * 0.02).to(torch.bfloat16),
            "counts": torch.arange(10, dtype=torch.int64) * step,
        },
        "np": np.linspace(0, 1, 7, dtype=np.float32) + step,
        "meta": {"step": step, "name": f"s{step}", 3: (1.5, None, b"x")},
    }


def main(path: str) -> None:
    with Ledger.open(path, create=True, fsync=True, chunk_size=4096) as lg:
        lg.commit(fixture_state(1), step=1, metrics={"loss": 1.0}, rng=False, message="one")
        lg.commit(fixture_state(2), step=2, metrics={"loss": 0.5}, rng=False, message="two")
        lg.tag("v1")
        lg.commit(fixture_state(3), step=3, branch="exp", rng=False, message="three")


if __name__ == "__main__":
    main(sys.argv[1])
