"""training-ledger: git for training state.

Example:
    >>> from ledger import Ledger, LedgerError
"""

from ledger.api import Ledger, Part, Stage
from ledger.errors import LedgerError
from ledger.history.records import Commit
from ledger.state.files import File

__all__ = ["Commit", "File", "Ledger", "LedgerError", "Part", "Stage"]
__version__ = "0.1.0"
