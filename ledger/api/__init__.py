"""The ``Ledger`` facade: the one object users touch.

``Ledger`` combines the core (open, commit, checkout, restore, log, gc), ref
operations, maintenance, reports, remotes and interop (import, export, release), each in its own module of this package.
"""

from __future__ import annotations

from ledger.api.commit import Committing
from ledger.api.core import LedgerCore
from ledger.api.inputs import CONFIG_FILE, DEFAULT_CHUNK_SIZE
from ledger.api.interop import Interop
from ledger.api.maintain import Maintenance
from ledger.api.oserrors import guard_os_errors
from ledger.api.refs import RefOps
from ledger.api.remotes import RemoteOps
from ledger.api.reports import Reports
from ledger.api.restore import RestoreReport, Restoring
from ledger.api.staging import Part, Stage
from ledger.api.status import StatusOps
from ledger.pending import CommitHandle

__all__ = [
    "CONFIG_FILE",
    "DEFAULT_CHUNK_SIZE",
    "CommitHandle",
    "Ledger",
    "LedgerCore",
    "Part",
    "RestoreReport",
    "Stage",
]


@guard_os_errors
class Ledger(
    Committing, Restoring, RefOps, Maintenance, Reports, StatusOps, RemoteOps, Interop, LedgerCore
):
    """A ledger directory: commits of training state, branches, tags and HEAD.

    Example:
        >>> import tempfile, torch
        >>> with Ledger.open(tempfile.mkdtemp() + "/ckpt", create=True) as lg:
        ...     c = lg.commit({"w": torch.ones(3)}, step=1, message="first")
        ...     lg.checkout("HEAD")["w"].tolist()
        [1.0, 1.0, 1.0]
    """
