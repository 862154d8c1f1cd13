"""The remote protocol: a small key -> bytes store that every backend implements.

This module owns the protocol (``get``, ``get_range``, ``get_versioned``,
``put``, ``put_if``, ``exists``, ``list``, ``delete``), the version tokens that
make ``put_if`` a compare-and-swap, the rules for keys, and the retry policy
for transient faults (:class:`RetryingRemote`, applied once by
``open_remote``: exponential backoff with full jitter, a server's
``Retry-After`` honoured, built on tenacity). A fault is transient by its type
(connection, timeout) or by the HTTP status it carries (408, 429, 5xx), never
by its name. Backends are the bottom layer of ``ledger.remotes``: they move
bytes by key and must never interpret them (no packs, refs or commits here),
and must never write a credential anywhere.

Ordering contract: every ``put`` made before a ``put_if`` is visible to readers
no later than the ``put_if`` itself. Directory and fsspec backends write at
once; the Hub backend stages writes and lands them together with the
``put_if`` as one Hub commit.
"""

from __future__ import annotations

import abc
import datetime as dt
import email.utils
import errno
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TypeVar

import tenacity

from ledger.errors import LedgerError, RemoteCorruptionError, RemoteError

#: An opaque token naming the state of a key (an ETag, a content hash, a Hub
#: commit); ``None`` means the key was absent when read.
Version = str | None
T = TypeVar("T")

_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
RETRY_ATTEMPTS = 6
RETRY_BASE_S = 0.2
RETRY_CAP_S = 8.0
#: The longest ``Retry-After`` honoured (a longer one is waited this long).
MAX_RETRY_AFTER_S = 60.0
#: HTTP statuses that say "try again": timeout, too early, too many requests, server faults.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: OS errors a network filesystem raises for a fault that may pass.
TRANSIENT_ERRNO = frozenset(
    {errno.EBUSY, errno.ETIMEDOUT, errno.ECONNRESET, errno.ECONNABORTED, errno.EAGAIN, 121}
)  # 121: EREMOTEIO
#: An HTTP answer carried by an error: its status and headers.
Answer = tuple[int, Mapping[str, str]]
#: Bounded reads take a body in pieces of at most this many bytes.
READ_PIECE = 1 << 20


def check_key(key: str) -> str:
    """Validate a remote key: relative, ``/``-separated, no ``..``, plain characters.

    Example:
        >>> check_key("packs/ab.pack")
        'packs/ab.pack'
    """
    if not _KEY_RE.match(key) or ".." in key or len(key) > 512:
        raise RemoteError(f"remote key {key!r} is not valid")
    return key


def too_large(key: str, url: str, limit: int) -> RemoteCorruptionError:
    """The error for a value over the cap of its record kind (read no further than the cap)."""
    return RemoteCorruptionError(
        f"{key} on remote {url} holds more than {limit} bytes (or is not a regular file), "
        "more than a record of its kind may: the remote is damaged or was tampered with "
        "(it was read no further); push to it again from a ledger that has its commits",
        object=key,
        url=url,
        cap=limit,
    )


def take_capped(
    pieces: Iterable[bytes], limit: int, key: str, url: str, declared: int | None = None
) -> bytes:
    """Join a body as it arrives, refusing it (``too_large``) as soon as it passes ``limit``.

    ``declared`` (a ``Content-Length``) over ``limit`` refuses it before any piece is read.

    Example:
        >>> take_capped([b"ab", b"c"], 3, "refs.json", "memory://r")
        b'abc'
    """
    if declared is not None and declared > limit:
        raise too_large(key, url, limit)
    body = bytearray()
    for piece in pieces:
        body += piece
        if len(body) > limit:
            raise too_large(key, url, limit)
    return bytes(body)


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

    def check_write_access(self) -> None:  # noqa: B027  (a default, not abstract)
        """Refuse, before anything is written, credentials that cannot write here.

        The default does nothing (the backend's own errors say it at the first
        write); the Hub asks ``whoami``.
        """

    @abc.abstractmethod
    def get(self, key: str, limit: int | None = None) -> bytes:
        """The bytes stored under ``key``.

        With ``limit`` (the cap of the record read, docs/format.md section 13.1),
        a value over ``limit`` bytes raises ``RemoteCorruptionError`` after at
        most ``limit`` bytes (+ one piece) were read, never the whole value.
        """

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``start`` (exactly, or ``RemoteError``)."""

    @abc.abstractmethod
    def get_versioned(self, key: str, limit: int | None = None) -> tuple[bytes | None, Version]:
        """The bytes under ``key`` (None if absent) and the version token to pass to ``put_if``.

        ``limit`` bounds the read as in :meth:`get`.
        """

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

    #: exception types of the backend's client (besides ConnectionError and
    #: TimeoutError) that mean the request never got an answer
    network_errors: tuple[type[BaseException], ...] = ()

    def answer_of(self, exc: BaseException) -> Answer | None:
        """The HTTP status and headers ``exc`` carries (None: it is not an HTTP answer)."""
        return None

    def unwrap(self) -> Remote:
        """The backend itself (a wrapper returns the remote it wraps)."""
        return self

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (optional)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_transient(remote: Remote, exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is a fault worth sending the request again for.

    Example:
        >>> is_transient(DirectoryRemote(Path("/tmp")), TimeoutError())  # doctest: +SKIP
        True
    """
    for e in _chain(exc):
        if isinstance(e, LedgerError | FileNotFoundError | PermissionError | FileExistsError):
            return False
        answer = remote.answer_of(e)
        if answer is not None:
            return answer[0] in TRANSIENT_STATUS
        if isinstance(e, (ConnectionError, TimeoutError, *remote.network_errors)):
            return True
        if isinstance(e, OSError) and e.errno in TRANSIENT_ERRNO:
            return True
    return False


def retry_after(remote: Remote, exc: BaseException) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date), if any."""
    for e in _chain(exc):
        answer = remote.answer_of(e)
        if answer is None:
            continue
        value = next((v for k, v in answer[1].items() if k.lower() == "retry-after"), None)
        if value is None:
            return None
        value = value.strip()
        if value.isdigit():
            return min(float(value), MAX_RETRY_AFTER_S)
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        wait = (when - dt.datetime.now(dt.timezone.utc)).total_seconds()
        return min(max(wait, 0.0), MAX_RETRY_AFTER_S)
    return None


class _Wait(tenacity.wait.wait_base):
    """Full-jitter exponential backoff, but never less than the server's ``Retry-After``."""

    def __init__(self, remote: Remote) -> None:
        self.remote = remote
        self.backoff = tenacity.wait_random_exponential(multiplier=RETRY_BASE_S, max=RETRY_CAP_S)

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after(self.remote, exc) if exc is not None else None
        jitter = self.backoff(retry_state)
        return jitter if asked is None else max(asked, jitter)


class RetryingRemote(Remote):
    """A backend whose every call is retried on transient faults (``open_remote`` applies it).

    A fault that is not transient, or the last transient one, becomes a
    ``RemoteError`` naming the remote and the operation; ``LedgerError`` and
    ``FileNotFoundError`` pass through unchanged.

    Example:
        >>> r = RetryingRemote(DirectoryRemote(Path("/tmp/r")))  # doctest: +SKIP
        >>> r.get("refs.json")  # doctest: +SKIP
    """

    def __init__(self, backend: Remote, attempts: int = RETRY_ATTEMPTS) -> None:
        super().__init__(backend.url)
        self.backend = backend
        self.atomic = backend.atomic
        self.ranged = backend.ranged
        self.stages_writes = backend.stages_writes
        self.attempts = attempts
        self._policy = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=_Wait(backend),
            retry=tenacity.retry_if_exception(lambda e: is_transient(backend, e)),
            before=self._count,
            reraise=True,
        )

    def _count(self, _: tenacity.RetryCallState) -> None:
        self.requests += 1

    def _call(self, what: str, fn: Callable[..., T], *args: object) -> T:
        try:
            return self._policy(fn, *args)
        except (LedgerError, FileNotFoundError):
            raise
        except Exception as e:
            if not is_transient(self.backend, e):
                raise RemoteError(
                    f"{what} on remote {self.url} failed: {type(e).__name__}: {e}"
                ) from e
            raise RemoteError(
                f"{what} on remote {self.url} failed after {self.attempts} attempts: "
                f"{type(e).__name__}: {e}; check the network and retry (the remote "
                "stays consistent: refs move only after their objects are stored)"
            ) from e

    def get(self, key: str, limit: int | None = None) -> bytes:
        return self._call(f"reading {key}", self.backend.get, key, limit)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._call(f"reading {key}", self.backend.get_range, key, start, length)

    def get_versioned(self, key: str, limit: int | None = None) -> tuple[bytes | None, Version]:
        return self._call(f"reading {key}", self.backend.get_versioned, key, limit)

    def put(self, key: str, data: bytes | Path) -> None:
        self._call(f"writing {key}", self.backend.put, key, data)

    def put_if(self, key: str, data: bytes, expected: Version, message: str = "") -> None:
        self._call(f"updating {key}", self.backend.put_if, key, data, expected, message)

    def exists(self, key: str) -> bool:
        return self._call(f"checking {key}", self.backend.exists, key)

    def list(self, prefix: str) -> list[str]:
        return self._call(f"listing {prefix}", self.backend.list, prefix)

    def delete(self, key: str) -> None:
        self._call(f"deleting {key}", self.backend.delete, key)

    def check_write_access(self) -> None:
        self._call("checking the credentials", self.backend.check_write_access)

    def unwrap(self) -> Remote:
        return self.backend

    def close(self) -> None:
        self.backend.close()
