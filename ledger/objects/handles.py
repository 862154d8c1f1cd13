"""A small, thread-safe cache of open pack files, so open descriptors stay bounded.

This module owns the descriptors a process keeps open on packs it reads. A
ledger may hold tens of thousands of packs; keeping one descriptor per pack
ever read runs into the descriptor limit (``ulimit -n``), so at most
``capacity`` packs stay open, the least recently used is closed first. A
descriptor in use by a read is never closed under it: eviction (or
:meth:`PackHandles.invalidate`) only marks it, and the last reader closes
it. This module must never decide which packs exist or read their bytes.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from pathlib import Path

DEFAULT_CAPACITY = 32


class Handle:
    """One open descriptor, lent to a read: ``with handles.get(path) as fd: ...``.

    :meth:`PackHandles.get` has already opened the file and counted this read
    as a user; leaving the ``with`` block gives the descriptor back.
    """

    __slots__ = ("_owner", "dropped", "fd", "users")

    def __init__(self, fd: int, owner: PackHandles) -> None:
        self.fd = fd
        self.users = 0
        self.dropped = False
        self._owner = owner

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc: object) -> None:
        self._owner._release(self)


class PackHandles:
    """At most ``capacity`` pack files open at once, least recently used closed first.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> (d / "a.pack").write_bytes(b"LGPK")
        4
        >>> handles = PackHandles(capacity=1)
        >>> with handles.get(d / "a.pack") as fd:
        ...     os.pread(fd, 4, 0)
        b'LGPK'
        >>> handles.open_count()
        1
        >>> handles.close_all(); handles.open_count()
        0
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        self.capacity = capacity
        self._open: OrderedDict[str, Handle] = OrderedDict()  # by path as text: cheap to hash
        self._lock = threading.Lock()

    def get(self, path: Path | str) -> Handle:
        """A read-only descriptor of ``path``, to use as ``with handles.get(path) as fd:``.

        The descriptor stays valid until that ``with`` block ends, even if the
        cache evicts or invalidates it meanwhile.

        Raises:
            OSError: the file cannot be opened (missing, no permission, no
                descriptor left); the caller turns it into a ``LedgerError``
                naming the pack.
        """
        key = path if isinstance(path, str) else os.fspath(path)
        with self._lock:
            handle = self._open.get(key)
            if handle is not None:
                self._open.move_to_end(key)
            else:
                while len(self._open) >= self.capacity:
                    _, old = self._open.popitem(last=False)
                    self._drop(old)
                handle = Handle(os.open(key, os.O_RDONLY | os.O_CLOEXEC), self)
                self._open[key] = handle
            handle.users += 1
            return handle

    def _release(self, handle: Handle) -> None:
        with self._lock:
            handle.users -= 1
            if handle.dropped and handle.users == 0:
                _close(handle.fd)

    def _drop(self, handle: Handle) -> None:
        """Let go of a handle (lock held): closed now if idle, else by its last reader."""
        handle.dropped = True
        if handle.users == 0:
            _close(handle.fd)

    def invalidate(self, path: Path | str) -> None:
        """Forget ``path``'s descriptor (the pack was deleted or replaced)."""
        with self._lock:
            handle = self._open.pop(os.fspath(path), None)
            if handle is not None:
                self._drop(handle)

    def close_all(self) -> None:
        """Close every cached descriptor (those in use close when their read ends)."""
        with self._lock:
            while self._open:
                _, handle = self._open.popitem(last=False)
                self._drop(handle)

    def open_count(self) -> int:
        """How many descriptors the cache holds now."""
        with self._lock:
            return len(self._open)


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
