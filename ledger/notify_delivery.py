"""Delivering notifications in the background: a bounded queue, one thread, retries, timeouts.

This module owns the guarantee that a slow or dead webhook never blocks or
fails training: :meth:`Notifier.send` only puts the event on a bounded queue
(when it is full the event is dropped and a warning logged); one daemon
thread POSTs each payload with ``urllib`` under a timeout, retrying
transient failures (connection errors, timeouts, HTTP 429 and 5xx) with
exponential backoff (tenacity), never a 4xx. ``close()`` and interpreter exit
wait a short, bounded time for what is queued (:data:`DRAIN_AT_EXIT`), then
give up. Failures are logged on the ``ledger.notify`` logger with the hook's
name and host, never its URL (a secret).
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import weakref
from typing import Any

import msgspec

from ledger import __version__
from ledger.notify import Event, Hook, describe_url
from ledger.notify_payloads import payload
from ledger.threads import block_signals

log = logging.getLogger("ledger.notify")

QUEUE_SIZE = 256
TIMEOUT_S = 5.0
RETRIES = 3
BACKOFF_S = 0.5
#: Most seconds ``close()`` and interpreter exit wait for queued notifications.
DRAIN_AT_EXIT = 2.0


class Delivery(msgspec.Struct, frozen=True):
    """How sending to one hook went: ``ok``, the last HTTP status (0: none), the error."""

    hook: str
    ok: bool
    status: int = 0
    error: str | None = None
    attempts: int = 1


class _Transient(Exception):
    """A failure worth retrying (connection, timeout, 429, 5xx)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _Permanent(Exception):
    """A failure retrying cannot fix (4xx: a wrong or revoked URL, a payload refused)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def post(url: str, body: dict[str, Any], timeout: float) -> int:
    """POST ``body`` as JSON to ``url``; the HTTP status (raises on failure, see module doc).

    Example:
        >>> post("http://127.0.0.1:9/hook", {"text": "hi"}, 1.0)  # doctest: +SKIP
        200
    """
    try:
        return _post(url, body, timeout)
    except (ValueError, http.client.InvalidURL):  # their messages quote the URL: a secret
        raise _Permanent(
            "the URL is malformed (fix it with `ledger notify add --replace`)", 0
        ) from None
    except http.client.HTTPException as e:  # a broken response (bad status line, incomplete read)
        raise _Transient(f"{type(e).__name__}: bad HTTP response") from None


def _post(url: str, body: dict[str, Any], timeout: float) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body, allow_nan=False).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": f"training-ledger/{__version__}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read(65536)
            return int(response.status)
    except urllib.error.HTTPError as e:
        if e.code == 429 or e.code >= 500:
            raise _Transient(f"HTTP {e.code} {e.reason}", e.code) from None
        raise _Permanent(f"HTTP {e.code} {e.reason}", e.code) from None
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out, DNS
        reason = getattr(e, "reason", e)
        raise _Transient(f"{type(reason).__name__}: {reason}") from None


class Notifier:
    """One ledger's delivery thread (started by the first :meth:`send`).

    Example:
        >>> n = Notifier()
        >>> n.send({}, Event(event="commit", ledger="x"))  # no hooks: nothing queued
        >>> n.close()
    """

    def __init__(
        self,
        queue_size: int = QUEUE_SIZE,
        timeout: float = TIMEOUT_S,
        retries: int = RETRIES,
        backoff: float = BACKOFF_S,
    ) -> None:
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.dropped = 0
        self.delivered: list[Delivery] = []  # the last few, newest last (for status and tests)
        self._queue: queue.Queue[tuple[dict[str, Hook], Event] | None] = queue.Queue(queue_size)
        self._busy = 0
        self._idle = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pid = os.getpid()
        _live.add(self)

    def send(self, hooks: dict[str, Hook], event: Event) -> None:
        """Queue ``event`` for ``hooks``; never blocks (a full queue drops it, with a warning)."""
        if not hooks or self._closed:
            return
        if self._pid != os.getpid():  # a forked child: the parent's thread did not come along
            self._forked()
        with self._idle:
            try:
                self._queue.put_nowait((hooks, event))
            except queue.Full:
                self.dropped += 1
                log.warning(
                    "notification %r dropped: %d are waiting for slow webhooks (%s)",
                    event.event,
                    self._queue.qsize(),
                    ", ".join(hooks),
                )
                return
            self._busy += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ledger-notify", daemon=True)
                self._thread.start()

    def _forked(self) -> None:
        self._pid = os.getpid()
        self._queue = queue.Queue(self._queue.maxsize)
        self._busy = 0
        self._idle = threading.Condition()
        self._thread = None

    def deliver(self, name: str, hook: Hook, event: Event, retries: int | None = None) -> Delivery:
        """Send ``event`` to one hook now, with ``retries`` (default: the notifier's); never raises.

        Example:
            >>> Notifier().deliver("ci", hook, event).ok  # doctest: +SKIP
            True
        """
        from tenacity import (
            RetryError,
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
        )

        body = payload(hook.kind, event)
        retrying = Retrying(
            stop=stop_after_attempt((self.retries if retries is None else retries) + 1),
            wait=wait_exponential(multiplier=self.backoff, max=10 * self.backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=False,
        )
        where = f"{name} ({describe_url(hook.url)})"
        try:
            status = retrying(post, hook.url, body, self.timeout)
        except RetryError as e:
            cause = e.last_attempt.exception()
            attempts = e.last_attempt.attempt_number
            log.warning(
                "notification %r to %s failed after %d attempt(s): %s",
                event.event,
                where,
                attempts,
                cause,
            )
            return Delivery(name, False, getattr(cause, "status", 0), str(cause), attempts)
        except _Permanent as e:
            log.warning("notification %r to %s refused: %s (check the URL)", event.event, where, e)
            return Delivery(name, False, e.status, str(e))
        attempts = retrying.statistics.get("attempt_number", 1)
        log.debug("notification %r delivered to %s (HTTP %d)", event.event, where, status)
        return Delivery(name, True, status, None, attempts)

    def _run(self) -> None:
        block_signals()  # SIGTERM and SIGINT belong to the training loop (ledger.threads)
        while True:
            item = self._queue.get()
            if item is None:
                return
            hooks, event = item
            try:
                for name, hook in hooks.items():
                    done = self.deliver(name, hook, event)
                    self.delivered = [*self.delivered[-63:], done]
            except Exception:  # a bug here must not kill the thread and strand the queue
                log.exception("notification %r could not be sent", event.event)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued notification was sent or given up; False on timeout.

        Example:
            >>> Notifier().flush(1.0)
            True
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = DRAIN_AT_EXIT) -> None:
        """Wait up to ``timeout`` seconds for queued notifications, then stop taking new ones."""
        if self._closed:
            return
        if not self.flush(timeout):
            log.warning("gave up waiting for %d notification(s) after %.1f s", self._busy, timeout)
        self._closed = True
        if self._thread is not None:
            # still stuck on a slow hook when full: the daemon thread dies at exit
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)


_live: weakref.WeakSet[Notifier] = weakref.WeakSet()


@atexit.register
def _drain_at_exit() -> None:
    deadline = time.monotonic() + DRAIN_AT_EXIT
    for notifier in list(_live):
        notifier.close(max(0.0, deadline - time.monotonic()))
