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

import msgspec

from ledger.errors import RemoteError
from ledger.history.gc import first_parent_history, live_objects
from ledger.history.records import utcnow
from ledger.history.retention import plan
from ledger.remotes.fetch import fetch_metadata
from ledger.remotes.layout import (
    REFS_KEY,
    RemoteExpiry,
    encode_index,
    encode_refs,
    index_key,
    pack_key,
)
from ledger.remotes.protocol import LocalLedger
from ledger.remotes.tracking import ancestors, open_named
from ledger.remotes.transfer import cache_refs, load_view


class RemoteGcReport(msgspec.Struct):
    """What a remote gc did (or, with ``dry_run``, would do)."""

    remote: str
    dry_run: bool
    expired: list[str]
    packs_deleted: int = 0
    bytes_freed: int = 0
    packs_kept: int = 0
    dead_bytes_kept: int = 0


def collect_remote(lg: LocalLedger, name: str, *, dry_run: bool = False) -> RemoteGcReport:
    """Expire what retention drops on remote ``name``; delete the packs nothing needs.

    Raises:
        RemoteConflictError: someone pushed meanwhile (nothing was deleted); rerun.

    Example:
        >>> collect_remote(lg, "origin", dry_run=True).bytes_freed  # doctest: +SKIP
    """
    remote, cache = open_named(lg, name)
    view = load_view(remote, cache)
    if view.refs is None:
        raise RemoteError(f"remote {name} ({remote.url}) holds no ledger; nothing to collect")
    refs = view.refs
    fetch_metadata(lg.store, lg, view)
    tips = [*refs.branches.values(), *refs.tags.values()]
    histories = {b: first_parent_history(lg, tip) for b, tip in refs.branches.items()}
    _, expire = plan(histories, set(tips), lg.retention, utcnow())
    now = utcnow()
    newly = {cid: why for cid, why in expire.items() if cid not in refs.expired}
    gone = {**refs.expired, **{c: RemoteExpiry(reason=w, time=now) for c, w in newly.items()}}
    live = live_objects(lg, ancestors(lg, tips), set(gone))
    report = RemoteGcReport(remote=name, dry_run=dry_run, expired=sorted(newly))
    kept, doomed = [], []
    for pack in view.packs:
        needed = [e for e in pack.entries if e.id in live]
        if needed:
            kept.append(pack)
            report.dead_bytes_kept += sum(e.length for e in pack.entries if e.id not in live)
        else:
            doomed.append(pack)
            report.bytes_freed += pack.size
    report.packs_kept, report.packs_deleted = len(kept), len(doomed)
    if dry_run or (not doomed and not newly):
        return report
    data, iname = encode_index(kept)
    remote.put(index_key(iname), data)
    new = msgspec.structs.replace(refs, expired=gone, indexes=[iname], updated=now)
    body = encode_refs(new)
    stale = [index_key(i) for i in refs.indexes if i != iname] + [pack_key(p.name) for p in doomed]
    if remote.stages_writes:  # the Hub: deletions land in the same commit as the refs
        for key in stale:
            remote.delete(key)
    message = f"ledger gc: expire {len(newly)} commit(s), drop {len(doomed)} pack(s)"
    remote.put_if(REFS_KEY, body, view.version, message)
    if not remote.stages_writes:
        for key in stale:
            remote.delete(key)
    cache_refs(cache, body, (iname, data))
    return report
