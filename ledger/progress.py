"""The ``progress=`` callback long operations take, and how they call it.

This module owns the one progress shape of the library: ``progress(done,
total, what)``, called with ``done`` rising monotonically from 0 to
``total`` (the last call has ``done == total``), in units ``what`` names
("commits", "objects"). The library prints nothing itself; the CLI turns
these calls into a rich bar on a terminal (``ledger.cli.bars``).
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total, what)``; see the module docstring.
ProgressFn = Callable[[int, int, str], None]


def tell(progress: ProgressFn | None, done: int, total: int, what: str) -> None:
    """Call ``progress`` if there is one (``done`` is clamped to ``total``).

    Example:
        >>> seen = []
        >>> tell(lambda d, t, w: seen.append((d, t, w)), 3, 2, "commits"); seen
        [(2, 2, 'commits')]
    """
    if progress is not None:
        progress(min(done, total), total, what)
