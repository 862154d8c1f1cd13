"""The progress bar of long commands: rich, on stderr, only on a terminal and never with ``-q``.

This module owns turning the library's ``progress(done, total, what)``
calls (``ledger.progress``) into one rich bar. Off a terminal, or with
``-q``, :func:`bar` yields None and the command passes no callback, so
nothing at all is drawn; stdout (results, ``--json``) is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ledger.cli._common import console, options
from ledger.progress import ProgressFn


def bar_console() -> Console | None:
    """The stderr console to draw a bar on, or None (not a terminal, or ``-q``).

    Example:
        >>> con = bar_console()  # doctest: +SKIP
    """
    err = console(stderr=True)
    return err if err.is_terminal and not options().quiet else None


@contextmanager
def bar(description: str) -> Iterator[ProgressFn | None]:
    """A ``progress=`` callback drawing a transient bar on stderr (None off a terminal or with -q).

    Example:
        >>> with bar("verifying") as tick:  # doctest: +SKIP
        ...     lg.verify(progress=tick)
    """
    err = bar_console()
    if err is None:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[what]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as shown:
        task = shown.add_task(description, total=None, what="")

        def tick(done: int, total: int, what: str) -> None:
            shown.update(task, completed=done, total=total, what=what)

        yield tick
