"""Child process for tests/test_kill_interop.py: an import or an export, SIGKILLed at its N-th step.

Usage::

    python kill_at_step.py N LEDGER_DIR import SOURCE BRANCH
    python kill_at_step.py N LEDGER_DIR export REV FORMAT OUT

A step is a call that changes the file system: ``os.fsync``, ``os.replace``,
``os.rename``, ``os.mkdir``, ``os.unlink``, ``os.rmdir``, ``os.ftruncate`` and
opening a file for writing (``open``, ``os.open``). Just before the N-th step
the process kills itself with SIGKILL, as the OOM killer or a preempted job
would. With N = 0 it never does, and prints ``steps K``: how many the whole
operation took.
"""

from __future__ import annotations

import builtins
import io
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from ledger import Ledger

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
taken = 0
kill_at = int(sys.argv[1])


def _step() -> None:
    global taken
    taken += 1
    if taken == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


def _counted(fn: Callable[..., Any], writes: Callable[..., bool] | None = None) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if writes is None or writes(*args, **kwargs):
            _step()
        return fn(*args, **kwargs)

    return wrapper


def _open_writes(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> bool:
    return any(c in mode for c in "wax+")


def _os_open_writes(path: Any, flags: int, *args: Any, **kwargs: Any) -> bool:
    return bool(flags & WRITE_FLAGS)


def main() -> None:
    root, op, *args = sys.argv[2:]
    lg = Ledger.open(root, fsync=True)
    for name in ("fsync", "replace", "rename", "mkdir", "unlink", "rmdir", "ftruncate"):
        setattr(os, name, _counted(getattr(os, name)))
    os.open = _counted(os.open, _os_open_writes)
    builtins.open = io.open = _counted(io.open, _open_writes)
    if op == "import":
        source, branch = args
        lg.import_checkpoints(source, branch=branch)
    else:
        rev, fmt, out = args
        lg.export(rev, fmt, out)
    lg.close()
    print(f"steps {taken}", flush=True)


if __name__ == "__main__":
    main()
