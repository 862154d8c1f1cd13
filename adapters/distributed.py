"""Multi-process commits: every rank stores its shard in parallel, rank 0 writes one commit.

This module owns committing and restoring a training state that is split
across the processes of a ``torch.distributed`` job. Each rank flattens its
own shard (``DTensor`` local shards, or any per-rank dict) and writes its
chunks into the shared ledger directory at the same time as the others;
the ranks then send their manifest nodes (msgpack bytes, never pickle) to
rank 0, which writes one commit whose manifest covers all ranks, after every
rank reported its chunks durable. A rank that fails or dies makes the others
raise ``DistributedCommitError`` within ``timeout`` and no commit appears.
``commit(..., blocking=False)`` snapshots and does the rest in the background
(``_dist_async``).
Restoring with the same world size gives each rank its own shard back
(RNG included); with another world size, ``DTensor`` entries are resharded
by ``torch.distributed.checkpoint``'s load planner, data positions
(``ResumableSampler``) are merged over all ranks, the rest is rank 0's.

Commit layout (docs/adapters/distributed.md): the root holds ``world_size``
and ``ranks``, a list with one ``{"state": ..., "rng": ...}`` per rank, where
a ``DTensor`` is stored as ``{"__dtensor__": {"global_shape", "offsets"},
"local": <local tensor>}`` and a stateful object as its ``state_dict()``.

Example:
    >>> from ledger.adapters import distributed  # doctest: +SKIP
    >>> distributed.commit("ckpt", {"model": model, "optim": opt}, step=step)  # doctest: +SKIP
    >>> distributed.restore("ckpt", {"model": model, "optim": opt})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal, overload

import torch
from torch.distributed.tensor import DTensor

from ledger import Commit, Ledger, Part, Stage
from ledger.manifest import DictNode, ListNode, Node, TupleNode, ValueNode
from ledger.pending import CommitHandle
from ledger.state.rng import capture_rng, restore_rng

from . import _dist_remote
from ._common import (
    AdapterError,
    DistributedCommitError,
    LedgerLike,
    ResumeError,
    metric_floats,
    open_ledger,
    plain_params,
    resolve_resume,
)
from ._data_position import ResumableSampler, merge_positions, reseed_rng
from ._dist_apply import apply, stateful
from ._dist_async import commit_async, settle
from ._dist_channel import FAILED, OK, Channel
from ._preempt import SafePoint  # commit on a preemption signal or a timer (every rank)
from ._reshard import SHARD_KEY, load_resharded

__all__ = [
    "SHARD_KEY",
    "Channel",
    "ResumableSampler",
    "SafePoint",
    "apply",
    "commit",
    "expand",
    "restore",
]


# -- committing ------------------------------------------------------------------------


@overload
def commit(
    ledger: LedgerLike,
    state: Mapping[str, Any],
    *,
    step: int | None = ...,
    epoch: int | None = ...,
    metrics: Mapping[str, Any] | None = ...,
    params: Mapping[str, Any] | None = ...,
    data: Mapping[str, Any] | None = ...,
    message: str | None = ...,
    branch: str | None = ...,
    timeout: float = ...,
    blocking: Literal[True] = ...,
) -> Commit: ...


@overload
def commit(
    ledger: LedgerLike,
    state: Mapping[str, Any],
    *,
    step: int | None = ...,
    epoch: int | None = ...,
    metrics: Mapping[str, Any] | None = ...,
    params: Mapping[str, Any] | None = ...,
    data: Mapping[str, Any] | None = ...,
    message: str | None = ...,
    branch: str | None = ...,
    timeout: float = ...,
    blocking: Literal[False],
) -> CommitHandle: ...


@overload
def commit(
    ledger: LedgerLike,
    state: Mapping[str, Any],
    *,
    step: int | None = ...,
    epoch: int | None = ...,
    metrics: Mapping[str, Any] | None = ...,
    params: Mapping[str, Any] | None = ...,
    data: Mapping[str, Any] | None = ...,
    message: str | None = ...,
    branch: str | None = ...,
    timeout: float = ...,
    blocking: bool,
) -> Commit | CommitHandle: ...


def commit(
    ledger: LedgerLike,
    state: Mapping[str, Any],
    *,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
    message: str | None = None,
    branch: str | None = None,
    timeout: float = 300.0,
    blocking: bool = True,
) -> Commit | CommitHandle:
    """Commit every rank's shard as one commit (call it on every rank, like a collective).

    Args:
        ledger: the shared ledger directory (every rank opens it) or an open ``Ledger``.
        state: this rank's part: ``DTensor``/tensors, stateful objects, plain values.
        step, epoch, metrics, params, data, message, branch: metadata, taken from rank 0.
        timeout: seconds any rank waits for the others before giving up.
        blocking: False returns a ``CommitHandle`` once this rank's shard is
            snapshotted (copied, within the ledger's ``async_budget``); chunks
            are written and rank 0 commits in the background. The next
            ``commit``/``restore`` waits for it and raises its error
            (docs/adapters/distributed.md, "Asynchronous commits").

    Returns:
        The commit, on every rank (a ``CommitHandle`` of it when not blocking).

    Raises:
        DistributedCommitError: a rank failed, died or timed out; no commit was made.
        UnsupportedValueError: (on the rank whose state holds it) a value cannot be stored.

    ``ledger`` may be a remote URL (``s3://bucket/run``, ``file:///dir``): every
    rank then uploads its own chunks there and rank 0 moves the remote's branch;
    no rank needs a shared disk (docs/adapters/distributed.md, "Straight to an
    object store").

    Example:
        >>> c = distributed.commit("ckpt", {"model": model}, step=100)  # doctest: +SKIP
        >>> c = distributed.commit("s3://bucket/run", {"model": model}, step=100)  # doctest: +SKIP
        >>> h = distributed.commit("ckpt", {"model": model}, step=200, blocking=False)  # doctest: +SKIP
    """
    settle()
    meta = dict(step=step, epoch=epoch, metrics=metrics, params=params, data=data, message=message)
    if _dist_remote.is_remote_url(ledger):
        if not blocking:
            raise AdapterError(
                f"distributed.commit({str(ledger)!r}, blocking=False): asynchronous commits "
                "straight to a remote are not supported yet; commit to a shared ledger "
                "directory with blocking=False and push it, or pass blocking=True"
            )
        return _dist_remote.commit(str(ledger), state, timeout=timeout, branch=branch, **meta)
    if not blocking:
        return commit_async(ledger, state, timeout=timeout, branch=branch, **meta)
    ch = Channel(timeout)
    lg = _open_shared(ledger, ch)
    shard = lambda: (expand(state), capture_rng())  # noqa: E731 - read when the stage is open
    return commit_shard(lg, ch, shard, summary=state, branch=branch, **meta)


def commit_shard(
    lg: Ledger, ch: Channel, parts: Callable[[], tuple[Any, Any]], **meta: Any
) -> Commit:
    """Write this rank's part; rank 0 then writes the commit once every rank's is durable.

    ``parts()`` gives this rank's state (or a ``Snapshot`` of it) and its RNG. Runs on the caller's thread (blocking) or on the ledger's background
    writer (``blocking=False``); ``meta`` is ``summary`` plus the commit
    metadata, used on rank 0.
    """
    with lg.stage() as stage:  # from the first dedup decision until rank 0 moved the ref
        error: BaseException | None = None
        try:
            state, rng = parts()
            report = OK + _pair(stage.write(state).encode(), stage.write(rng).encode())
        except Exception as e:  # reported to every rank, re-raised here below
            error = e
            report = FAILED + f"{type(e).__name__}: {e}".encode()
        reports = ch.gather(report)
        outcome = None
        if reports is not None:
            outcome = _commit_on_rank0(stage, reports, **meta)
        result = ch.broadcast(outcome, "learning the commit from rank 0")
    if error is not None:
        raise error
    if result.startswith(FAILED):
        raise DistributedCommitError(result[1:].decode())
    lg.refresh()
    return lg.get(result[1:].decode())


_OPENED: dict[Path, Ledger] = {}
"""The ledger this process opened for each directory passed as a path: one ``Ledger`` per
directory and process, so a ``restore`` and the ``commit`` after it share its lineage."""


def _open_shared(ledger: LedgerLike, ch: Channel) -> Ledger:
    """Every rank's handle on the shared ledger; rank 0 creates it first when it is new.

    A path is opened once per process and kept (see ``_OPENED``).
    """
    if isinstance(ledger, Ledger):
        return ledger
    key = Path(ledger).resolve() if isinstance(ledger, str | os.PathLike) else None
    lg = _OPENED.get(key) if key is not None else None
    if ch.rank == 0 and lg is None:
        lg = open_ledger(ledger)
    ch.barrier("waiting for rank 0 to open the ledger")
    if lg is None:
        lg = Ledger.open(ledger)  # a path (open_ledger checked it on rank 0)
    if key is not None:
        _OPENED[key] = lg
    return lg


def _commit_on_rank0(stage: Stage, reports: list[bytes], **meta: Any) -> bytes:
    failed = [f"rank {r}: {p[1:].decode()}" for r, p in enumerate(reports) if p[:1] != OK]
    if failed:
        return FAILED + ("no commit was made; " + "; ".join(failed)).encode()
    try:
        ranks = []
        for report in reports:
            shard, rng = _unpair(report[1:])
            ranks.append({"state": Part.decode(shard), "rng": Part.decode(rng)})
        made = stage.commit(
            {"world_size": len(ranks), "ranks": ranks},
            meta["message"],
            step=meta["step"],
            epoch=meta["epoch"],
            metrics=metric_floats(meta["metrics"] or {}),
            params=plain_params(meta["params"] or {}),
            data=meta.get("data"),
            branch=meta["branch"],
            summary=meta["summary"],
        )
    except Exception as e:
        return FAILED + f"rank 0 could not write the commit: {type(e).__name__}: {e}".encode()
    return OK + made.id.encode()


def _pair(a: bytes, b: bytes) -> bytes:
    return len(a).to_bytes(8, "little") + a + b


def _unpair(data: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(data[:8], "little")
    return data[8 : 8 + n], data[8 + n :]


def expand(value: Any) -> Any:
    """A rank's state as a storable tree: DTensors as shard records, stateful objects as state dicts.

    Example:
        >>> expand({"w": torch.ones(1)})
        {'w': tensor([1.])}
    """
    if isinstance(value, DTensor):
        chunks = value.__create_chunk_list__()
        if len(chunks) != 1:
            raise AdapterError(
                f"a DTensor with {len(chunks)} local chunks (placements {value.placements}) "
                "cannot be committed yet; redistribute it to Shard/Replicate placements"
            )
        (chunk,) = chunks
        return {
            SHARD_KEY: {"global_shape": list(value.shape), "offsets": list(chunk.offsets)},
            "local": value.to_local(),
        }
    if isinstance(value, torch.Tensor):
        return value
    if stateful(value):
        return expand(value.state_dict())
    if isinstance(value, Mapping):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(expand(v) for v in value)
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


# -- restoring -------------------------------------------------------------------------


def restore(
    ledger: LedgerLike,
    state: MutableMapping[str, Any],
    rev: str = "HEAD",
    *,
    strict: bool = True,
    rng: bool = True,
    timeout: float = 300.0,
) -> Commit | None:
    """Load a distributed commit into this rank's live state (call it on every rank).

    Same world size: each rank gets exactly its own shard back (and its RNG).
    Another world size: ``DTensor`` entries are resharded through
    ``torch.distributed.checkpoint``'s load planner, data positions
    (:class:`ResumableSampler`) are merged over every stored rank, every
    other value comes from rank 0's shard, and the RNG is re-seeded from the
    stored ones (docs/adapters/distributed.md).

    Returns:
        The commit, or None on an empty ledger (every rank agrees: rank 0 decides).

    Raises:
        StateMismatchError: keys, shapes or dtypes differ (nothing was changed on this rank).
        ResumeError: the commit was not made by :func:`commit`.
        DistributedCommitError: another rank died or timed out.

    ``ledger`` may be a remote URL: each rank then reads only the chunks it
    needs straight from there (``rev`` names a commit, branch or tag there).

    Example:
        >>> distributed.restore("ckpt", {"model": model, "optim": opt}, "best")  # doctest: +SKIP
        >>> distributed.restore("s3://bucket/run", {"model": model})  # doctest: +SKIP
    """
    settle()
    if _dist_remote.is_remote_url(ledger):
        return _dist_remote.restore(
            str(ledger), state, rev, strict=strict, rng=rng, timeout=timeout
        )
    ch = Channel(timeout)
    lg = _open_shared(ledger, ch)
    chosen = resolve_resume(lg, rev) if ch.rank == 0 else None
    cid = ch.broadcast(chosen.encode() if chosen else b"", "learning the revision from rank 0")
    if not cid:
        return None
    lg.refresh()
    commit_id = cid.decode()
    root = lg.manifest(commit_id)[1].root
    stored_world = _world_size(root, commit_id)
    if stored_world == ch.world:
        tree = _stored_at(lg, commit_id, ch.rank)
        apply(state, tree["state"], strict=strict)
        if rng:
            restore_rng(tree["rng"])
    else:
        stored = _values_at(lg, commit_id, root, 0)  # positions merge before anything changes
        merge_positions(
            stored, stored_world, lambda r, p: _stored_at(lg, commit_id, r, "state", *p)
        )
        load_resharded(lg, commit_id, root, state, ch.group)
        apply(state, stored, strict=strict, tensors=False)
        if rng:
            rngs = [_stored_at(lg, commit_id, r, "rng", "torch") for r in range(stored_world)]
            reseed_rng(rngs, ch.world, ch.rank)
    ch.barrier("waiting for every rank to restore")
    if ch.rank == 0:
        lg.base_on(commit_id)  # rank 0 writes the commits: its next one continues from here
    return lg.get(commit_id)


def _world_size(root: DictNode, cid: str) -> int:
    stored = dict(zip(root.keys, root.values, strict=True))
    size, ranks = stored.get("world_size"), stored.get("ranks")
    if not (isinstance(size, ValueNode) and isinstance(ranks, ListNode)):
        raise ResumeError(
            f"commit {cid[:12]} was not made by ledger.adapters.distributed.commit; "
            "restore it with Ledger.restore"
        )
    return int(size.value)  # type: ignore[arg-type]


def _values_at(lg: Ledger, cid: str, root: DictNode, rank: int) -> Any:
    """A stored rank's state less its ``DTensor`` boxes (DCP's planner reads those it needs).

    Only the chunks of what :func:`apply` takes on another world size are read:
    every value and plain tensor, each record's shard description, no record's
    ``local`` tensor.
    """
    ranks = dict(zip(root.keys, root.values, strict=True))["ranks"]
    node = ranks.items[rank]  # type: ignore[union-attr]
    state = dict(zip(node.keys, node.values, strict=True))["state"]  # type: ignore[union-attr]
    paths = ["/".join(map(str, p)) for p in _unsharded(state, ("ranks", rank, "state"))]
    value: Any = lg.checkout(cid, paths=paths)
    for key in ("ranks", rank, "state"):
        value = value[0 if isinstance(value, list) else key]
    return value


def _unsharded(node: Node, path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """The paths under ``node`` that cover everything but the records' ``local`` tensors."""
    if isinstance(node, DictNode) and SHARD_KEY in node.keys:
        yield (*path, SHARD_KEY)
    elif not _holds_record(node):
        yield path
    elif isinstance(node, DictNode):
        for key, value in zip(node.keys, node.values, strict=True):
            yield from _unsharded(value, (*path, key))
    else:  # a list or tuple: every item is chosen, so none moves
        for i, value in enumerate(node.items):  # type: ignore[union-attr]
            yield from _unsharded(value, (*path, i))


def _holds_record(node: Node) -> bool:
    if isinstance(node, DictNode):
        return SHARD_KEY in node.keys or any(_holds_record(v) for v in node.values)
    if isinstance(node, ListNode | TupleNode):
        return any(_holds_record(v) for v in node.items)
    return False


def _stored_at(lg: Ledger, cid: str, rank: int, *path: Any) -> Any:
    """One stored rank's tree, or a value in it (a checkout keeps only the chosen list items)."""
    value: Any = lg.checkout(cid, paths=["/".join(map(str, ("ranks", rank, *path)))])
    for key in ("ranks", rank, *path):
        value = value[0 if isinstance(value, list) else key]
    return value
