"""Write the format-2 fixture ledger (file nodes) that tests/test_compat.py must always read.

Run once when the fixture was made (2026-12-02, training-ledger 0.1.0 with
format 2); never re-run to "fix" a failing compat test: a failure means new
code no longer reads ledgers written by this version.

    python tests/data/make_format2.py tests/data/ledger-format2
"""

from __future__ import annotations

import sys
from typing import Any

from make_format1 import fixture_state as format1_state

from ledger import File, Ledger

CONFIG = b'{\n  "model_type": "fixture",\n  "hidden_size": 16\n}\n'


def fixture_files(step: int) -> dict[str, File]:
    """The files committed at ``step``: one unchanged, one that changes, one over a chunk."""
    vocab = "".join(f"tok{i}\n" for i in range(1500)).encode()  # 13 KiB: 4 chunks of 4 KiB
    return {
        "config.json": File(CONFIG),
        "generation_config.json": File(b'{"max_new_tokens": %d}\n' % (8 * step)),
        "vocab.txt": File(vocab),
        "empty.txt": File(b""),
    }


def fixture_state(step: int) -> dict[str, Any]:
    """The format-1 fixture's state at ``step`` plus its files (the test rebuilds it)."""
    return {**format1_state(step), "files": fixture_files(step)}


def main(path: str) -> None:
    history = ((1, "main", "one"), (2, "main", "two"), (3, "exp", "three"))
    with Ledger.open(path, create=True, fsync=True, chunk_size=4096) as lg:
        for step, branch, message in history:
            metrics = {"loss": 1.0 / step} if branch == "main" else {}
            lg.commit(
                fixture_state(step),
                step=step,
                metrics=metrics,
                branch=branch,
                rng=False,
                message=message,
            )
            if message == "two":
                lg.tag("v1")


if __name__ == "__main__":
    main(sys.argv[1])
