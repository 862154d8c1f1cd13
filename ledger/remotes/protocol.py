"""What remote operations need of the local ledger, as Protocols (no import of ``ledger.api``).

This module owns :class:`LocalLedger` (what push, fetch, pull, clone, remote
gc and the remote-tracking refs use: the ledger's folder, object store, refs,
config, worker threads, decoded records and manifests, HEAD's branch and the
retention policies) and :class:`StateReader` (what exporting weights needs: a
commit's state). ``ledger.Ledger`` satisfies both structurally; tests may pass
any object that does. It must never import the facade: the layers point down.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from ledger.history.needs import HistoryReader
from ledger.history.records import LedgerConfig
from ledger.history.refs import RefStore
from ledger.history.retention import AnyPolicy
from ledger.objects.store import ObjectStore


class LocalLedger(HistoryReader, Protocol):
    """The local side of a sync: its folder, store, refs, records and policies.

    Example:
        >>> from ledger.remotes.push import push
        >>> push(lg, "origin", dry_run=True).commits  # doctest: +SKIP
        ['3f2a...']
    """

    root: Path
    store: ObjectStore
    refs: RefStore
    config: LedgerConfig

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Worker threads shared with commits and reads."""
        ...

    @property
    def current_branch(self) -> str | None:
        """The branch HEAD is attached to (None: detached)."""
        ...

    def retention(self, branch: str | None = None) -> list[AnyPolicy]:
        """The retention policies in force for ``branch``."""
        ...

    def close(self) -> None:
        """Release threads, files and locks."""
        ...


class StateReader(Protocol):
    """Reads a commit's whole state (a nested dict of tensors and values)."""

    def checkout(self, rev: str) -> dict[Any, Any]:
        """The state of the commit ``rev`` names."""
        ...
