"""Reading history for people: show, diff, du and the Arrow table (thin: see ledger.inspect)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger import inspect
from ledger.api.core import LedgerCore

if TYPE_CHECKING:
    import pyarrow as pa


class Reports(LedgerCore):
    """Typed reports about commits and space."""

    # -- reading history for people ----------------------------------------------

    def show(self, rev: str = "HEAD") -> inspect.ShowReport:
        """A commit's metadata and a summary of its tensors and values.

        Example:
            >>> [t.path for t in lg.show("HEAD").tensors][:2]  # doctest: +SKIP
            ['model/fc.weight', 'model/fc.bias']
        """
        self._check_open()
        return inspect.show(self, rev)

    def diff(self, a: str, b: str) -> inspect.DiffReport:
        """Metrics (with deltas), params, metadata and tensors of two commits side by side.

        Example:
            >>> [t.path for t in lg.diff("main", "exp-b").tensors.changed]  # doctest: +SKIP
            ['model/head.weight']
        """
        self._check_open()
        with self._lock:
            return inspect.diff(self, a, b)

    def du(self) -> inspect.DuReport:
        """Logical vs stored bytes, dedup and compression ratios, per branch.

        Example:
            >>> lg.du().dedup_ratio > 1  # doctest: +SKIP
            True
        """
        self._check_open()
        return inspect.du(self)

    def table(self) -> pa.Table:
        """Every commit as a ``pyarrow.Table`` row (metrics and params as columns).

        Example:
            >>> lg.table().column("metrics.loss")  # doctest: +SKIP
        """
        self._check_open()
        return inspect.table(self)
