"""Deterministic training states for the retention / gc / verify tests and their children.

Not a test and not a child process by itself: ``tests/test_gc*.py`` and
``tests/test_retention.py`` load it by path, the ``gc_*.py`` children import
it (``crash_commit.py`` uses its :func:`tree_digest`). A state is a pure
function of ``(run, i)``, so a parent can recompute what any commit must
restore to from the commit's message (``run R commit I``) alone, even after
the child that made it was SIGKILLed.

Each state has a tensor shared by every commit (deduplicated), one of four
``pool`` tensors (shared by every fourth commit, so packs end up partly
live), a tensor unique to the commit, and plain values.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

KEYS = ("shared", "pool", "unique", "meta")


def make_state(run: int, i: int, n: int = 4096) -> dict[str, Any]:
    """The state of commit ``i`` of run ``run`` (``n`` float32 per tensor)."""
    g = torch.Generator().manual_seed(run * 1_000_003 + i)
    pool = torch.Generator().manual_seed(7_777 + i % 4)
    return {
        "shared": torch.arange(n, dtype=torch.float32),
        "pool": torch.rand(n, generator=pool),
        "unique": torch.rand(n, generator=g),
        "meta": {"run": run, "i": i, "name": f"r{run}-{i}"},
    }


def message(run: int, i: int) -> str:
    """The commit message that names a state."""
    return f"run {run} commit {i}"


def parse(msg: str | None) -> tuple[int, int]:
    """(run, i) from a message made by :func:`message`."""
    assert msg is not None
    words = msg.split()
    assert len(words) == 4 and words[0] == "run" and words[2] == "commit", msg
    return int(words[1]), int(words[3])


def commit_state(
    lg: Any,
    run: int,
    i: int,
    n: int = 4096,
    *,
    branch: str | None = None,
    metrics: dict[str, float] | None = None,
) -> Any:
    """Commit state ``(run, i)`` to the ledger ``lg``: named by its message, step ``i``, no RNG."""
    return lg.commit(
        make_state(run, i, n),
        message=message(run, i),
        step=i,
        metrics=metrics,
        branch=branch,
        rng=False,
    )


def restores(lg: Any, cid: str, n: int = 4096) -> bool:
    """Whether ``cid`` checks out bit-exactly to the state its message names."""
    run, i = parse(lg.get(cid).message)
    return bool(digest(lg.checkout(cid)) == digest(make_state(run, i, n)))


def tree_digest(tree: Any, keys: tuple[str, ...]) -> str:
    """A hash of ``tree[k]`` for ``k`` in ``keys``: tensors by dtype, shape and raw bytes; values by repr."""
    h = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            h.update(b"{")
            for k in sorted(value, key=repr):
                h.update(repr(k).encode())
                walk(value[k])
            h.update(b"}")
        elif isinstance(value, list | tuple):
            h.update(b"(" if isinstance(value, tuple) else b"[")
            for v in value:
                walk(v)
            h.update(b")")
        else:
            h.update(repr(value).encode())

    walk({k: tree[k] for k in keys})
    return h.hexdigest()


def digest(tree: Any) -> str:
    """A hash of a state's user keys (:data:`KEYS`), see :func:`tree_digest`."""
    return tree_digest(tree, KEYS)
