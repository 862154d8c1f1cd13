"""Retention policies, for ``Ledger.set_retention``.

Example:
    >>> from ledger.retention import KeepLast, KeepBest, KeepEvery, KeepWithin
    >>> policies = [KeepLast(3), KeepBest("val_loss", k=2, mode="min"), KeepWithin("7d")]
"""

from ledger.history.records import KeepBest, KeepEvery, KeepLast, KeepWithin
from ledger.history.retention import CustomPolicy

__all__ = ["CustomPolicy", "KeepBest", "KeepEvery", "KeepLast", "KeepWithin"]
