"""The byte channel between the ranks of a distributed commit or restore.

This module owns :class:`Channel`: gathering, broadcasting and barriers of
plain bytes (msgpack parts, never pickle) over a gloo group whose operations
time out, so a rank that died or stopped answering turns into
``DistributedCommitError`` on the others instead of a hang.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ._common import AdapterError, DistributedCommitError

OK, FAILED = b"o", b"x"
"""The first byte of a rank's report: its part follows, or the error it met."""


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
