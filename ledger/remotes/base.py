"""The remote protocol: a small key -> bytes store that every backend implements.

This module owns the protocol (``get``, ``get_range``, ``get_versioned``,
``put``, ``put_if``, ``exists``, ``list``, ``delete``), the version tokens that
make ``put_if`` a compare-and-swap, the rules for keys, and the retry policy
for transient faults (exponential backoff with full jitter). Backends are the
bottom layer of ``ledger.remotes``: they move bytes by key and must never
interpret them (no packs, refs or commits here), and must never write a
credential anywhere.

Ordering contract: every ``put`` made before a ``put_if`` is visible to readers
no later than the ``put_if`` itself. Directory and fsspec backends write at
once; the Hub backend stages writes and lands them together with the
``put_if`` as one Hub commit.
"""

from __future__ import annotations

import abc
import random
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ledger.errors import LedgerError, RemoteError

#: An opaque token naming the state of a key (an ETag, a content hash, a Hub
#: commit); ``None`` means the key was absent when read.
Version = str | None
T = TypeVar("T")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.2
RETRY_CAP_S = 8.0


def check_key(key: str) -> str:
    """Validate a remote key: relative, ``/``-separated, no ``..``, plain characters.

    Example:
        >>> check_key("packs/ab.pack")
        'packs/ab.pack'
    """
    if not _KEY_RE.match(key) or ".." in key or len(key) > 512:
        raise RemoteError(f"remote key {key!r} is not valid")
    return key


class Remote(abc.ABC):
    """A key -> bytes store at ``url``; a missing key raises ``FileNotFoundError``.

    Example:
        >>> from ledger.remotes.local import DirectoryRemote
        >>> import tempfile
        >>> r = DirectoryRemote(Path(tempfile.mkdtemp()))
        >>> r.put("a/b", b"hi"); r.get("a/b")
        b'hi'
    """

    #: whether ``put_if`` is an atomic compare-and-swap (False: single writer only)
    atomic: bool = True
    #: whether ``get_range`` reads only the bytes asked for
    ranged: bool = True
    #: whether ``put`` only stages (the file must stay on disk until the next ``put_if``)
    stages_writes: bool = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.requests = 0

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (exactly, or ``RemoteError``)."""

    @abc.abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes | None, Version]:
        """The bytes under ``key`` (None if absent) and the version token to pass to ``put_if``."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | Path) -> None:
        """Store ``data`` (bytes, or a local file's content) under ``key``, replacing it."""

    @abc.abstractmethod
    def put_if(self, key: str, data: bytes, expected: Version, message: str = "") -> None:
        """Store ``data`` under ``key`` only if it still has version ``expected``.

        Raises:
            RemoteConflictError: the key changed since ``expected`` was read.
        """

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored (and visible to readers)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (a folder such as ``packs/``), sorted."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` (absent is fine)."""

    def transient(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth a retry (timeouts, resets, 5xx)."""
        return isinstance(exc, ConnectionError | TimeoutError)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""

    def retry(self, what: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` with retries on transient errors; wrap the last one in ``RemoteError``.

        Example:
            >>> r.retry("reading refs", lambda: r.get("refs.json"))  # doctest: +SKIP
        """
        for attempt in range(RETRY_ATTEMPTS):
            self.requests += 1
            try:
                return fn()
            except Exception as e:
                if isinstance(e, LedgerError | FileNotFoundError):
                    raise
                if not self.transient(e):
                    raise RemoteError(
                        f"{what} on remote {self.url} failed: {type(e).__name__}: {e}"
                    ) from e
                if attempt == RETRY_ATTEMPTS - 1:
                    raise RemoteError(
                        f"{what} on remote {self.url} failed after {RETRY_ATTEMPTS} attempts: "
                        f"{type(e).__name__}: {e}; check the network and retry (the remote "
                        "stays consistent: refs move only after their objects are stored)"
                    ) from e
                time.sleep(random.uniform(0, min(RETRY_CAP_S, RETRY_BASE_S * 2**attempt)))
        raise AssertionError("unreachable")
