"""The safe point every adapter's loop hook shares: commit on a preemption signal or on a timer.

This module owns the adapters' side of ``ledger.preempt``: one object per
checkpointer that watches the configured signals (installed when armed, so a
copy made for another process arms its own), says at a loop hook whether a
signal arrived or ``every_seconds`` passed (the flags all-reduced with MAX over
the ranks when asked, so every rank decides alike), and after the commit
drains and hands the signal on. It pickles without its watch.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ledger.pending import drain_all
from ledger.preempt import Interval, PreemptSignal, SignalLike, agree, signal_number

DEFAULT_SIGNALS: tuple[SignalLike, ...] = (signal.SIGTERM,)
"""What a scheduler sends before it kills a job, unless told otherwise."""


@dataclass(frozen=True)
class Due:
    """What a safe point found: a signal arrived (on any rank), or the interval passed."""

    signalled: bool
    timed: bool

    def __bool__(self) -> bool:
        return self.signalled or self.timed


class SafePoint:
    """Signals and wall-clock interval of one checkpointer.

    Args:
        signals: the signals to commit on; None or empty watches none.
        every_seconds: commit when this many seconds of ``clock`` passed since the last commit.
        clock: seconds as a float (``time.monotonic``).
        arm: install the signal handlers now (else at :meth:`arm`).

    Raises:
        PreemptConfigError: a signal name that is no catchable signal, a bad interval.

    Example:
        >>> point = SafePoint(["SIGTERM", "SIGUSR1"], every_seconds=1800)  # doctest: +SKIP
        >>> for step in range(start, total):  # doctest: +SKIP
        ...     train_step()
        ...     if due := point.due():  # every process, every step
        ...         save_state(accelerator, "ckpt", step=step)
        ...         if point.done(due):  # drained; the signal's previous handler ran
        ...             break
    """

    def __init__(
        self,
        signals: Iterable[SignalLike] | None,
        every_seconds: float | None,
        clock: Callable[[], float] = time.monotonic,
        *,
        arm: bool = True,
    ) -> None:
        self.signals = tuple(signal_number(s) for s in signals or ())
        self.interval = Interval(every_seconds, clock=clock)
        self.watch: PreemptSignal | None = None
        if arm:
            self.arm()

    def __eq__(self, other: object) -> bool:
        """Same settings (signals, interval, clock) and armed alike: a pickled copy is equal."""
        if not isinstance(other, SafePoint):
            return NotImplemented
        mine = (self.signals, self.interval.seconds, self.interval.clock, self.watch is None)
        theirs = (other.signals, other.interval.seconds, other.interval.clock, other.watch is None)
        return mine == theirs

    __hash__ = None  # type: ignore[assignment]  # mutable: compared, never hashed

    def arm(self) -> None:
        """Install the signal handlers (once; a no-op without signals)."""
        if self.signals and self.watch is None:
            self.watch = PreemptSignal(self.signals)

    def check(self, *, sync: bool) -> Due:
        """At a loop hook: whether to commit now (``sync``: a collective over every rank)."""
        signalled = self.watch is not None and self.watch.requested()
        timed = self.interval.due()
        if sync:
            signalled, timed = agree(signalled, timed)
        return Due(signalled, timed)

    def due(self) -> Due:
        """``check(sync=True)``: for loops where every process commits (Accelerate, distributed).

        Every process must call it at the same point of every step (a collective
        when a process group is up; nothing to agree on without one).

        Example:
            >>> point = SafePoint(None, every_seconds=None)
            >>> bool(point.due())
            False
        """
        return self.check(sync=True)

    def done(self, due: Due) -> bool:
        """After the commit ``due`` asked for: restart the interval; after a signal, hand it on.

        Returns whether the loop should stop (a signal arrived on some process).

        Example:
            >>> point = SafePoint(None, every_seconds=None)
            >>> point.done(point.due())
            False
        """
        self.committed()
        if due.signalled:
            self.finish()
        return due.signalled

    def committed(self) -> None:
        """A commit was made (for whatever reason): the interval starts again."""
        self.interval.reset()

    def finish(self) -> None:
        """After the preemption commit: drain, then the signal's previous handler (if it came here)."""
        if self.watch is not None:
            self.watch.finish()
        else:
            drain_all()

    def close(self) -> None:
        """Stop watching; the previous handlers are back."""
        if self.watch is not None:
            self.watch.close()
            self.watch = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "watch": None}
