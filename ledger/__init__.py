"""training-ledger: git for training state.

Example:
    >>> from ledger import Ledger, LedgerError
"""

from ledger.api import Ledger
from ledger.errors import LedgerError
from ledger.history.records import Commit

__all__ = ["Commit", "Ledger", "LedgerError"]
__version__ = "0.1.0"
