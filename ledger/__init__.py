"""training-ledger: git for training state.

Example:
    >>> from ledger import Ledger, LedgerError
"""

from ledger.api import Ledger, Part, RestoreReport, Stage
from ledger.errors import LedgerError, NothingRestoredWarning, PartialRestoreWarning
from ledger.history.records import Commit

__all__ = [
    "Commit",
    "Ledger",
    "LedgerError",
    "NothingRestoredWarning",
    "Part",
    "PartialRestoreWarning",
    "RestoreReport",
    "Stage",
]
__version__ = "0.1.0"
