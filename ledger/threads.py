"""Worker threads leave the signals meant for the training loop to its main thread.

A process-directed signal (SIGTERM from a scheduler preempting the job, or the
SIGUSR1 of SLURM's ``--signal``; SIGINT from Ctrl-C) goes to any thread that does not block it. CPython runs Python
signal handlers only in the main thread, and only when that thread next runs
Python code: a signal the kernel hands to an idle worker thread leaves a main
thread blocked in ``time.sleep`` or a C call unaware of it until it wakes, so
the drain-on-SIGTERM handler (``ledger.pending``) could run a minute late or
never. Every thread pool the ledger starts therefore blocks these signals in
its threads (threads they start inherit the mask).
"""

from __future__ import annotations

import contextlib
import signal

# SIGUSR1/2: what SLURM's --signal sends before a job ends (ledger.preempt watches them)
WORKER_BLOCKED = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2}


def block_signals() -> None:
    """Block :data:`WORKER_BLOCKED` in the calling thread (a ``ThreadPoolExecutor`` initializer).

    Example:
        >>> from concurrent.futures import ThreadPoolExecutor
        >>> with ThreadPoolExecutor(1, initializer=block_signals) as pool:
        ...     signal.SIGTERM in pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, []).result()
        True
    """
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no pthread_sigmask: Windows
        signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_BLOCKED)
