"""Write the format-3 fixture ledger (one pack per commit, no merged index) that tests must read.

Run once when the fixture was made (2026-12-03, training-ledger 0.1.0 with
format 3, before the merged pack index of format 4); never re-run to "fix" a
failing compat test: a failure means new code no longer reads ledgers
written by this version.

    python tests/data/make_format3.py tests/data/ledger-format3
"""

from __future__ import annotations

import sys

from make_format2 import fixture_state

from ledger import Ledger

HISTORY = (
    (1, "main", "one"),
    (2, "main", "two"),
    (3, "exp", "three"),
    (4, "main", "four"),
    (5, "main", "five"),
)


def main(path: str) -> None:
    with Ledger.open(path, create=True, fsync=True, chunk_size=4096) as lg:
        for step, branch, message in HISTORY:
            lg.commit(
                fixture_state(step),
                step=step,
                metrics={"loss": 1.0 / step},
                branch=branch,
                rng=False,
                message=message,
            )
            if message == "two":
                lg.tag("v1")


if __name__ == "__main__":
    main(sys.argv[1])
