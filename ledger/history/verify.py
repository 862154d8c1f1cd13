"""Verify: prove the ledger is whole, or say precisely what is not.

This module owns the checks behind ``ledger verify``: the event log replays,
the ref view agrees with it, every ref resolves, every object a kept commit
needs (``needs.commit_needs``) exists (and with ``full``, every stored object
re-hashes correctly). A torn log tail whose lost event moved a ref to an
intact commit (``recover.find_lost``) is a problem naming that commit; other
crash leftovers (a torn tail that cost nothing, orphan temp files, objects no
kept commit needs) are notes. ``repair`` sets a torn tail aside, restores the
refs it lost by compare-and-swap, and rebuilds the ref view; it never deletes
an object, and never moves a ref onto damage. The report lists every missing
or damaged object (``damaged``) for a refetch from a remote (api, refill.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec

from ledger.errors import CorruptionError, LedgerError, RefConflictError
from ledger.history.commitgraph import GraphFile, disagreements
from ledger.history.eventlog import Tail
from ledger.history.needs import HistoryReader, commit_needs, reachable_commits
from ledger.history.records import Event, RefUpdate, RefView
from ledger.history.recover import VIEW_SOURCE, damaged_tails, find_lost
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, RefStore
from ledger.objects.check import decode_object
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
    # hex id -> what it is, of every needed object found missing or damaged: what
    # `verify --repair --from REMOTE` refetches
    damaged: dict[str, str] = {}


def verify(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    *,
    full: bool,
    repair: bool,
    progress: ProgressFn | None = None,
    graph: GraphFile | None = None,
    rebuild_graph: Callable[[], None] | None = None,
) -> VerifyReport:
    """Check the ledger; see the module docstring. ``repair`` holds the write lock while fixing.

    ``progress`` is told the commits checked (``ledger.progress``). ``graph``: the
    commit graph, whose rows are checked against the records; ``rebuild_graph``
    writes it again from the records (what ``repair`` does when it is wrong).
    """
    problems: list[str] = []
    notes: list[str] = []
    repaired: list[str] = []
    bad: dict[str, str] = {}
    store.sync()
    evidence: RefView | None = None
    try:
        replayed = refs.replay_state()
    except CorruptionError as e:
        if not repair:
            return VerifyReport(False, [f"event log: {e}"], notes, 0, 0, 0, repaired, True)
        with refs.lock.hold():
            evidence = refs.unverified_view()  # written after the damaged frame: what it held
            try:
                sides = refs.log.excise_damaged()
            except CorruptionError:
                sides = []  # no frame to keep: not a log this repair can mend
            if sides:
                refs.write_view(refs.replay_state())  # the old view's offsets are gone
        if not sides:
            return VerifyReport(False, [f"event log: {e}"], notes, 0, 0, 0, repaired)
        repaired.extend(
            f"set the damaged event-log {'header' if offset == 0 else f'frame at byte {offset}'} "
            f"aside into {side.name} "
            "(the log keeps every intact frame; what the frame moved is restored below "
            "where its commits show it)"
            for offset, side in sides
        )
        replayed = refs.replay_state()
        if _restore_head(refs, evidence, replayed, repaired):
            replayed = refs.replay_state()
    restored = _lost_events(
        reader, store, refs, replayed, (problems, notes, repaired), repair, bad, evidence
    )
    if restored:
        replayed = refs.replay_state()
    view = refs.state()
    # A view built past the valid end was built from the frame now damaged: the
    # damaged tail (reported above) explains it, it is no separate problem.
    past_tail = refs.log.path.stat().st_size > replayed.offset < refs.view_offset
    stale_view = (refs.view_status == "mismatch" and not past_tail) or (
        view.refs != replayed.refs
        or view.expired != replayed.expired
        or view.retention != replayed.retention
    )
    if stale_view:
        problems.append(
            "the ref view (refs file) disagrees with the event log (its digest does not match "
            "the log; readers replay the log instead); verifying with repair rebuilds it"
        )
    elif refs.view_status == "unchecked":
        notes.append(
            "the ref view (refs file) carries no digest (written by an older training-ledger); "
            "readers replay the log until the next write rewrites it"
        )
    restorable = any("`ledger verify --repair` restores" in p for p in problems)
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
            bad[cid] = f"commit {cid[:12]}"
    commits = reachable_commits(reader, state.refs)
    walks = None if graph is None else graph.current()
    graph_wrong = 0
    chunks_checked = bytes_checked = remote_only = 0
    needed: set[bytes] = set()  # every object a reachable commit needs (orphans: the rest)
    for done, cid in enumerate(commits):
        tell(progress, done, len(commits), "commits")
        try:
            rec = reader.record(cid)
        except LedgerError as e:
            problems.append(f"commit {cid[:12]}: {e}")
            needed.add(bytes.fromhex(cid))
            bad[cid] = f"commit {cid[:12]}"
            continue
        graph_wrong += walks is not None and disagreements(walks, cid, rec)
        for parent in rec.parents:
            try:
                reader.record(parent)
            except LedgerError as e:
                problems.append(f"commit {cid[:12]} parent {parent[:12]}: {e}")
                bad[parent] = f"commit {parent[:12]}"
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
                        bad[need.id.hex()] = need.what
                    continue
                is_chunk = need.kind == "chunk"
                chunks_checked += is_chunk
                if full:
                    try:
                        store.read(need.id, need.what)
                        bytes_checked += located[1].raw_length if is_chunk else 0
                    except LedgerError as e:
                        problems.append(str(e))
                        bad[need.id.hex()] = need.what
        except LedgerError as e:
            problems.append(f"commit {cid[:12]}: {e}")
            bad.setdefault(rec.manifest, f"manifest of commit {cid[:12]}")
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
    if full:
        _check_other_copies(store, needed, problems, notes)
    graph_repairable = _check_graph(graph, graph_wrong, (problems, notes, repaired), rebuild_graph)
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
        repairable=(stale_view or restorable or graph_repairable) and not repair,
        damaged=bad,
    )


def _check_graph(
    graph: GraphFile | None,
    wrong: int,
    out: tuple[list[str], list[str], list[str]],
    rebuild: Callable[[], None] | None,
) -> bool:
    """Report (or with ``rebuild``, mend) a commit graph that disagrees with the records or
    was set aside; True when a repair would mend it."""
    problems, notes, repaired = out
    damaged = graph is not None and graph.error is not None
    if not wrong and not damaged:
        return False
    if rebuild is not None:
        rebuild()
        repaired.append(
            "rebuilt the commit graph from the commit records "
            + (f"({wrong} row(s) disagreed with them)" if wrong else "(it was damaged)")
        )
        return False
    if wrong:
        problems.append(
            f"the commit graph disagrees with {wrong} commit record(s); "
            "`ledger verify --repair` rebuilds it from the records"
        )
    else:
        assert graph is not None
        notes.append(
            f"the commit graph was set aside ({graph.error}); walks read commit records "
            "until the next compaction or `ledger verify --repair` rebuilds it"
        )
    return True


def _check_other_copies(
    store: ObjectStore, needed: set[bytes], problems: list[str], notes: list[str]
) -> None:
    """Re-hash every stored object the needs walk did not read (``verify --full``).

    That walk reads each needed object once, from the copy the index uses; here
    every other entry of every pack is checked: objects no kept commit needs
    (a damaged one is a note: gc removes it) and second copies of needed ones (a
    problem: a gc that rewrites the first copy's pack would keep this one).
    """
    for name in store.pack_names():
        for entry in store.pack_entries(name):
            located = store.locate(entry.id)
            if entry.id in needed and located is not None and located[0] == name:
                continue  # read by the needs walk
            label = f"object {entry.id.hex()[:12]} ({entry.kind}) in pack {name[:12]}"
            try:
                decode_object(entry, store.read_encoded(name, entry), label, pack=name)
            except LedgerError as e:
                if entry.id in needed:
                    problems.append(f"a second copy of a needed object is damaged: {e}")
                else:
                    notes.append(f"{e} (no kept commit needs it; gc removes it)")


def _lost_events(
    reader: HistoryReader,
    store: ObjectStore,
    refs: RefStore,
    replayed: RefView,
    out: tuple[list[str], list[str], list[str]],
    repair: bool,
    bad: dict[str, str],
    evidence: RefView | None = None,
) -> bool:
    """Report (and with ``repair``, undo) what a damaged log tail cost; True if refs moved.

    A tail whose lost event named an intact commit is a problem naming that
    commit; a tail that cost nothing findable is a note. Repair sets the tail
    aside (never deletes it), then moves each such ref by compare-and-swap.
    ``out`` is (problems, notes, repaired); ``evidence``: the ref view as it was before a damaged
    frame inside the log was set aside (its refs are then hints, not a cut log).
    """
    problems, notes, repaired = out
    tails, live = damaged_tails(refs.log, replayed.offset)
    cut, viewed = _cut_end(refs, replayed, evidence)
    found = find_lost(reader, store, replayed, [*tails, *([cut] if cut else [])])
    problems.extend(found.unrecoverable)
    bad.update(found.damaged)
    if live is not None:
        kind = "a full-length frame that fails its checksum" if live.complete else "a short frame"
        notes.append(
            f"event log has a torn tail of {len(live.data)} bytes at byte {live.offset} "
            f"({kind}: a crash mid-append, a power loss or a flipped bit); readers ignore it "
            f"and the next write sets it aside{_hint(live)}"
        )
    if cut is not None and evidence is not None:
        notes.append(
            "the ref view, written before the damaged frame was set aside, names the refs "
            "as they were: the evidence of what that frame moved"
        )
    elif cut is not None:
        notes.append(
            f"the event log ends at byte {cut.offset} but the ref view was written when it "
            f"was {viewed} bytes long: the log lost its end (a file system that "
            "cut it short, a restore of an older copy); the refs the view names are the "
            "evidence of what it held"
        )
    for tail in tails:
        if tail is not live:
            notes.append(
                f"{tail.source} holds damaged event-log bytes set aside{_hint(tail)}; "
                "`ledger verify --repair` marks it dealt with"
            )
    lost = [
        f"the event log lost a move of {r.ref} from {_short(r.old)} to commit {r.new[:12]}, "
        f"whose objects are intact ({r.why}); readers see {_short(r.old)}: "
        "`ledger verify --repair` restores it"
        for r in found.restores
    ]
    if not repair:
        problems.extend(lost)
        return False
    moved = False
    with refs.lock.hold():
        if live is not None:
            side = refs.log.truncate(live.offset)
            repaired.append(
                f"cut {len(live.data)} torn bytes from the event log, kept in {side.name}"
                if side is not None
                else "the torn event-log tail was already cut by a writer"
            )
        for r, line in zip(found.restores, lost, strict=True):
            try:
                refs.update({r.ref: (r.old, r.new)}, f"repair: restore {r.new[:12]} (lost event)")
            except RefConflictError as e:
                problems.append(f"{line} (not restored: {e})")
                continue
            moved = True
            repaired.append(f"restored {r.ref} to {r.new[:12]} (was {_short(r.old)}; {r.why})")
        if not found.unrecoverable and not any("not restored" in p for p in problems):
            for tail in refs.log.aside_tails():
                refs.log.retire_aside(tail)
    return moved


def _restore_head(
    refs: RefStore, view: RefView | None, replayed: RefView, repaired: list[str]
) -> bool:
    """After a damaged frame was set aside: HEAD back where the ref view says (or on
    ``main``), when the frame was the one that set it (the log's first frame, say)."""
    if HEAD in replayed.refs:
        return False
    head = view.refs.get(HEAD, "") if view is not None else ""
    branch = head[len(SYMREF_PREFIX) :] if head and head.startswith(SYMREF_PREFIX) else ""
    if not branch.startswith(BRANCH_PREFIX):
        head = SYMREF_PREFIX + BRANCH_PREFIX + "main"
        why = "no evidence of where it was: attached to main"
    else:
        why = "from the ref view"
    refs.update({HEAD: (None, head)}, "repair: restore HEAD (lost event)")
    repaired.append(f"restored HEAD to {head} ({why})")
    return True


def _cut_end(
    refs: RefStore, replayed: RefView, evidence: RefView | None = None
) -> tuple[Tail | None, int]:
    """When the ref view was built from a longer log than there is: its refs as a lost tail,
    and the log's length when the view was written.

    The log is append-only, so a view whose offset is past the log's end saw
    events the log no longer holds. Its refs (untrusted: its digest cannot be
    checked) become the events of a damaged tail, so that recovery proposes
    each intact commit it names, as for any damaged tail.
    """
    view = evidence or refs.unverified_view()
    size = refs.log.path.stat().st_size
    if view is None or (evidence is None and view.offset <= size):
        return None, 0
    now = dt.datetime.now(dt.timezone.utc)
    events: list[Event] = [
        RefUpdate(ref=ref, old=replayed.refs.get(ref), new=new, time=now)
        for ref, new in sorted(view.refs.items())
        if ref != HEAD and new != replayed.refs.get(ref)
    ]
    source = VIEW_SOURCE if evidence is not None else "the ref view (refs)"
    return Tail(size, b"", False, events, source), view.offset


def _hint(tail: Tail) -> str:
    """What a damaged frame's payload seems to say, when it still decodes (untrusted)."""
    moves = [f"{e.ref} -> {_short(e.new)}" for e in tail.events if isinstance(e, RefUpdate)]
    return f" (it seems to say, unchecked: {', '.join(moves)})" if moves else ""


def _short(value: str | None) -> str:
    return "nothing" if value is None else value[:12]
