"""Keeping the disk busy ahead of a batch of object reads.

A checkout or restore reads thousands of chunks with a few worker threads,
each of which reads one chunk (``pread``) and then hashes it. Left alone, the
disk idles while every worker hashes, and reads issued by several threads at
once arrive at the device out of order. This module owns the two remedies:
:func:`in_pack_order` sorts a batch by pack and offset, so the workers walk
each pack front to back, and :class:`ReadAhead` asks the kernel
(``posix_fadvise(WILLNEED)``) to start reading the next :data:`AHEAD_BYTES`
of the batch while the workers are still hashing what came before. Advice is
bounded (the page cache holds at most that window beyond what is being read)
and only a hint: where a platform has no ``posix_fadvise``, or a call fails,
reads run as before. This module never reads object bytes, nor decides which
objects are read.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

AHEAD_BYTES = 64 << 20
"""How far ahead of the read that starts now the kernel is asked to read."""

Span = tuple[str, int, int]  # pack name, offset, length
Opener = Callable[[str], AbstractContextManager[int]]  # pack name -> ``with opener(p) as fd:``
T = TypeVar("T")

_WILLNEED: int | None = getattr(os, "POSIX_FADV_WILLNEED", None)


def in_pack_order(items: Sequence[T], span: Callable[[T], Span | None]) -> list[T]:
    """``items`` sorted by where their bytes lie (pack, then offset); unplaced ones last, in order.

    Example:
        >>> spans = {"a": ("p", 80, 8), "b": ("p", 0, 8), "c": None}
        >>> in_pack_order(["a", "b", "c"], spans.get)
        ['b', 'a', 'c']
    """
    placed = [(s, i) for i, s in enumerate(map(span, items)) if s is not None]
    placed.sort(key=lambda p: (p[0][0], p[0][1], p[1]))
    unplaced = [item for item, s in zip(items, map(span, items), strict=True) if s is None]
    return [items[i] for _, i in placed] + unplaced


class ReadAhead:
    """Advises the kernel of reads to come, a bounded window ahead of the one starting.

    ``spans[i]`` is where read ``i`` of the batch lies (None: not in a pack).
    Each worker calls :meth:`starting` with its read's index just before
    reading; every span that begins less than ``ahead`` bytes (of the batch)
    after it and was not advised yet is advised then, once.

    ``opener`` lends a descriptor of a pack (the store's bounded cache of open packs).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from ledger.objects.handles import PackHandles
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "p.pack").write_bytes(b"x" * 96)
        >>> handles = PackHandles()
        >>> spans = [("p", 0, 32), ("p", 32, 32), ("p", 64, 32)]
        >>> ahead = ReadAhead(spans, lambda p: handles.get(d / f"{p}.pack"), ahead=40)
        >>> ahead.starting(0); ahead.advised
        2
    """

    def __init__(
        self, spans: Sequence[Span | None], opener: Opener, ahead: int | None = None
    ) -> None:
        self._spans = list(spans)
        self._opener = opener
        self._ahead = AHEAD_BYTES if ahead is None else ahead
        self._starts: list[int] = []  # position of each read in the batch, in bytes
        pos = 0
        for s in self._spans:
            self._starts.append(pos)
            pos += s[2] if s is not None else 0
        self.advised = 0  # reads [0, advised) have been advised
        self._lock = threading.Lock()

    def starting(self, i: int) -> None:
        """Read ``i`` starts now: advise every read up to ``ahead`` bytes beyond its start."""
        if _WILLNEED is None or not 0 <= i < len(self._starts):
            return
        limit = self._starts[i] + self._ahead
        with self._lock:
            first = self.advised
            last = first
            while last < len(self._spans) and self._starts[last] <= limit:
                last += 1
            self.advised = last
        self._advise(self._spans[first:last])

    def _advise(self, spans: Sequence[Span | None]) -> None:
        """One ``posix_fadvise`` per run of adjacent spans of one pack."""
        runs: list[Span] = []  # (pack, start, length), merged where one ends where the next begins
        for s in spans:
            if s is None or s[2] == 0:
                continue
            if runs and runs[-1][0] == s[0] and runs[-1][1] + runs[-1][2] == s[1]:
                runs[-1] = (s[0], runs[-1][1], runs[-1][2] + s[2])
            else:
                runs.append(s)
        for pack, start, length in runs:
            # Only a hint: a pack that cannot be opened fails the read itself, with its name.
            with contextlib.suppress(OSError), self._opener(pack) as fd:
                os.posix_fadvise(fd, start, length, _WILLNEED)  # type: ignore[arg-type]
