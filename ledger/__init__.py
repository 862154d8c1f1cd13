"""training-ledger: git for training state.

The names below are loaded on first use (PEP 562), so ``import ledger`` and
``ledger --help`` stay fast: the facade pulls in torch only when a tensor is
committed or read.

Example:
    >>> from ledger import Ledger, LedgerError
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ledger.errors import LedgerError, NothingRestoredWarning, PartialRestoreWarning

if TYPE_CHECKING:
    from ledger.api import Ledger, Part, RestoreReport, Stage
    from ledger.history.records import Commit
    from ledger.state.files import File

__all__ = [
    "Commit",
    "File",
    "Ledger",
    "LedgerError",
    "NothingRestoredWarning",
    "Part",
    "PartialRestoreWarning",
    "RestoreReport",
    "Stage",
]
__version__ = "0.1.0"

# The library logs on ``ledger`` and its children and is quiet unless the application
# (or the CLI's -v) configures logging: no "no handler" warning, nothing printed.
logging.getLogger("ledger").addHandler(logging.NullHandler())

_LAZY = {
    "Ledger": "ledger.api",
    "Part": "ledger.api",
    "RestoreReport": "ledger.api",
    "Stage": "ledger.api",
    "Commit": "ledger.history.records",
    "File": "ledger.state.files",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
