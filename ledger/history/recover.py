"""Recover ref moves a damaged event-log tail lost, from the commit objects themselves.

This module owns the answer to "which intact commit would this ref hold had
its event survived". Evidence that an event was lost is a damaged tail (still
in ``events.log`` or set aside by a writer, see eventlog.py); without one,
an unreferenced commit is an ordinary orphan (a crash before its event, a lost
race) and nothing here proposes it. With one, two sources name candidates:

* the damaged frame's payload, when it still decodes: each ``RefUpdate`` whose
  ``old`` is what the ref holds now (or an ancestor of its ``new``) and whose
  ``new`` is an intact commit no ref reaches;
* the commit records: a commit names its parents and the branch it was made
  on, so the newest intact commit no ref reaches that descends, first parent
  by first parent, from a branch's tip and names that branch is where the
  branch would be.

A candidate is *intact* when every object it needs (``needs.commit_needs``)
is stored and re-hashes correctly. A candidate that is not intact is reported,
never proposed: restoring it would point a ref at damage. This module
proposes; verify.py applies the proposals through ``RefStore.update`` (a
compare-and-swap), so nothing here writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from ledger.errors import LedgerError
from ledger.history.eventlog import EventLog, Tail
from ledger.history.needs import HistoryReader, commit_needs, reachable_commits
from ledger.history.records import CommitRecord, RefUpdate, RefView
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX
from ledger.objects.hashing import is_hex_id
from ledger.objects.store import ObjectStore


class Restore(NamedTuple):
    """A proposed ref move: ``ref`` from ``old`` (None: absent) to the intact commit ``new``."""

    ref: str
    old: str | None
    new: str
    why: str


class Findings(NamedTuple):
    """What recovery proposes, what it cannot (damaged candidates), and their damaged objects."""

    restores: list[Restore]
    unrecoverable: list[str]
    damaged: dict[str, str]  # hex id -> what (what a refetch from a remote would need)


# The source of the tail verify builds from the ref view a repair found when it set a
# damaged inner frame aside: the newest evidence of the refs, also of the ones the log lost.
VIEW_SOURCE = "the ref view before the repair"


def damaged_tails(log: EventLog, valid_end: int) -> tuple[list[Tail], Tail | None]:
    """The tails writers set aside, plus the one still in the log after ``valid_end`` (or None).

    Example:
        >>> damaged_tails(lg.refs.log, lg.refs.state().offset)  # doctest: +SKIP
        ([], None)
    """
    live = log.tail(valid_end)
    return log.aside_tails() + ([live] if live is not None else []), live


def lost_tips(reader: HistoryReader, store: ObjectStore, log: EventLog, state: RefView) -> set[str]:
    """Intact commits a damaged tail may have named: gc keeps them until verify --repair runs.

    Example:
        >>> lost_tips(lg, lg.store, lg.refs.log, lg.refs.state())  # doctest: +SKIP
        set()
    """
    tails, _ = damaged_tails(log, state.offset)
    return {r.new for r in find_lost(reader, store, state, tails).restores}


def damage_of(reader: HistoryReader, store: ObjectStore, cid: str) -> tuple[str, str, str] | None:
    """Why commit ``cid`` is not intact: (message, hex id, what) of its first bad object, or None.

    Example:
        >>> damage_of(lg, lg.store, lg.head.id) is None  # doctest: +SKIP
        True
    """
    current = (cid, f"commit {cid[:12]}")
    try:
        # The generator reads the record and the manifest after yielding them, so
        # an error is about the object yielded last, or the one it names.
        for need in commit_needs(reader, cid, expired=False):
            current = (need.id.hex(), need.what)
            if need.kind in ("commit", "manifest"):
                continue
            if store.locate(need.id) is None:
                return f"{need.what}: object {need.id.hex()[:12]} is missing", *current
            store.read(need.id, need.what)
    except LedgerError as e:
        named = e.fields.get("object")  # the object a damaged read names, when it names one
        if isinstance(named, str) and is_hex_id(named) and named != current[0]:
            current = (named, f"object {named[:12]} of commit {cid[:12]}")
        return str(e), *current
    return None


def find_lost(
    reader: HistoryReader, store: ObjectStore, state: RefView, tails: list[Tail]
) -> Findings:
    """Propose a move for every ref whose event a damaged tail in ``tails`` lost.

    Args:
        reader: records and manifests (hash-checked).
        store: where the candidates' objects are looked up and re-hashed.
        state: the refs as the intact part of the log leaves them.
        tails: the damaged tails (in the log, set aside); none: nothing is proposed.

    Example:
        >>> find_lost(lg, lg.store, lg.refs.state(), []).restores  # doctest: +SKIP
        []
    """
    if not tails:
        return Findings([], [], {})
    reached = set(reachable_commits(reader, state.refs))
    records: dict[str, CommitRecord] = {}
    unrecoverable: list[str] = []
    bad: dict[str, str] = {}
    for oid in store.ids("commit"):
        cid = oid.hex()
        if cid in reached:
            continue
        try:
            records[cid] = reader.record(cid)
        except LedgerError as e:
            unrecoverable.append(f"commit {cid[:12]} (no ref reaches it) is damaged: {e}")
            bad[cid] = f"commit {cid[:12]}"
    damage: dict[str, tuple[str, str, str] | None] = {}

    def intact(cid: str) -> bool:
        if cid not in damage:
            damage[cid] = damage_of(reader, store, cid)
        return damage[cid] is None

    proposed: dict[str, Restore] = {}
    for tail in tails:
        for event in tail.events:
            if not isinstance(event, RefUpdate) or event.ref in proposed:
                continue
            new = event.new
            if new is None or not is_hex_id(new):
                continue
            if new not in records:
                # A ref the replayed log lacks entirely, which the ref view (the newest
                # evidence, written after every event) still names: recreate it on its
                # intact commit, even one another ref reaches (a lost branch creation).
                lacking = tail.source == VIEW_SOURCE and event.ref not in state.refs
                if lacking and _exists(reader, new) and intact(new):
                    why = f"named by {tail.source}"
                    proposed[event.ref] = Restore(event.ref, None, new, why)
                continue
            old = state.refs.get(event.ref)
            if old != event.old and not _descends(records, new, old):
                continue
            if intact(new):
                why = f"named by the damaged event at byte {tail.offset} ({tail.source})"
                proposed[event.ref] = Restore(event.ref, old, new, why)
    for ref, old in _branch_tips(state).items():
        if ref in proposed:
            continue
        new = _newest_successor(records, ref[len(BRANCH_PREFIX) :], old, intact)
        if new is not None:
            why = f"commit {new[:12]} names branch {ref[len(BRANCH_PREFIX) :]!r} and descends from its tip"
            proposed[ref] = Restore(ref, old, new, why)
    for cid in sorted(records):
        found = damage.get(cid)
        if found is not None:
            unrecoverable.append(
                f"commit {cid[:12]} (no ref reaches it) could be a lost tip but is damaged: "
                f"{found[0]}; `ledger verify --repair --from REMOTE` refetches its objects"
            )
            bad[found[1]] = found[2]
    return Findings(sorted(proposed.values()), unrecoverable, bad)


def _exists(reader: HistoryReader, cid: str) -> bool:
    try:
        reader.record(cid)
    except LedgerError:
        return False
    return True


def _branch_tips(state: RefView) -> dict[str, str | None]:
    """Every branch and its tip, plus the unborn branch HEAD is attached to (tip None)."""
    tips: dict[str, str | None] = {
        ref: cid for ref, cid in state.refs.items() if ref.startswith(BRANCH_PREFIX)
    }
    head = state.refs.get(HEAD, "")
    if head.startswith(SYMREF_PREFIX + BRANCH_PREFIX):
        tips.setdefault(head[len(SYMREF_PREFIX) :], None)
    return tips


def _newest_successor(
    records: dict[str, CommitRecord],
    branch: str,
    tip: str | None,
    intact: Callable[[str], bool],
) -> str | None:
    """Follow unreferenced commits of ``branch`` from ``tip``, first parent by first parent.

    At a fork, the newest child (by time) is followed. The walk stops at the
    first child that is not intact: a ref is never moved onto damage.
    """
    children: dict[str | None, list[str]] = {}
    for cid, rec in records.items():
        if rec.branch == branch:
            children.setdefault(rec.parents[0] if rec.parents else None, []).append(cid)
    found: str | None = None
    at, seen = tip, set()
    while at in children and at not in seen:
        seen.add(at)
        nxt = max(children[at], key=lambda c: (records[c].time, c))
        if not intact(nxt):
            break
        found = at = nxt
    return found


def _descends(records: dict[str, CommitRecord], cid: str, ancestor: str | None) -> bool:
    """Whether unreferenced commit ``cid`` has ``ancestor`` on its first-parent line."""
    seen: set[str] = set()
    while cid in records and cid not in seen:
        seen.add(cid)
        parents = records[cid].parents
        if not parents:
            return ancestor is None
        if parents[0] == ancestor:
            return True
        cid = parents[0]
    return False
