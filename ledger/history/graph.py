"""The commit graph: the ancestors walk, the first-parent walk, generation numbers, the
newest commits in topological order, and the refs under a prefix.

This module owns the one walk over every parent (gc, verify, ``delete_branch``,
``du``, push and fetch), the one walk along first parents (a branch's
history: retention, ``log``, shallow clones), and generation numbers (1 for
a root, else 1 + the largest of the parents'; a child's is always above its
parents', so a walk in decreasing generation knows when it has seen every
child of a commit: ``log --graph -n N`` reads what it shows, not the whole
history). It reads records only through the functions it is handed; it never
touches the store.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable, Collection, Iterable, Iterator

import msgspec

from ledger.errors import LedgerError
from ledger.history.records import CommitRecord, commit_decoder

ParentsOf = Callable[[str], list[str]]


def ancestors(
    parents_of: ParentsOf,
    roots: Iterable[str],
    *,
    stop: Collection[str] = (),
    oldest_first: bool = False,
) -> Iterator[str]:
    """Every commit reachable from ``roots`` (the roots included), each once, depth first.

    A generator, so a search can stop at the first hit (newest first, the
    default, reaches a recent ancestor without walking the whole history).

    Args:
        parents_of: a commit's parents, first parent first.
        roots: where the walk starts.
        stop: commits not walked into (nor past): e.g. what a remote already has.
        oldest_first: yield every commit after all of its parents (what a
            transfer wants: a commit's history is complete before it arrives).

    Example:
        >>> graph = {"c": ["b"], "b": ["a"], "a": []}
        >>> list(ancestors(graph.__getitem__, ["c"]))
        ['c', 'b', 'a']
        >>> list(ancestors(graph.__getitem__, ["c"], stop={"a"}, oldest_first=True))
        ['b', 'c']
    """
    seen: set[str] = set()
    stack = [(cid, False) for cid in reversed(list(roots))]
    while stack:
        cid, expanded = stack.pop()
        if expanded:
            yield cid
            continue
        if cid in seen or cid in stop:
            continue
        seen.add(cid)
        if oldest_first:
            stack.append((cid, True))
        else:
            yield cid
        stack.extend((parent, False) for parent in reversed(parents_of(cid)))


def first_parents(parents_of: ParentsOf, tip: str, limit: int | None = None) -> Iterator[str]:
    """A branch's commits from ``tip`` back to its root along first parents, newest first.

    Args:
        parents_of: a commit's parents, first parent first.
        tip: the newest commit.
        limit: stop after this many commits (None: the whole history).

    Example:
        >>> graph = {"c": ["b", "x"], "b": ["a"], "a": [], "x": []}
        >>> list(first_parents(graph.__getitem__, "c")), list(first_parents(graph.__getitem__, "c", 2))
        (['c', 'b', 'a'], ['c', 'b'])
    """
    cid: str | None = tip
    count = 0
    while cid is not None and (limit is None or count < limit):
        yield cid
        count += 1
        parents = parents_of(cid)
        cid = parents[0] if parents else None


def refs_under(refs: dict[str, str], prefix: str) -> dict[str, str]:
    """The refs under ``prefix``, named without it, sorted.

    Example:
        >>> refs_under({"refs/heads/main": "ab", "HEAD": "x"}, "refs/heads/")
        {'main': 'ab'}
    """
    return {k[len(prefix) :]: v for k, v in sorted(refs.items()) if k.startswith(prefix)}


def generation(
    cid: str, record_of: Callable[[str], CommitRecord], memo: dict[str, int] | None = None
) -> int:
    """A commit's generation number: stored in its record from format 4, else computed by
    walking down to commits that store one (``memo`` keeps what was computed).

    Example:
        >>> from ledger.history.records import utcnow
        >>> recs = {"a": CommitRecord(manifest="m", parents=[], time=utcnow()),
        ...         "b": CommitRecord(manifest="m", parents=["a"], time=utcnow())}
        >>> generation("b", recs.__getitem__)
        2
    """
    memo = {} if memo is None else memo
    stack = [cid]
    while stack:
        top = stack[-1]
        if top in memo:
            stack.pop()
            continue
        rec = record_of(top)
        if rec.generation is not None:
            memo[top] = rec.generation
            continue
        missing = [p for p in rec.parents if p not in memo]
        if missing:
            stack.extend(missing)
            continue
        memo[top] = 1 + max((memo[p] for p in rec.parents), default=0)
    return memo[cid]


def child_generation(read: Callable[[bytes, str], bytes], parent: str | None) -> int | None:
    """The generation number of a new commit on ``parent`` (records read with ``read``);
    None when the parent's history cannot be read (readers then compute it, or fail, later).
    """
    if parent is None:
        return 1

    def record_of(cid: str) -> CommitRecord:
        return commit_decoder.decode(read(bytes.fromhex(cid), f"commit {cid[:12]}"))

    try:
        return 1 + generation(parent, record_of)
    except (LedgerError, msgspec.DecodeError):  # a damaged parent must not block a commit
        return None


def newest_in_topo_order(
    tips: Iterable[str],
    parents_of: ParentsOf,
    generation_of: Callable[[str], int],
    time_of: Callable[[str], dt.datetime],
    limit: int,
) -> list[str]:
    """The first ``limit`` commits that ``topo_order`` gives for everything reachable from
    ``tips`` (children first, newest first among the ready), reading only about those.

    git's incremental topological walk: a commit is shown once every commit of a
    higher generation has been explored, which proves that none of its children
    is still unseen.

    Example:
        >>> parents = {"c": ["b"], "d": ["b"], "b": ["a"], "a": []}
        >>> gens = {"a": 1, "b": 2, "c": 3, "d": 3}
        >>> t = {k: dt.datetime(2025, 1, i + 1) for i, k in enumerate("abcd")}
        >>> newest_in_topo_order(["c", "d"], parents.__getitem__, gens.__getitem__, t.__getitem__, 3)
        ['d', 'c', 'b']
    """
    pending: dict[str, int] = {}  # children explored and not yet shown
    known: set[str] = set()
    explored: set[str] = set()
    shown: set[str] = set()
    frontier: list[tuple[int, str]] = []  # discovered, not yet explored: highest generation first
    ready: list[tuple[float, str]] = []  # no child left to show, as far as explored: newest first

    def discover(cid: str) -> None:
        if cid not in known:
            known.add(cid)
            heapq.heappush(frontier, (-generation_of(cid), cid))

    def explore(cid: str) -> None:
        if cid in explored:
            return
        explored.add(cid)
        for p in parents_of(cid):
            discover(p)
            if cid not in shown:
                pending[p] = pending.get(p, 0) + 1

    for tip in tips:
        if tip not in known:
            discover(tip)
            heapq.heappush(ready, (-time_of(tip).timestamp(), tip))
    order: list[str] = []
    while ready and len(order) < limit:
        _, cid = heapq.heappop(ready)
        if cid in shown:
            continue
        while frontier and -frontier[0][0] > generation_of(cid):
            explore(heapq.heappop(frontier)[1])
        if pending.get(cid, 0):
            continue  # a child is still to be shown: it comes back when that child is
        counted = cid in explored
        shown.add(cid)
        order.append(cid)
        explore(cid)
        for p in parents_of(cid):
            if counted:
                pending[p] -= 1
            if not pending.get(p, 0):
                heapq.heappush(ready, (-time_of(p).timestamp(), p))
    return order
