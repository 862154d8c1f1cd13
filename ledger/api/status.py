"""``Ledger.status``: where HEAD is, what is kept, how much is stored, how remotes compare.

This module owns the :class:`StatusReport` and how its figures are gathered:
from the refs, the event log, the pack files' sizes, the disk's free space and
the remote-tracking refs as the last fetch or push left them. It never reads a
tensor and never touches the network.
"""

from __future__ import annotations

import datetime as dt
import shutil

import msgspec

from ledger.api.core import LedgerCore
from ledger.errors import LedgerError
from ledger.history import graph
from ledger.history.records import Commit, RefUpdate
from ledger.history.refs import BRANCH_PREFIX, REMOTE_PREFIX
from ledger.history.retention import describe
from ledger.remotes import tracking


class TrackStatus(msgspec.Struct, kw_only=True):
    """One local branch against its remote-tracking ref (as of the last fetch or push).

    ``ahead``: local commits the remote lacks; ``behind``: remote commits not
    here; None when a commit record it needs is not stored locally.
    """

    branch: str
    local: str | None
    remote: str
    ahead: int | None
    behind: int | None


class RemoteStatus(msgspec.Struct, kw_only=True):
    """A remote, when its tracking refs last moved, and each branch's ahead/behind."""

    name: str
    url: str
    fetched: dt.datetime | None
    branches: list[TrackStatus]


class StatusReport(msgspec.Struct, kw_only=True):
    """What ``ledger status`` shows.

    ``stored_bytes`` is the pack files' size (what ``ledger du`` calls stored),
    ``free_bytes`` the free space of the file system holding the ledger.
    """

    root: str
    branch: str | None
    head: Commit | None
    retention: list[str]
    expired: int
    stored_bytes: int
    free_bytes: int
    remotes: list[RemoteStatus]


class StatusOps(LedgerCore):
    """The status report of a ledger."""

    def status(self) -> StatusReport:
        """HEAD, branch, last commit, retention, sizes and remotes' ahead/behind; no network.

        Example:
            >>> report = lg.status()  # doctest: +SKIP
            >>> report.branch, report.head.step, report.remotes[0].branches[0].ahead  # doctest: +SKIP
            ('main', 300, 2)
        """
        self._check_open()
        state = self.refs.state()
        branch = self.current_branch
        self.store.refresh()
        stored = 0
        for name in self.store.pack_names():
            try:
                stored += (self.store.packs_dir / f"{name}.pack").stat().st_size
            except FileNotFoundError:  # a concurrent gc removed it
                continue
        return StatusReport(
            root=str(self.root),
            branch=branch,
            head=self.head,
            retention=[describe(p) for p in self.retention(branch)],
            expired=len(state.expired),
            stored_bytes=stored,
            free_bytes=shutil.disk_usage(self.root).free,
            remotes=self._remote_status(state.refs),
        )

    def _remote_status(self, refs: dict[str, str]) -> list[RemoteStatus]:
        urls = tracking.remotes(self)
        if not urls:
            return []
        fetched: dict[str, dt.datetime] = {}
        for event in self.refs.log.read_from(0).events:
            if isinstance(event, RefUpdate) and event.ref.startswith(REMOTE_PREFIX):
                fetched[event.ref[len(REMOTE_PREFIX) :].split("/", 1)[0]] = event.time
        out = []
        for name, url in sorted(urls.items()):
            prefix = f"{REMOTE_PREFIX}{name}/"
            tracks = [
                self._track(ref[len(prefix) :], refs.get(BRANCH_PREFIX + ref[len(prefix) :]), cid)
                for ref, cid in sorted(refs.items())
                if ref.startswith(prefix)
            ]
            out.append(RemoteStatus(name=name, url=url, fetched=fetched.get(name), branches=tracks))
        return out

    def _track(self, branch: str, local: str | None, remote: str) -> TrackStatus:
        parents = self.walker()
        ahead: int | None = None
        behind: int | None = None
        try:
            theirs = set(graph.ancestors(parents, [remote]))
            mine = set(graph.ancestors(parents, [local])) if local is not None else set()
            ahead, behind = len(mine - theirs), len(theirs - mine)
        except LedgerError:  # a record the last fetch did not bring (or gc removed)
            pass
        return TrackStatus(branch=branch, local=local, remote=remote, ahead=ahead, behind=behind)
