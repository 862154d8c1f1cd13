"""Commit before a scheduler kills the job: signal flags, wall-clock intervals, rank agreement.

This module owns the pieces a training loop needs to survive preemption.
:class:`PreemptSignal` watches the signals a scheduler sends before it kills a
job (SIGTERM by default; SIGUSR1 and others as SLURM's ``--signal=USR1@90``
sends): its handler only sets a flag, the loop commits at its next safe point
and then calls :meth:`PreemptSignal.finish`, which drains pending background
commits and hands the signal to the handler that was installed before (the
default action ends the process). While a watch holds a signal, the SIGTERM
drain of ``ledger.pending`` leaves it to the watch (:func:`claim`).
:class:`Interval` says when ``every_seconds`` of a clock the caller chooses
have passed. :func:`agree` reduces such flags over the ranks of a
``torch.distributed`` job (all-reduce MAX), so every rank commits the same step.
Nothing here imports torch until :func:`agree` runs with a process group.

Example:
    >>> watch = PreemptSignal()  # doctest: +SKIP
    >>> for step in range(start, total):  # doctest: +SKIP
    ...     train_step()
    ...     if watch.requested():
    ...         lg.commit(state, step=step)
    ...         watch.finish()  # drains, then the previous handler runs (default: exit)
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from ledger.errors import PreemptConfigError

__all__ = [
    "Interval",
    "PreemptConfigError",
    "PreemptSignal",
    "agree",
    "claim",
    "deliver",
    "signal_number",
]

SignalLike = int | str | signal.Signals
"""A signal as a number, a ``signal.Signals`` member or a name (``"SIGUSR1"`` or ``"USR1"``)."""


def signal_number(sig: SignalLike) -> signal.Signals:
    """The signal ``sig`` names.

    Raises:
        PreemptConfigError: no such signal, or one that cannot be caught (SIGKILL, SIGSTOP).

    Example:
        >>> signal_number("USR1").name
        'SIGUSR1'
    """
    try:
        if isinstance(sig, str):
            name = sig.upper()
            found = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
        else:
            found = signal.Signals(sig)
    except (KeyError, ValueError):
        raise PreemptConfigError(
            f"signals= names {sig!r}, which is not a signal here; use a name such as "
            "'SIGTERM' or 'SIGUSR1' (as in SLURM's --signal=USR1@90)"
        ) from None
    if found in (getattr(signal, "SIGKILL", None), getattr(signal, "SIGSTOP", None)):
        raise PreemptConfigError(
            f"signals= names {found.name}, which no process can catch; a scheduler sends "
            "SIGTERM (or the signal of SLURM's --signal) before it, so watch that one"
        )
    return found


# One handler per signal for every watch (installed once): signal number -> the live
# watches holding it (weakly: an abandoned checkpointer's watch goes with it), the
# handler that was there before the ledger's, and the signals being handed on now.
_watches: dict[int, weakref.WeakSet[PreemptSignal]] = {}
_previous: dict[int, Any] = {}
_delivering: set[int] = set()


def claim(signum: int) -> bool:
    """Tell the live watches holding ``signum`` that it arrived; whether any holds it.

    This is the ledger's handler for every watched signal, and
    ``ledger.pending``'s SIGTERM drain calls it first: when a watch holds the
    signal, the loop commits at its next safe point and the watch drains and
    hands the signal on itself, so the drain handler returns at once.

    Example:
        >>> claim(signal.SIGTERM)  # nothing watches SIGTERM here
        False
    """
    if signum in _delivering:
        return False
    holders = list(_watches.get(signum, ()))
    for watch in holders:  # again before a safe point: still one commit (torchrun forwards
        watch.received = signum  # a SIGTERM the scheduler also sent to every process)
    return bool(holders)


def _hand_on(signum: int) -> None:
    _delivering.add(signum)
    try:
        deliver(signum, _previous.get(signum, signal.SIG_DFL))
    finally:
        _delivering.discard(signum)


def _dispatch(signum: int, frame: FrameType | None) -> None:
    claim(signum)


def _hold(sig: int, watch: PreemptSignal) -> None:
    """Add ``watch`` to ``sig``'s holders; the first live one installs the ledger's handler."""
    holders = _watches.setdefault(sig, weakref.WeakSet())
    if not holders and signal.getsignal(sig) is not _dispatch:
        with contextlib.suppress(ValueError, OSError):
            _previous[sig] = signal.signal(sig, _dispatch)
    holders.add(watch)


def _release(sig: int, watch: PreemptSignal) -> None:
    """Drop ``watch``; the last one puts the previous handler back if the ledger's is in place."""
    holders = _watches.get(sig)
    if holders is None:
        return
    holders.discard(watch)
    if holders or signal.getsignal(sig) is not _dispatch or _previous.get(sig) is None:
        return  # others hold it, someone installed over ours, or it was set outside Python
    with contextlib.suppress(ValueError, OSError, TypeError):
        signal.signal(sig, _previous.pop(sig))


class PreemptSignal:
    """A flag set by the signals a scheduler sends before it kills the job.

    The handler only records the signal (a signal can arrive in the middle of
    a step or of a commit); the same signal again before the loop reached a
    safe point changes nothing (a launcher such as torchrun forwards the
    SIGTERM the scheduler also sent each process). Call :meth:`close` when the
    loop is over. One ledger handler serves every watch of a signal,
    so watches of checkpointers that are gone take nothing away from the
    others. Handlers can be installed from the main thread only: constructed
    on another thread, the watch installs itself the first time
    :meth:`requested` is called on the main thread, and warns once if it
    never can (the signals then keep their previous handling).

    Args:
        signals: the signals to watch (numbers or names); SIGTERM by default.

    Raises:
        PreemptConfigError: a name that is no catchable signal.

    Example:
        >>> watch = PreemptSignal(["SIGUSR1"])
        >>> watch.requested()
        False
        >>> watch.close()
    """

    def __init__(self, signals: Iterable[SignalLike] = (signal.SIGTERM,)) -> None:
        self.signals = tuple(dict.fromkeys(signal_number(s) for s in signals))
        self.received: int | None = None
        self._warned = False
        self._closed = False
        self.installed = self._install()

    def _install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        for sig in self.signals:
            _hold(sig, self)
        return True

    def requested(self) -> bool:
        """Whether a watched signal arrived since the last :meth:`finish`.

        Example:
            >>> watch = PreemptSignal()
            >>> watch.requested()
            False
            >>> watch.close()
        """
        if not self.installed and not self._closed:
            self.installed = self._install()
            if not self.installed and not self._warned:
                self._warned = True
                names = ", ".join(s.name for s in self.signals)
                warnings.warn(
                    f"the ledger cannot watch {names}: signal handlers can be installed from "
                    "the main thread only, and this loop runs on another; create the "
                    "checkpointer on the main thread to commit on preemption",
                    RuntimeWarning,
                    stacklevel=3,
                )
        return self.received is not None

    def finish(self) -> None:
        """After the commit: drain pending commits, then hand the signal on as it was before.

        The handler installed before the ledger's runs (Lightning's, or the
        ledger's SIGTERM drain); with the default action the process ends by
        that signal, as it would have without the ledger; an ignored signal is
        dropped. If the process survives, the watch keeps watching.

        Example:
            >>> watch = PreemptSignal()
            >>> watch.finish()  # no signal arrived: nothing to hand on
            >>> watch.close()
        """
        from ledger.pending import drain_all

        signum, self.received = self.received, None
        drain_all()
        if signum is not None:
            _hand_on(signum)

    def close(self) -> None:
        """Stop watching; the last watch of a signal puts its previous handler back.

        Example:
            >>> PreemptSignal(["SIGUSR2"]).close()
        """
        self._closed = True
        if self.installed:
            for sig in self.signals:
                _release(sig, self)


def deliver(signum: int, previous: Any, frame: FrameType | None = None) -> None:
    """Run the handler ``previous`` for ``signum`` as the signal would have.

    A callable is called; ``SIG_IGN`` drops the signal; anything else (``SIG_DFL``,
    or None for a handler installed outside Python) takes the default action,
    which for SIGTERM and SIGUSR1 ends the process by that signal.

    Example:
        >>> deliver(signal.SIGUSR1, lambda signum, frame: print("handled", signum))
        handled 10
    """
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


class Interval:
    """Due every ``seconds`` of ``clock`` since it was started or last reset.

    Args:
        seconds: the interval; None is never due.
        clock: seconds as a float (``time.monotonic`` by default; inject one in tests).

    Raises:
        PreemptConfigError: ``seconds`` is not a positive number.

    Example:
        >>> now = [0.0]
        >>> every = Interval(60, clock=lambda: now[0])
        >>> every.due()
        False
        >>> now[0] = 61.0
        >>> every.due()
        True
    """

    def __init__(
        self, seconds: float | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if seconds is not None and (
            isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0
        ):
            raise PreemptConfigError(
                f"every_seconds={seconds!r} must be a positive number of seconds or None"
            )
        self.seconds = seconds
        self.clock = clock
        self.started = clock()

    def due(self) -> bool:
        """Whether ``seconds`` have passed since the start or the last :meth:`reset`."""
        return self.seconds is not None and self.clock() - self.started >= self.seconds

    def reset(self) -> None:
        """Start the next interval now (after a commit, whatever made it)."""
        self.started = self.clock()


def agree(*flags: bool) -> tuple[bool, ...]:
    """Each flag, true when it is true on any rank (all-reduce MAX); as given without ranks.

    Every rank of the process group must call it at the same point of the
    loop (it is a collective); with one process, or no process group, it
    returns the flags unchanged and touches no torch.

    Example:
        >>> agree(True, False)
        (True, False)
    """
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return tuple(bool(f) for f in flags)
    if dist.get_world_size() < 2:
        return tuple(bool(f) for f in flags)
    import torch

    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    values = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())
