"""The ``progress=`` callback long operations take, and how they call it.

This module owns the one progress shape of the library: ``progress(done,
total, what)``, called with ``done`` rising monotonically from 0 to
``total`` (the last call has ``done == total``), in units ``what`` names
("commits", "objects", "bytes"); :class:`Tally` counts units as they are
done for an operation whose writers only know what they just wrote. The
library prints nothing itself; the CLI turns these calls into a rich bar on
a terminal (``ledger.cli.bars``).
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


class Tally:
    """Units done towards a known ``total``, told to ``progress`` as they are added.

    Tells ``0`` at once and ``total`` on :meth:`finish`; what is added in
    between only ever raises ``done`` (clamped to ``total``), so the calls
    stay monotone even when ``total`` was an estimate.

    Example:
        >>> seen = []
        >>> t = Tally(lambda d, n, w: seen.append(d), 10, "bytes")
        >>> t.add(4); t.add(9); t.finish(); seen
        [0, 4, 10, 10]
    """

    def __init__(self, progress: ProgressFn | None, total: int, what: str) -> None:
        self.progress = progress
        self.total = total
        self.what = what
        self.done = 0
        tell(progress, 0, total, what)

    def add(self, n: int) -> None:
        """Count ``n`` more units done."""
        self.done += n
        tell(self.progress, self.done, self.total, self.what)

    def finish(self) -> None:
        """Everything is done: tell ``total``."""
        self.done = max(self.done, self.total)
        tell(self.progress, self.total, self.total, self.what)
