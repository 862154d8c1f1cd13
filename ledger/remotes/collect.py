"""Remote gc: apply this ledger's retention to a remote and drop the packs nothing needs.

This module owns the order of effects of ``ledger gc --remote NAME``
(docs/remotes.md, "Remote gc"): fetch the remote's records and manifests;
plan retention over the remote's branches with this ledger's policies (heads
and tags always kept); mark what the remote's refs still need (records of
every reachable commit, state of the kept ones); write one merged index that
lists only packs holding something needed, and the refs with the new expiries,
by compare-and-swap; only then delete the packs no longer listed and the old
index files. Packs that are partly needed are kept whole (their dead bytes are
reported). It must never delete a pack before the refs that stop listing it
have moved, and never one a reachable, kept commit needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgspec

from ledger.errors import RemoteError
from ledger.history.gc import first_parent_history, live_objects
from ledger.history.records import utcnow
from ledger.history.retention import plan
from ledger.remotes.base import Remote
from ledger.remotes.fetch import fetch_metadata
from ledger.remotes.layout import (
    REFS_KEY,
    PackRecord,
    RemoteExpiry,
    RemoteRefs,
    encode_index,
    encode_refs,
    index_key,
    pack_key,
)
from ledger.remotes.protocol import LocalLedger
from ledger.remotes.tracking import ancestors, open_named
from ledger.remotes.transfer import RemoteView, cache_refs, load_view


class RemoteGcReport(msgspec.Struct):
    """A remote gc's plan and what it did (with ``dry_run``: only the plan; nothing changed).

    ``packs`` names the packs deleted (or to delete), ``indexes`` the index files
    replaced by the one merged index.
    """

    remote: str
    dry_run: bool
    expired: list[str]
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_kept: int = 0
    dead_bytes_kept: int = 0
    packs: list[str] = []
    indexes: list[str] = []


@dataclass
class _Plan:
    report: RemoteGcReport
    remote: Remote
    cache: Path
    view: RemoteView
    refs: RemoteRefs
    kept: list[PackRecord]
    expired: dict[str, RemoteExpiry]


def plan_remote_gc(lg: LocalLedger, name: str) -> RemoteGcReport:
    """What ``collect_remote`` would expire and delete on remote ``name``; changes nothing there.

    Fetches the remote's records and manifests into the local store (as a fetch does).

    Example:
        >>> plan_remote_gc(lg, "origin").packs  # doctest: +SKIP
        ['5e1c...']
    """
    return _plan(lg, name).report


def _plan(lg: LocalLedger, name: str) -> _Plan:
    remote, cache = open_named(lg, name)
    view = load_view(remote, cache)
    if view.refs is None:
        raise RemoteError(f"remote {name} ({remote.url}) holds no ledger; nothing to collect")
    refs = view.refs
    fetch_metadata(lg.store, lg, view)
    tips = [*refs.branches.values(), *refs.tags.values()]
    histories = {b: first_parent_history(lg, tip) for b, tip in refs.branches.items()}
    now = utcnow()
    _, expire = plan(histories, set(tips), lg.retention, now)
    newly = {cid: why for cid, why in expire.items() if cid not in refs.expired}
    gone = {**refs.expired, **{c: RemoteExpiry(reason=w, time=now) for c, w in newly.items()}}
    live = live_objects(lg, ancestors(lg, tips), set(gone))
    report = RemoteGcReport(remote=name, dry_run=True, expired=sorted(newly))
    kept: list[PackRecord] = []
    for pack in view.packs:
        if any(e.id in live for e in pack.entries):
            kept.append(pack)
            report.dead_bytes_kept += sum(e.length for e in pack.entries if e.id not in live)
        else:
            report.packs.append(pack.name)
            report.bytes_freed += pack.size
    report.packs_kept, report.packs_deleted = len(kept), len(report.packs)
    if report.packs or newly:
        merged = encode_index(kept)[1]
        report.indexes = [i for i in refs.indexes if i != merged]
    return _Plan(report, remote, cache, view, refs, kept, gone)


def collect_remote(lg: LocalLedger, name: str, *, dry_run: bool = False) -> RemoteGcReport:
    """Expire what retention drops on remote ``name``; delete the packs nothing needs.

    Plan then execute: the plan (:func:`plan_remote_gc`) is the report; with
    ``dry_run`` nothing else happens.

    Raises:
        RemoteConflictError: someone pushed meanwhile (nothing was deleted); rerun.

    Example:
        >>> collect_remote(lg, "origin", dry_run=True).bytes_freed  # doctest: +SKIP
    """
    planned = _plan(lg, name)
    report, remote, refs = planned.report, planned.remote, planned.refs
    if dry_run or (not report.packs and not report.expired):
        report.dry_run = dry_run
        return report
    report.dry_run = False
    data, iname = encode_index(planned.kept)
    remote.put(index_key(iname), data)
    new = msgspec.structs.replace(refs, expired=planned.expired, indexes=[iname], updated=utcnow())
    body = encode_refs(new)
    stale = [index_key(i) for i in report.indexes] + [pack_key(p) for p in report.packs]
    if remote.stages_writes:  # the Hub: deletions land in the same commit as the refs
        for key in stale:
            remote.delete(key)
    message = f"ledger gc: expire {len(report.expired)} commit(s), drop {len(report.packs)} pack(s)"
    remote.put_if(REFS_KEY, body, planned.view.version, message)
    if not remote.stages_writes:
        for key in stale:
            remote.delete(key)
    cache_refs(planned.cache, body, (iname, data))
    return report
