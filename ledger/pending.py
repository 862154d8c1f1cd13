"""Asynchronous commits: one background writer per ledger, drained at exit and on SIGTERM.

This module owns the handle users get from ``commit(blocking=False)`` and the
rules around it: commits land in the order they were made (one writer
thread), a failure surfaces on ``result()`` and on the ledger's next call
(never lost), and pending commits are drained by ``close()``, at interpreter
exit and on SIGTERM (preemption) before the previous handler runs, unless a
``ledger.preempt`` watch holds SIGTERM: then the loop commits at its next safe
point first and the watch drains and hands the signal on. It never
touches training state: the caller snapshots before handing work over.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import Any

from ledger.history.records import Commit
from ledger.threads import block_signals

# How much nicer (Linux, per thread) background commit threads are than the caller.
BACKGROUND_NICE = 10


def lower_priority() -> None:
    """Lower the calling thread's CPU priority by :data:`BACKGROUND_NICE` (Linux only).

    Background commits then take the CPU the training loop leaves idle instead
    of competing with its step. Linux keeps a nice value per thread; elsewhere
    ``setpriority`` would apply to the whole process, so it is left alone.

    Example:
        >>> ThreadPoolExecutor(2, initializer=lower_priority)  # doctest: +SKIP
    """
    block_signals()  # and leave SIGTERM/SIGINT to the main thread (ledger.threads)
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        # Relative to the main thread's: a thread inherits the nice of the one that
        # started it, and pools may be started from an already lowered thread.
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + BACKGROUND_NICE)
        tid = threading.get_native_id()
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)


class CommitHandle:
    """A commit that is being written in the background.

    Example:
        >>> h = lg.commit(state, step=100, blocking=False)  # doctest: +SKIP
        >>> h.result().step  # doctest: +SKIP
        100
    """

    def __init__(self, future: Future[Commit]) -> None:
        self._future = future

    def result(self, timeout: float | None = None) -> Commit:
        """Wait for the commit and return it; raises what the background write raised."""
        return self._future.result(timeout)

    def done(self) -> bool:
        """Whether the write finished (successfully or not)."""
        return self._future.done()


class Pending:
    """The background writer of one ledger and its at-most-one outstanding commit."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[Commit] | None = None
        self._reported: Future[Commit] | None = None
        self._lock = threading.Lock()
        self.thread_ident: int | None = None

    def in_writer(self) -> bool:
        """Whether the caller is the background writer thread itself."""
        return threading.get_ident() == self.thread_ident

    def submit(self, work: Callable[[], Commit]) -> CommitHandle:
        """Run ``work`` on the writer thread after everything submitted before it."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    1, thread_name_prefix="ledger-commit", initializer=lower_priority
                )
                _install_drain(self)

            def run() -> Commit:
                self.thread_ident = threading.get_ident()
                return work()

            future = self._executor.submit(run)
            self._future = future
            return CommitHandle(future)

    def wait(self) -> Commit | None:
        """Wait for the outstanding commit; re-raise a background failure once.

        Returns the last background commit, or None if there was none.
        """
        future = self._future
        if future is None or self.in_writer():
            return None
        try:
            return future.result()
        except BaseException:
            if self._reported is future:
                return None
            self._reported = future
            raise

    def drain(self) -> None:
        """Wait for everything submitted; swallow nothing silently (errors are kept for wait())."""
        future = self._future
        if future is not None and not self.in_writer():
            with contextlib.suppress(BaseException):
                future.result()

    def shutdown(self) -> None:
        """Drain and stop the writer thread."""
        self.drain()
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


_live: weakref.WeakSet[Pending] = weakref.WeakSet()
_installed = False
_previous: Any = None


def drain_all() -> None:
    """Wait for every ledger's background commits (errors stay for each ledger's next call).

    Example:
        >>> drain_all()  # nothing pending: returns at once
    """
    for pending in list(_live):
        pending.drain()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    from ledger.preempt import claim, deliver

    if claim(signum):
        return  # a checkpointer commits at its next safe point, then drains and hands it on
    drain_all()
    deliver(signum, _previous, frame)


def _install_drain(pending: Pending) -> None:
    """Drain at interpreter exit and on SIGTERM (installed once, from the main thread only)."""
    global _installed, _previous
    _live.add(pending)
    if _installed:
        return
    _installed = True
    atexit.register(drain_all)
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            _previous = signal.signal(signal.SIGTERM, _on_sigterm)
