"""Multi-process commits: every rank stores its shard in parallel, rank 0 writes one commit.

This module owns committing and restoring a training state that is split
across the processes of a ``torch.distributed`` job. Each rank flattens its
own shard (``DTensor`` local shards, or any per-rank dict) and writes its
chunks into the shared ledger directory at the same time as the others;
the ranks then send their manifest nodes (msgpack bytes, never pickle) to
rank 0, which writes one commit whose manifest covers all ranks, after every
rank reported its chunks durable. A rank that fails or dies makes the others
raise ``DistributedCommitError`` within ``timeout`` and no commit appears.
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

import datetime as dt
import os
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from ledger import Commit, Ledger, Part, Stage
from ledger.errors import StateMismatchError
from ledger.manifest import DictNode, ListNode, ValueNode
from ledger.state.rng import capture_rng, restore_rng

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
from ._reshard import SHARD_KEY, load_resharded

__all__ = ["SHARD_KEY", "ResumableSampler", "commit", "restore"]


_OK, _FAILED = b"o", b"x"


class Channel:
    """Byte messages between ranks over a gloo group whose operations time out.

    Example:
        >>> ch = Channel(timeout=30.0)  # doctest: +SKIP
        >>> parts = ch.gather(b"hello")  # rank 0: one bytes per rank; others: None  # doctest: +SKIP
    """

    _groups: dict[float, Any] = {}

    def __init__(self, timeout: float) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise AdapterError(
                "ledger.adapters.distributed needs torch.distributed initialised "
                "(dist.init_process_group); for one process use Ledger.commit"
            )
        self.timeout = float(timeout)
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        group = Channel._groups.get(self.timeout)
        if group is None:
            group = self._run(
                "setting up the gloo group (every rank must call this)",
                lambda: dist.new_group(backend="gloo", timeout=dt.timedelta(seconds=self.timeout)),
            )
            Channel._groups[self.timeout] = group
        self.group = group

    def _run(self, what: str, op: Callable[[], Any]) -> Any:
        try:
            return op()
        except (RuntimeError, dist.DistError) as e:
            raise DistributedCommitError(
                f"rank {self.rank}: {what} failed or timed out after {self.timeout:g}s "
                f"(another rank died or stopped answering: {e})"
            ) from e

    def gather(self, data: bytes) -> list[bytes] | None:
        """Rank 0 gets every rank's ``data`` in rank order; the others get None."""
        size = torch.tensor([len(data)], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        self._run("exchanging shard sizes", lambda: dist.all_gather(sizes, size, group=self.group))
        longest = max(int(s.item()) for s in sizes)
        buf = torch.zeros(max(longest, 1), dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        parts = [torch.empty_like(buf) for _ in range(self.world)] if self.rank == 0 else None
        self._run(
            "gathering shards on rank 0",
            lambda: dist.gather(buf, parts, dst=0, group=self.group),
        )
        if parts is None:
            return None
        return [bytes(p[: int(n.item())].numpy()) for p, n in zip(parts, sizes, strict=True)]

    def broadcast(self, data: bytes | None, what: str) -> bytes:
        """Rank 0's ``data`` on every rank."""
        size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
        self._run(what, lambda: dist.broadcast(size, src=0, group=self.group))
        buf = torch.zeros(max(int(size.item()), 1), dtype=torch.uint8)
        if self.rank == 0 and data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self._run(what, lambda: dist.broadcast(buf, src=0, group=self.group))
        return bytes(buf[: int(size.item())].numpy())

    def barrier(self, what: str) -> None:
        """Wait for every rank (or fail after the timeout)."""
        self._run(what, lambda: dist.barrier(group=self.group))


# -- committing ------------------------------------------------------------------------


def commit(
    ledger: LedgerLike,
    state: Mapping[str, Any],
    *,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    message: str | None = None,
    branch: str | None = None,
    timeout: float = 300.0,
) -> Commit:
    """Commit every rank's shard as one commit (call it on every rank, like a collective).

    Args:
        ledger: the shared ledger directory (every rank opens it) or an open ``Ledger``.
        state: this rank's part: ``DTensor``/tensors, stateful objects, plain values.
        step, epoch, metrics, params, message, branch: metadata, taken from rank 0.
        timeout: seconds any rank waits for the others before giving up.

    Returns:
        The commit, on every rank.

    Raises:
        DistributedCommitError: a rank failed, died or timed out; no commit was made.
        UnsupportedValueError: (on the rank whose state holds it) a value cannot be stored.

    Example:
        >>> c = distributed.commit("ckpt", {"model": model}, step=100)  # doctest: +SKIP
    """
    ch = Channel(timeout)
    lg = _open_shared(ledger, ch)
    with lg.stage() as stage:  # from the first dedup decision until rank 0 moved the ref
        error: BaseException | None = None
        try:
            shard = stage.write(expand(state))
            rng = stage.write(capture_rng())
            report = _OK + _pair(shard.encode(), rng.encode())
        except Exception as e:  # reported to every rank, re-raised here below
            error = e
            report = _FAILED + f"{type(e).__name__}: {e}".encode()
        parts = ch.gather(report)
        outcome = None
        if parts is not None:
            outcome = _commit_on_rank0(
                stage,
                parts,
                summary=state,
                step=step,
                epoch=epoch,
                metrics=metrics,
                params=params,
                message=message,
                branch=branch,
            )
        result = ch.broadcast(outcome, "learning the commit from rank 0")
    if error is not None:
        raise error
    if result.startswith(_FAILED):
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
    failed = [f"rank {r}: {p[1:].decode()}" for r, p in enumerate(reports) if p[:1] != _OK]
    if failed:
        return _FAILED + ("no commit was made; " + "; ".join(failed)).encode()
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
            branch=meta["branch"],
            summary=meta["summary"],
        )
    except Exception as e:
        return _FAILED + f"rank 0 could not write the commit: {type(e).__name__}: {e}".encode()
    return _OK + made.id.encode()


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
    if _stateful(value):
        return expand(value.state_dict())
    if isinstance(value, Mapping):
        return {k: expand(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(expand(v) for v in value)
    if isinstance(value, list):
        return [expand(v) for v in value]
    return value


def _stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


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

    Example:
        >>> distributed.restore("ckpt", {"model": model, "optim": opt}, "best")  # doctest: +SKIP
    """
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
        stored = _stored_at(lg, commit_id, 0, "state")  # positions merge before anything changes
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


def _stored_at(lg: Ledger, cid: str, rank: int, *path: Any) -> Any:
    """One stored rank's tree, or a value in it (a checkout keeps only the chosen list items)."""
    value: Any = lg.checkout(cid, paths=["/".join(map(str, ("ranks", rank, *path)))])
    for key in ("ranks", rank, *path):
        value = value[0 if isinstance(value, list) else key]
    return value


def apply(
    live: MutableMapping[Any, Any], stored: Mapping[Any, Any], *, strict: bool, tensors: bool = True
) -> None:
    """Load a stored shard tree into live objects; everything is checked before anything changes.

    With ``tensors=False`` tensor and DTensor entries are left as they are
    (a reshard already loaded them) and only the other values are taken.
    """
    plan = _Plan(strict=strict, tensors=tensors)
    plan.mapping(live, stored, ())
    if plan.problems:
        shown = "; ".join(plan.problems[:8])
        raise StateMismatchError(f"cannot restore: {shown}; nothing was changed on this rank")
    for act in plan.actions:
        act()


class _Plan:
    """Collects the changes a restore makes (run only when there is no problem)."""

    def __init__(self, *, strict: bool, tensors: bool) -> None:
        self.strict = strict
        self.tensors = tensors
        self.actions: list[Callable[[], None]] = []
        self.problems: list[str] = []

    def mapping(
        self, live: MutableMapping[Any, Any], stored: Mapping[Any, Any], path: tuple[Any, ...]
    ) -> None:
        for key, value in stored.items():
            if key in live:
                self.slot(live, key, value, (*path, key))
            elif self.strict and path == ():
                self.problems.append(
                    f"{_where((*path, key))} is in the commit but not in the live state"
                )
            else:
                self._assign(live, key, _plain_value(value))
        if self.strict and path == ():
            for key in live:
                if key not in stored:
                    self.problems.append(
                        f"{_where((key,))} is in the live state but not in the commit"
                    )

    def slot(self, container: Any, key: Any, stored: Any, path: tuple[Any, ...]) -> None:
        live = container[key]
        if isinstance(live, DTensor) or _is_record(stored):
            self._shard(live, stored, path)
        elif isinstance(live, torch.Tensor):
            self._tensor(live, stored, path)
        elif _stateful(live):
            current = dict(live.state_dict())
            if not isinstance(stored, Mapping):
                self.problems.append(
                    f"{_where(path)}: a stateful object live, {type(stored).__name__} stored"
                )
                return
            self.mapping(current, stored, path)
            self.actions.append(lambda: live.load_state_dict(current))
        elif isinstance(live, MutableMapping) and isinstance(stored, Mapping):
            self.mapping(live, stored, path)
        elif isinstance(live, list) and isinstance(stored, list) and len(live) == len(stored):
            for i, item in enumerate(stored):
                self.slot(live, i, item, (*path, i))
        elif isinstance(live, tuple) and isinstance(stored, tuple) and len(live) == len(stored):
            rebuilt = list(live)
            for i, item in enumerate(stored):
                self.slot(rebuilt, i, item, (*path, i))
            self.actions.append(lambda: container.__setitem__(key, tuple(rebuilt)))
        else:
            self._assign(container, key, _plain_value(stored))

    def _shard(self, live: Any, stored: Any, path: tuple[Any, ...]) -> None:
        if not self.tensors:
            return
        if not (isinstance(live, DTensor) and _is_record(stored)):
            self.problems.append(f"{_where(path)}: a sharded tensor on one side only")
            return
        (chunk,) = live.__create_chunk_list__()
        info = stored[SHARD_KEY]
        if list(live.shape) != info["global_shape"] or list(chunk.offsets) != info["offsets"]:
            self.problems.append(
                f"{_where(path)}: shard at {list(chunk.offsets)} of {list(live.shape)} live, "
                f"at {info['offsets']} of {info['global_shape']} stored"
            )
            return
        self._tensor(live.to_local(), stored["local"], path)

    def _tensor(self, live: torch.Tensor, stored: Any, path: tuple[Any, ...]) -> None:
        if not self.tensors:
            return
        if not isinstance(stored, torch.Tensor):
            self.problems.append(f"{_where(path)}: a tensor live, {type(stored).__name__} stored")
        elif live.shape != stored.shape or live.dtype != stored.dtype:
            self.problems.append(
                f"{_where(path)}: {live.dtype}{list(live.shape)} live, {stored.dtype}{list(stored.shape)} stored"
            )
        else:

            def act() -> None:
                with torch.no_grad():
                    live.copy_(stored)

            self.actions.append(act)

    def _assign(self, container: Any, key: Any, value: Any) -> None:
        self.actions.append(lambda: container.__setitem__(key, value))


def _is_record(value: Any) -> bool:
    return isinstance(value, Mapping) and SHARD_KEY in value


def _plain_value(value: Any) -> Any:
    """A stored value for a slot the live state has no object for (records become their local tensor)."""
    if _is_record(value):
        return value["local"]
    return value


def _where(path: tuple[Any, ...]) -> str:
    return "state" + "".join(f"[{p!r}]" for p in path)
