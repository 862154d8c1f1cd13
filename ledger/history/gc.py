"""Garbage collection as plan, then execute: expire what retention drops, sweep what no ref needs.

This module owns the gc algorithm and its safety rules (docs/retention.md):

* :func:`plan_gc` decides everything and changes nothing: the commits to
  expire and why, the packs to delete and to rewrite, the bytes that frees,
  the temporary files to sweep. It is a value (:class:`GcPlan`), printed by
  ``ledger gc --dry-run`` and asserted on by tests;
* :func:`execute` applies a plan after re-checking it: if any event since
  the plan could make an object needed again (a ref made or moved, a
  retention change) or a pack it sweeps changed or vanished, it raises
  :class:`StalePlanError` and changes nothing, so a stale plan never deletes
  what became reachable;
* both run under the ledger's gc lock, held exclusively; every commit holds it
  shared from its first dedup decision until its ref moved, so an object a
  commit relies on is either marked (the commit's ref is visible) or already
  gone before the commit looks for it (the commit re-syncs and writes it anew);
* a pack younger than the grace period is never touched;
* packs are swept whole: all-dead packs are deleted; packs that are mostly
  dead, or whose live part is small, are rewritten (live objects copied into
  a new pack, fsync'd, then the old pack deleted), so the bytes really come
  back; a kill at any instant leaves every live object in some pack;
* marking fails closed: if a reachable commit's record or a kept commit's
  manifest cannot be read, planning raises ``CorruptionError`` (what the
  unreadable object references is unknown).

It must never delete an object reachable from a ref or a retained commit.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Sequence

import msgspec

from ledger.errors import CorruptionError, LedgerError, StalePlanError
from ledger.history.graph import first_parents
from ledger.history.needs import HistoryReader, commit_needs, reachable_commits
from ledger.history.records import Commit, Expire, RefUpdate, RetentionSet, utcnow
from ledger.history.recover import lost_tips
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, TAG_PREFIX, RefStore
from ledger.history.retention import AnyPolicy, plan
from ledger.objects.compact import compact, compaction_due
from ledger.objects.packs import IndexEntry, packed_size
from ledger.objects.safepath import open_dir
from ledger.objects.store import DEFAULT_MAX_PACK_BYTES, ObjectStore
from ledger.progress import ProgressFn, tell

# A pack with dead objects is rewritten when at least this fraction of its bytes is dead,
# or when its live part is small enough that copying it costs next to nothing.
REPACK_DEAD_FRACTION = 0.5
REPACK_SMALL_LIVE_BYTES = 8 << 20
# Rewritten packs are sealed at this size; the plan's estimate lays the copies out the same.
REPACK_PACK_BYTES = DEFAULT_MAX_PACK_BYTES
# How often collect plans again when the ledger changed between its plan and its execution.
PLAN_ATTEMPTS = 3


class PackSweep(msgspec.Struct, frozen=True):
    """One pack a plan frees: deleted whole, or rewritten after its live objects are copied."""

    name: str
    size: int  # bytes of the pack file
    dead: int  # objects in it that no kept commit needs
    copy: list[str]  # hex ids of its live objects to copy (each id once in the whole plan)


class GcPlan(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one gc run will do, decided before anything changes.

    ``bytes_freed`` is the pack bytes that leave the disk: the swept packs'
    sizes less the size of the packs the copies are written to, laid out by
    ``packs.packed_size`` exactly as the writer lays them out, so it equals
    what :func:`execute` frees for this plan.
    """

    log_end: int  # the event log's length the plan was made from
    cutoff: float  # unix time: packs and temporary files modified after it are never touched
    expire: dict[str, str]  # commit -> why its state is dropped now
    delete: list[PackSweep]  # packs whose every object is dead
    rewrite: list[PackSweep]  # packs rewritten: their live objects copied first
    young_packs: list[str]  # packs within the grace period, left alone
    objects_kept: int  # objects left in some pack (young packs' included)
    objects_freed: int
    bytes_freed: int
    temp_files: list[str]  # names in objects/tmp older than the cutoff
    # names in objects/tmp that are not regular files (directories, links): never followed
    # nor deleted, since the ledger did not make them
    temp_skipped: list[str] = []


class GcReport(msgspec.Struct):
    """What a gc run did (or, with ``dry_run``, would do); ``plan`` is the plan it carried out."""

    dry_run: bool
    expired: list[str]
    objects_freed: int
    bytes_freed: int
    packs_deleted: int
    packs_rewritten: int
    objects_kept: int
    skipped_young_packs: int
    plan: GcPlan | None = None


def first_parent_history(
    reader: HistoryReader, tip: str, made: dict[str, Commit] | None = None
) -> list[Commit]:
    """A branch's commits, newest first, along first parents (``made``: Commits already built,
    shared by the branches of one plan, so each commit is built once)."""
    made = {} if made is None else made
    out = []
    for cid in first_parents(lambda c: reader.record(c).parents, tip):
        commit = made.get(cid)
        if commit is None:
            commit = made[cid] = Commit.from_record(cid, reader.record(cid))
        out.append(commit)
    return out


def live_objects(
    reader: HistoryReader,
    commits: Sequence[str],
    expired: set[str],
    errors: list[str] | None = None,
) -> set[bytes]:
    """Ids of every object the given commits need (``needs.commit_needs``).

    A commit whose record or manifest cannot be read is described in ``errors``
    (when given): the objects it needs are then unknown.
    """
    live: set[bytes] = set()
    for cid in commits:
        try:
            for need in commit_needs(reader, cid, expired=cid in expired):
                live.add(need.id)
        except LedgerError as e:
            if errors is not None:
                errors.append(f"commit {cid[:12]}: {e}")
    return live


def plan_gc(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    *,
    policies_for: Callable[[str], Sequence[AnyPolicy]],
    grace: float,
) -> GcPlan:
    """Decide one gc run; change nothing. The caller holds the gc lock (shared is enough).

    Raises:
        CorruptionError: a reachable commit's record or a kept commit's manifest
            cannot be read (sweeping could then delete what it references).

    Example:
        >>> p = plan_gc(lg, lg.store, lg.refs, policies_for=lg.retention, grace=0)  # doctest: +SKIP
        >>> sorted(p.expire), p.bytes_freed  # doctest: +SKIP
    """
    store.sync()
    state = refs.state()
    branches = {
        k[len(BRANCH_PREFIX) :]: v for k, v in state.refs.items() if k.startswith(BRANCH_PREFIX)
    }
    pinned = set(branches.values()) | {v for k, v in state.refs.items() if k.startswith(TAG_PREFIX)}
    head = state.refs.get(HEAD)
    if head is not None and not head.startswith(SYMREF_PREFIX):
        pinned.add(head)
    expire: dict[str, str] = {}
    if any(policies_for(name) for name in branches):  # else every commit keeps its state
        made: dict[str, Commit] = {}
        histories = {
            name: first_parent_history(reader, tip, made) for name, tip in branches.items()
        }
        _, expire = plan(histories, pinned, policies_for, utcnow())
    newly = {cid: why for cid, why in sorted(expire.items()) if cid not in state.expired}
    errors: list[str] = []
    # A commit a damaged log tail lost stays, with its history, until verify --repair.
    lost = {f"{TAG_PREFIX}lost/{cid}": cid for cid in lost_tips(reader, store, refs.log, state)}
    commits = reachable_commits(reader, {**state.refs, **lost}, errors)
    live = live_objects(reader, commits, set(state.expired) | set(newly), errors)
    if errors:
        # Fail closed: an unreadable record hides its ancestors and an unreadable
        # manifest hides its chunks, so sweeping now could delete reachable objects.
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise CorruptionError(
            f"gc stopped before changing anything: {errors[0]}{more}; "
            "verify the ledger and restore the damaged objects first"
        )
    cutoff = time.time() - grace
    delete: list[PackSweep] = []
    rewrite: list[PackSweep] = []
    young: list[str] = []
    kept_objects = freed_objects = freed_bytes = 0
    copied: set[bytes] = set()
    for name in store.pack_names():
        try:
            st = store.pack_path(name).stat()
        except FileNotFoundError:
            continue
        entries = store.pack_entries(name)
        if st.st_mtime > cutoff:
            young.append(name)
            kept_objects += len(entries)
            continue
        kept = [e for e in entries if e.id in live]
        dead = len(entries) - len(kept)
        kept_objects += len(kept)
        if not dead or not _worth_sweeping(entries, kept):
            continue
        copy = [e.id for e in kept if e.id not in copied]
        copied.update(copy)
        sweep = PackSweep(name, st.st_size, dead, [oid.hex() for oid in copy])
        (rewrite if kept else delete).append(sweep)
        freed_objects += dead
        freed_bytes += st.st_size
    freed_bytes -= packed_size((e for _, e in _copies(store, rewrite)), REPACK_PACK_BYTES)
    temp, skipped = _old_temp_files(store, cutoff)
    return GcPlan(
        log_end=state.offset,
        cutoff=cutoff,
        expire=newly,
        delete=delete,
        rewrite=rewrite,
        young_packs=young,
        objects_kept=kept_objects,
        objects_freed=freed_objects,
        bytes_freed=freed_bytes,
        temp_files=temp,
        temp_skipped=skipped,
    )


def _worth_sweeping(entries: list[IndexEntry], kept: list[IndexEntry]) -> bool:
    """Whether a pack with dead objects is swept: all dead, mostly dead, or little live."""
    total = sum(e.length for e in entries) or 1
    live_bytes = sum(e.length for e in kept)
    return (
        not kept
        or (total - live_bytes) / total >= REPACK_DEAD_FRACTION
        or live_bytes <= REPACK_SMALL_LIVE_BYTES
    )


def _old_temp_files(store: ObjectStore, cutoff: float) -> tuple[list[str], list[str]]:
    """Regular files in objects/tmp last modified before ``cutoff`` (crash leftovers), and
    the names there that are not regular files (skipped: the ledger makes only files there).

    Raises:
        UnsafePathError: objects/tmp (or objects/) is a symbolic link.
    """
    old: list[str] = []
    skipped: list[str] = []
    with open_dir(store.root, store.tmp_dir, "sweeping temporary files in") as fd:
        for name in sorted(os.listdir(fd)):
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISREG(st.st_mode):
                    skipped.append(name)
                elif st.st_mtime < cutoff:
                    old.append(name)
    return old, skipped


def _sweep_temp_files(store: ObjectStore, names: list[str], cutoff: float) -> None:
    """Delete those of ``names`` that are still old regular files in objects/tmp."""
    still, _ = _old_temp_files(store, cutoff)
    with open_dir(store.root, store.tmp_dir, "sweeping temporary files in") as fd:
        for name in set(names) & set(still):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)


def _copies(store: ObjectStore, rewrite: list[PackSweep]) -> list[tuple[str, IndexEntry]]:
    """(pack, entry) of every object a plan copies, in the order the new packs receive them."""
    out: list[tuple[str, IndexEntry]] = []
    for sweep in rewrite:
        wanted = {bytes.fromhex(oid) for oid in sweep.copy}
        out.extend((sweep.name, e) for e in store.pack_entries(sweep.name) if e.id in wanted)
    return out


def execute(
    plan: GcPlan, store: ObjectStore, refs: RefStore, progress: ProgressFn | None = None
) -> GcReport:
    """Carry out ``plan``; the caller holds the gc lock exclusively.

    Order of effects: record the expiries (one event-log append), write the
    copies into new packs (fsync'd), delete the swept packs, delete old
    temporary files.

    Raises:
        StalePlanError: since the plan, a ref was made or moved, retention
            changed, or a pack it sweeps was rewritten or removed; nothing changed.

    Example:
        >>> report = execute(plan_gc(lg, ...), lg.store, lg.refs)  # doctest: +SKIP
    """
    store.sync()
    _check_fresh(plan, store, refs)
    state = refs.state()
    newly = {cid: why for cid, why in plan.expire.items() if cid not in state.expired}
    if newly:
        now = utcnow()
        refs.update(
            {}, "gc", extra=[Expire(commit=c, reason=w, time=now) for c, w in newly.items()]
        )
    swept = [*plan.delete, *plan.rewrite]
    freed = sum(s.size for s in swept)
    copies = _copies(store, plan.rewrite)
    steps = len(copies) + 1  # every object copied, then the deletions
    tell(progress, 0, steps, "steps")
    if copies:
        writer = store.writer(None, compress=False, max_pack_bytes=REPACK_PACK_BYTES)
        try:
            for done, (name, entry) in enumerate(copies, 1):
                writer.put_encoded(entry, store.read_encoded(name, entry))
                tell(progress, done, steps, "steps")
            written = writer.finish()
        except BaseException:
            writer.abort()
            raise
        freed -= sum(store.pack_path(new).stat().st_size for new in written)
    store.remove_packs(s.name for s in swept)
    tell(progress, steps, steps, "steps")
    _sweep_temp_files(store, plan.temp_files, plan.cutoff)
    return _report(plan, dry_run=False, expired=sorted(newly), bytes_freed=freed)


def _check_fresh(plan: GcPlan, store: ObjectStore, refs: RefStore) -> None:
    for event in refs.log.read_from(plan.log_end).events:
        moved = isinstance(event, RefUpdate) and not (
            event.new is None or event.new.startswith(SYMREF_PREFIX)
        )
        if moved or isinstance(event, RetentionSet):
            raise StalePlanError(
                "the ledger changed since this gc plan was made (a ref was made or moved, or "
                "retention changed): plan again; nothing was changed"
            )
    for sweep in [*plan.delete, *plan.rewrite]:
        try:
            fresh = store.pack_path(sweep.name).stat().st_mtime <= plan.cutoff
        except FileNotFoundError:
            fresh = False
        if not fresh:
            raise StalePlanError(
                f"pack {sweep.name[:12]} was rewritten or removed since this gc plan was made: "
                "plan again; nothing was changed"
            )


def _report(plan: GcPlan, *, dry_run: bool, expired: list[str], bytes_freed: int) -> GcReport:
    return GcReport(
        dry_run=dry_run,
        expired=expired,
        objects_freed=plan.objects_freed,
        bytes_freed=bytes_freed,
        packs_deleted=len(plan.delete),
        packs_rewritten=len(plan.rewrite),
        objects_kept=plan.objects_kept,
        skipped_young_packs=len(plan.young_packs),
        plan=plan,
    )


def collect(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    *,
    policies_for: Callable[[str], Sequence[AnyPolicy]],
    grace: float,
    dry_run: bool,
    progress: ProgressFn | None = None,
) -> GcReport:
    """One gc run, :func:`plan_gc` then :func:`execute`; the caller holds the gc lock exclusively.

    ``progress`` is told the objects copied out of rewritten packs, then the
    packs deleted, as one count of "steps" (``ledger.progress``). After the
    run, the small packs are compacted and the merged index rewritten when a
    compaction is due (``ledger.objects.compact.compaction_due``).

    With ``dry_run`` the plan is returned (as ``report.plan``) and nothing changes.
    A plan gone stale in between (a ref moved by an operation that does not
    take the gc lock) is made again, up to ``PLAN_ATTEMPTS`` times.

    Example:
        >>> collect(lg, lg.store, lg.refs, policies_for=lg.retention, grace=0, dry_run=True).plan  # doctest: +SKIP
    """
    attempts = PLAN_ATTEMPTS
    while True:
        made = plan_gc(reader, store, refs, policies_for=policies_for, grace=grace)
        if dry_run:
            expired = sorted(made.expire)
            return _report(made, dry_run=True, expired=expired, bytes_freed=made.bytes_freed)
        try:
            report = execute(made, store, refs, progress)
        except StalePlanError:
            attempts -= 1
            if not attempts:
                raise
            continue
        if compaction_due(store):  # merge the small packs left, index every pack in one file
            compact(store)
        return report
