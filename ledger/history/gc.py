"""Garbage collection: expire what retention drops, mark what refs reach, sweep the rest.

This module owns the gc algorithm and its safety rules (docs/retention.md):

* gc holds the ledger's gc lock exclusively; every commit holds it shared
  from its first dedup decision until its ref moved, so an object a commit
  relies on is either marked (the commit's ref is visible) or already gone
  before the commit looks for it (the commit re-syncs and writes it anew);
* a pack younger than the grace period is never touched;
* packs are swept whole: all-dead packs are deleted; packs that are mostly
  dead, or whose live part is small, are rewritten (live objects copied into
  a new pack, fsync'd, then the old pack deleted), so the bytes really come
  back; a kill at any instant leaves every live object in some pack;
* marking fails closed: if a reachable commit's record or a kept commit's
  manifest cannot be read, gc raises ``CorruptionError`` before expiring or
  deleting anything (what the unreadable object references is unknown).

It must never delete an object reachable from a ref or a retained commit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import msgspec

from ledger.errors import CorruptionError, LedgerError
from ledger.history.graph import ancestors
from ledger.history.records import Commit, CommitRecord, Expire, utcnow
from ledger.history.refs import (
    BRANCH_PREFIX,
    HEAD,
    REMOTE_PREFIX,
    SYMREF_PREFIX,
    TAG_PREFIX,
    RefStore,
)
from ledger.history.retention import AnyPolicy, plan
from ledger.history.tree import chunk_ids
from ledger.manifest import Manifest
from ledger.objects.packs import HEADER, IndexEntry, encode_pack_tail
from ledger.objects.store import DEFAULT_MAX_PACK_BYTES, ObjectStore

# A pack with dead objects is rewritten when at least this fraction of its bytes is dead,
# or when its live part is small enough that copying it costs next to nothing.
REPACK_DEAD_FRACTION = 0.5
REPACK_SMALL_LIVE_BYTES = 8 << 20


class HistoryReader(Protocol):
    """What gc and verify need from the ledger: decoded records and manifests."""

    def record(self, commit_id: str) -> CommitRecord: ...

    def manifest_by_id(self, manifest_id: str, commit_id: str) -> Manifest: ...


class GcReport(msgspec.Struct):
    """What a gc run did (or, with ``dry_run``, would do)."""

    dry_run: bool
    expired: list[str]
    objects_freed: int
    bytes_freed: int
    packs_deleted: int
    packs_rewritten: int
    objects_kept: int
    skipped_young_packs: int


def reachable_commits(
    reader: HistoryReader, refs: dict[str, str], errors: list[str] | None = None
) -> list[str]:
    """Every commit any branch, tag, remote-tracking branch or detached HEAD reaches (all parents).

    A commit whose record cannot be read hides its ancestors; when ``errors`` is
    given, each such commit is described there.
    """
    roots = [v for k, v in refs.items() if k.startswith((BRANCH_PREFIX, TAG_PREFIX, REMOTE_PREFIX))]
    head = refs.get(HEAD)
    if head is not None and not head.startswith(SYMREF_PREFIX):
        roots.append(head)

    def parents_of(cid: str) -> list[str]:
        try:
            return reader.record(cid).parents
        except LedgerError as e:
            if errors is not None:
                errors.append(f"commit {cid[:12]}: {e}")
            return []

    return list(ancestors(parents_of, roots))


def first_parent_history(reader: HistoryReader, tip: str) -> list[Commit]:
    """A branch's commits, newest first, along first parents."""
    out: list[Commit] = []
    cid: str | None = tip
    while cid is not None:
        rec = reader.record(cid)
        out.append(Commit.from_record(cid, rec))
        cid = rec.parents[0] if rec.parents else None
    return out


def live_objects(
    reader: HistoryReader,
    commits: Sequence[str],
    expired: set[str],
    errors: list[str] | None = None,
) -> set[bytes]:
    """Ids of every object the given commits need: record; unless expired, manifest, chunks, blobs.

    A commit whose record or manifest cannot be read is described in ``errors``
    (when given): the objects it needs are then unknown.
    """
    live: set[bytes] = set()
    for cid in commits:
        live.add(bytes.fromhex(cid))
        if cid in expired:
            continue
        try:
            rec = reader.record(cid)
            live.add(bytes.fromhex(rec.manifest))
            packages = rec.meta.get("env", {}).get("packages")
            if isinstance(packages, str):
                live.add(bytes.fromhex(packages))
            manifest = reader.manifest_by_id(rec.manifest, cid)
        except LedgerError as e:
            if errors is not None:
                errors.append(f"commit {cid[:12]}: {e}")
            continue
        live.update(bytes.fromhex(c) for c in chunk_ids(manifest.root))
    return live


def collect(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    *,
    policies_for: Callable[[str], Sequence[AnyPolicy]],
    grace: float,
    dry_run: bool,
) -> GcReport:
    """One gc run; the caller holds the gc lock exclusively."""
    store.sync()
    state = refs.state()
    branches = {
        k[len(BRANCH_PREFIX) :]: v for k, v in state.refs.items() if k.startswith(BRANCH_PREFIX)
    }
    histories = {name: first_parent_history(reader, tip) for name, tip in branches.items()}
    pinned = set(branches.values()) | {v for k, v in state.refs.items() if k.startswith(TAG_PREFIX)}
    head = state.refs.get(HEAD)
    if head is not None and not head.startswith(SYMREF_PREFIX):
        pinned.add(head)
    _, expire = plan(histories, pinned, policies_for, utcnow())
    newly = {cid: why for cid, why in expire.items() if cid not in state.expired}
    expired = set(state.expired) | set(newly)
    errors: list[str] = []
    live = live_objects(reader, reachable_commits(reader, state.refs, errors), expired, errors)
    if errors:
        # Fail closed: an unreadable record hides its ancestors and an unreadable
        # manifest hides its chunks, so sweeping now could delete reachable objects.
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CorruptionError(
            f"gc stopped before changing anything: {errors[0]}{more}; "
            "run `ledger verify` and restore the damaged objects first"
        )
    if newly and not dry_run:
        now = utcnow()
        refs.update(
            {}, "gc", extra=[Expire(commit=c, reason=w, time=now) for c, w in newly.items()]
        )

    cutoff = time.time() - grace
    report = GcReport(dry_run, sorted(newly), 0, 0, 0, 0, 0, 0)
    doomed: list[str] = []
    repack: list[tuple[str, IndexEntry]] = []  # (pack, live entry) to copy, in order
    for name in store.pack_names():
        path = store.pack_path(name)
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        entries = store.pack_entries(name)
        if st.st_mtime > cutoff:
            report.skipped_young_packs += 1
            report.objects_kept += len(entries)
            continue
        dead = [e for e in entries if e.id not in live]
        kept = [e for e in entries if e.id in live]
        report.objects_kept += len(kept)
        if not dead:
            continue
        dead_bytes = sum(e.length for e in dead)
        total = sum(e.length for e in entries) or 1
        live_bytes = total - dead_bytes
        if (
            kept
            and dead_bytes / total < REPACK_DEAD_FRACTION
            and live_bytes > REPACK_SMALL_LIVE_BYTES
        ):
            continue
        report.objects_freed += len(dead)
        report.bytes_freed += st.st_size
        doomed.append(name)
        if kept:
            report.packs_rewritten += 1
            repack.extend((name, e) for e in kept)
        else:
            report.packs_deleted += 1
    if dry_run:
        report.bytes_freed -= _repacked_size([e for _, e in repack])
        return report
    if repack:
        writer = store.writer(None, compress=False)
        try:
            for name, entry in repack:
                writer.put_encoded(entry, store.read_encoded(name, entry))
            written = writer.finish()
        except BaseException:
            writer.abort()
            raise
        for new in written:
            report.bytes_freed -= store.pack_path(new).stat().st_size
    store.remove_packs(doomed)
    _sweep_tmp(store, cutoff)
    return report


def _repacked_size(entries: list[IndexEntry], max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES) -> int:
    """The bytes the pack(s) rewriting ``entries`` would take (what ``PackWriter`` writes)."""
    total = 0
    group: list[IndexEntry] = []
    ids: set[bytes] = set()
    pos = HEADER.size
    for entry in entries:
        if entry.id in ids:
            continue
        group.append(
            IndexEntry(entry.id, entry.kind, entry.codec, pos, entry.length, entry.raw_length)
        )
        ids.add(entry.id)
        pos += entry.length
        if pos >= max_pack_bytes:
            total += pos + len(encode_pack_tail(group, pos)[0])
            group, ids, pos = [], set(), HEADER.size
    if group:
        total += pos + len(encode_pack_tail(group, pos)[0])
    return total


def _sweep_tmp(store: ObjectStore, cutoff: float) -> None:
    for path in store.tmp_dir.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
