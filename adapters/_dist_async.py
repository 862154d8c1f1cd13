"""Asynchronous distributed commits: ``distributed.commit(..., blocking=False)``.

This module owns the background path of a multi-process commit. On the
caller's thread each rank opens the shared ledger and takes a snapshot of
its part (``Ledger.snapshot``: flattened, bytes copied into the ledger's
reused snapshot buffers within its ``async_budget``), then hands the rest to
the ledger's background commit writer (``Ledger.submit``): writing the chunks,
the rank exchange over the ``Channel``'s gloo group, and on rank 0 the commit,
exactly the blocking path's :func:`ledger.adapters.distributed.commit_shard`.

Rules (docs/adapters/distributed.md, "Asynchronous commits"):

- one outstanding commit per process: every ``distributed.commit`` and
  ``restore`` first waits for the previous background commit (of any
  ledger) and raises its error once (:func:`settle`), so every rank runs the
  same collectives on the channel's group in commit order, from one thread
  at a time, and at most one snapshot is held;
- an error (this rank's, or another rank's through rank 0's verdict) is
  raised by the handle's ``result()`` and by this rank's next call;
- ``Ledger.close()``, interpreter exit and SIGTERM wait for the pending
  commit (the ledger's own writer does it, ``ledger.pending``);
- a state over the budget is committed on the caller's thread, with a
  warning; a state that cannot be stored raises on its rank at once, after
  telling the other ranks (whose handles then fail), as a blocking commit does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from concurrent.futures import Future
from typing import Any

from ledger import Commit, Ledger
from ledger.pending import CommitHandle
from ledger.state.rng import capture_rng

from ._common import LedgerLike
from ._dist_channel import Channel

_last: tuple[Ledger, CommitHandle] | None = None
"""This process's latest background distributed commit, and the ledger writing it."""


def settle() -> None:
    """Wait for this process's pending distributed commit; raise its error (once, as ``Ledger.wait``).

    Called first by every ``distributed.commit`` and ``restore``, before any
    collective, so all ranks stop at the same place when a commit failed.

    Example:
        >>> settle()  # nothing pending: returns at once
    """
    global _last
    if _last is None:
        return
    lg, _ = _last
    _last = None
    lg.wait()


def commit_async(
    ledger: LedgerLike, state: Mapping[str, Any], *, timeout: float, **meta: Any
) -> CommitHandle:
    """Snapshot this rank's part and commit it in the background (``commit(blocking=False)``).

    Returns:
        A handle whose ``result()`` is the commit (on every rank), or raises
        ``DistributedCommitError`` (another rank failed, died or timed out)
        or this rank's own error.

    Raises:
        UnsupportedValueError: this rank's state holds a value that cannot be
            stored (the other ranks' handles fail with DistributedCommitError).

    Example:
        >>> h = commit_async("ckpt", {"model": model}, timeout=300, step=5)  # doctest: +SKIP
    """
    global _last
    from .distributed import _open_shared, commit_shard, expand

    settle()
    ch = Channel(timeout)  # made here: a new gloo group is a collective of the default group
    lg = _open_shared(ledger, ch)
    summary = dict(state)  # rank 0's model summary reads the modules' structure, not their values
    rng = capture_rng()  # fresh copies already: nothing to snapshot
    try:
        snap = lg.snapshot(expand(state))
    except Exception as e:
        error = e

        def fail() -> tuple[Any, Any]:
            raise error

        # The other ranks' writers wait for this rank's report: send it from this rank's
        # writer, which then holds the error for the next call, as theirs do.
        _last = (lg, lg.submit(lambda: commit_shard(lg, ch, fail, summary=summary, **meta)))
        raise
    if not snap.copied:
        warnings.warn(
            f"rank {ch.rank}: the state ({snap.nbytes / 2**30:.2f} GiB) exceeds the async commit "
            f"memory budget ({lg.async_budget / 2**30:.2f} GiB): committing synchronously",
            stacklevel=3,
        )
        done: Future[Commit] = Future()
        done.set_result(commit_shard(lg, ch, lambda: (snap, rng), summary=summary, **meta))
        return CommitHandle(done)
    handle = lg.submit(lambda: commit_shard(lg, ch, lambda: (snap, rng), summary=summary, **meta))
    _last = (lg, handle)
    return handle
