"""Space per branch: commits, logical bytes, unique and exclusive chunk bytes of each history.

This module owns the per-branch figures of ``ledger du``, computed in time
linear in the commits and chunk references (not in branches times history): one
depth-first walk from the roots of a history without merges keeps the chunks
of the path it is on counted, so each branch tip reads its unique bytes off
the walk, and each chunk is exclusive to a branch when every commit that
references it lies only in that branch's history. A history with merges falls
back to one walk per branch. It reads commits only through the functions it
is handed and never touches the store.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import msgspec

from ledger.history.graph import ancestors

_MANY = ""  # the owner of a commit or chunk that more than one branch reaches


class Usage(msgspec.Struct, frozen=True):
    """One branch's history: its commits, their logical bytes, its chunks' raw bytes."""

    branch: str
    commits: int
    logical_bytes: int
    unique_bytes: int
    exclusive_bytes: int


def usage_by_branch(
    tips: Mapping[str, str],
    parents_of: Callable[[str], list[str]],
    logical_of: Callable[[str], int],
    chunks_of: Mapping[str, set[str]],
    sizes: Mapping[str, int],
) -> list[Usage]:
    """Each branch's :class:`Usage`, in the order of ``tips`` (branch -> tip commit).

    Example:
        >>> parents = {"a": [], "b": ["a"], "c": ["a"]}
        >>> chunks = {"a": {"x"}, "b": {"y"}, "c": {"x"}}
        >>> [(u.branch, u.unique_bytes, u.exclusive_bytes) for u in usage_by_branch(
        ...     {"main": "b", "exp": "c"}, parents.__getitem__, lambda c: 1, chunks, {"x": 5, "y": 7})]
        [('main', 12, 7), ('exp', 5, 0)]
    """
    names = list(tips)
    commits = list(ancestors(parents_of, [tips[n] for n in names]))
    if any(len(parents_of(c)) > 1 for c in commits):
        return _per_branch(tips, names, parents_of, logical_of, chunks_of, sizes)
    return _one_walk(tips, names, commits, parents_of, logical_of, chunks_of, sizes)


def _one_walk(
    tips: Mapping[str, str],
    names: list[str],
    commits: list[str],
    parents_of: Callable[[str], list[str]],
    logical_of: Callable[[str], int],
    chunks_of: Mapping[str, set[str]],
    sizes: Mapping[str, int],
) -> list[Usage]:
    children: dict[str, list[str]] = {c: [] for c in commits}
    roots: list[str] = []
    for c in commits:
        parents = parents_of(c)
        (children[parents[0]] if parents else roots).append(c)
    tipped: dict[str, list[str]] = {}
    for n in names:
        tipped.setdefault(tips[n], []).append(n)
    on_path: Counter[str] = Counter()
    depth = logical = unique = 0
    found: dict[str, tuple[int, int, int]] = {}
    owner: dict[str, str] = {}  # commit -> the one branch reaching it, or _MANY
    chunk_owner: dict[str, str] = {}
    stack: list[tuple[str, bool]] = [(r, False) for r in reversed(roots)]
    while stack:
        cid, leaving = stack.pop()
        mine = chunks_of.get(cid, set())
        if not leaving:
            depth += 1
            logical += logical_of(cid)
            for ch in mine:
                on_path[ch] += 1
                if on_path[ch] == 1:
                    unique += sizes.get(ch, 0)
            for n in tipped.get(cid, ()):
                found[n] = (depth, logical, unique)
            stack.append((cid, True))
            stack.extend((child, False) for child in children[cid])
            continue
        reach = {owner[child] for child in children[cid]} | set(tipped.get(cid, ()))
        owner[cid] = reach.pop() if len(reach) == 1 else _MANY
        for ch in mine:
            before = chunk_owner.setdefault(ch, owner[cid])
            if before != owner[cid]:
                chunk_owner[ch] = _MANY
            on_path[ch] -= 1
            if on_path[ch] == 0:
                unique -= sizes.get(ch, 0)
        depth -= 1
        logical -= logical_of(cid)
    exclusive: Counter[str] = Counter()
    for ch, who in chunk_owner.items():
        if who != _MANY:
            exclusive[who] += sizes.get(ch, 0)
    return [Usage(n, *found[n], exclusive[n]) for n in names]


def _per_branch(
    tips: Mapping[str, str],
    names: list[str],
    parents_of: Callable[[str], list[str]],
    logical_of: Callable[[str], int],
    chunks_of: Mapping[str, set[str]],
    sizes: Mapping[str, int],
) -> list[Usage]:
    """With merges: one walk per branch; a chunk is exclusive when one branch has it."""
    held: dict[str, tuple[int, int, set[str]]] = {}
    reach: Counter[str] = Counter()
    for n in names:
        history = list(ancestors(parents_of, [tips[n]]))
        chunks: set[str] = set().union(*(chunks_of.get(c, set()) for c in history))
        held[n] = (len(history), sum(logical_of(c) for c in history), chunks)
        reach.update(chunks)
    out = []
    for n in names:
        count, logical, chunks = held[n]
        unique = sum(sizes.get(c, 0) for c in chunks)
        exclusive = sum(sizes.get(c, 0) for c in chunks if reach[c] == 1)
        out.append(Usage(n, count, logical, unique, exclusive))
    return out
