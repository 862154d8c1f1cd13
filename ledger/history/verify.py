"""Verify: prove the ledger is whole, or say precisely what is not.

This module owns the checks behind ``ledger verify``: the event log replays,
the ref view agrees with it, every ref resolves, every object a kept commit
needs (``needs.commit_needs``) exists (and with ``full``, re-hashes correctly).
Crash leftovers (a torn log tail, orphan temp files, objects no kept commit
needs) are notes, not problems.
``repair`` rebuilds the ref view from the log and cuts a torn tail. It never
deletes an object.
"""

from __future__ import annotations

import msgspec

from ledger.errors import CorruptionError, LedgerError
from ledger.history.needs import HistoryReader, commit_needs, reachable_commits
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, RefStore
from ledger.objects.store import ObjectStore
from ledger.progress import ProgressFn, tell


class VerifyReport(msgspec.Struct):
    """``ok`` is False when any problem was found; notes are harmless findings.

    ``chunks_checked`` and ``bytes_checked`` count chunks; a commit's other
    objects (record, manifest, packages blob) are checked too, not counted.
    """

    ok: bool
    problems: list[str]
    notes: list[str]
    commits_checked: int
    chunks_checked: int
    bytes_checked: int
    repaired: list[str]
    # a problem that verify(repair=True) fixes (the ref view disagrees with the log)
    repairable: bool = False


def verify(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    *,
    full: bool,
    repair: bool,
    progress: ProgressFn | None = None,
) -> VerifyReport:
    """Check the ledger; see the module docstring. ``repair`` holds the write lock while fixing.

    ``progress`` is told the commits checked (``ledger.progress``).
    """
    problems: list[str] = []
    notes: list[str] = []
    repaired: list[str] = []
    store.sync()
    try:
        replayed = refs.replay_state()
    except CorruptionError as e:
        return VerifyReport(False, [f"event log: {e}"], notes, 0, 0, 0, repaired)
    if refs.torn_bytes or _torn(refs, replayed.offset):
        torn = refs.log.path.stat().st_size - replayed.offset
        notes.append(
            f"event log has a torn tail of {torn} bytes (a crash mid-append); the next write cuts it"
        )
        if repair:
            with refs.lock.hold():
                refs.log.truncate(replayed.offset)
            repaired.append(f"cut {torn} torn bytes from the event log")
    view = refs.state()
    stale_view = (
        view.refs != replayed.refs
        or view.expired != replayed.expired
        or view.retention != replayed.retention
    )
    if stale_view:
        problems.append(
            "the ref view (refs file) disagrees with the event log; verifying with repair "
            "rebuilds it from the log"
        )
    if repair:
        with refs.lock.hold():
            refs.write_view(refs.replay_state())
        repaired.append("rebuilt the ref view from the event log")
        if stale_view:
            problems.pop()
    state = replayed
    for name, err in sorted(store.damaged.items()):
        problems.append(f"pack {name[:12]} is damaged: {err}")
    head = state.refs.get(HEAD)
    if head is None:
        problems.append("HEAD is missing from the event log")
    elif head.startswith(SYMREF_PREFIX):
        target = head[len(SYMREF_PREFIX) :]
        if target not in state.refs and not target.startswith(BRANCH_PREFIX):
            problems.append(f"HEAD points at {target!r}, which is not a branch")
    for ref, cid in sorted(state.refs.items()):
        if ref == HEAD and cid.startswith(SYMREF_PREFIX):
            continue
        try:
            reader.record(cid)
        except LedgerError as e:
            problems.append(f"{ref} -> {cid[:12]}: {e}")
    commits = reachable_commits(reader, state.refs)
    chunks_checked = bytes_checked = remote_only = 0
    needed: set[bytes] = set()  # every object a reachable commit needs (orphans: the rest)
    for done, cid in enumerate(commits):
        tell(progress, done, len(commits), "commits")
        try:
            rec = reader.record(cid)
        except LedgerError as e:
            problems.append(f"commit {cid[:12]}: {e}")
            needed.add(bytes.fromhex(cid))
            continue
        for parent in rec.parents:
            try:
                reader.record(parent)
            except LedgerError as e:
                problems.append(f"commit {cid[:12]} parent {parent[:12]}: {e}")
        try:
            for need in commit_needs(reader, cid, expired=cid in state.expired):
                if need.id in needed:
                    continue
                needed.add(need.id)
                if need.kind in ("commit", "manifest"):
                    continue  # read and checked to get this far
                located = store.locate(need.id)
                if located is None:
                    if store.source is not None and store.source.has(need.id):
                        remote_only += 1  # a shallow clone or fetched history: read on demand
                    else:
                        problems.append(f"{need.what}: object {need.id.hex()[:12]} is missing")
                    continue
                is_chunk = need.kind == "chunk"
                chunks_checked += is_chunk
                if full:
                    try:
                        store.read(need.id, need.what)
                        bytes_checked += located[1].raw_length if is_chunk else 0
                    except LedgerError as e:
                        problems.append(str(e))
        except LedgerError as e:
            problems.append(f"commit {cid[:12]}: {e}")
    tell(progress, len(commits), len(commits), "commits")
    if remote_only:
        notes.append(
            f"{remote_only} object(s) of commits here are stored only on a remote (shallow "
            "clone or fetched history); a checkout fetches them"
        )
    orphans = orphan_bytes = 0
    for name in store.pack_names():
        for entry in store.pack_entries(name):
            if entry.id not in needed:
                orphans += 1
                orphan_bytes += entry.length
    if orphans:
        notes.append(
            f"{orphans} stored object(s), {orphan_bytes} bytes, that no kept commit needs "
            "(expired or unreachable commits, or a crashed commit); gc removes them"
        )
    leftovers = [p.name for p in store.tmp_dir.iterdir()]
    if leftovers:
        notes.append(
            f"{len(leftovers)} temporary file(s) in objects/tmp (crash leftovers; gc removes them)"
        )
    return VerifyReport(
        not problems,
        problems,
        notes,
        len(commits),
        chunks_checked,
        bytes_checked,
        repaired,
        repairable=stale_view and not repair,
    )


def _torn(refs: RefStore, end: int) -> bool:
    return refs.log.path.stat().st_size > end
