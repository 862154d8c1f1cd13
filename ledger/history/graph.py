"""The commit graph: the ancestors walk, the first-parent walk, and the refs under a prefix.

This module owns the one walk over every parent (gc, verify, ``delete_branch``,
``du``, push and fetch) and the one walk along first parents (a branch's
history: retention, ``log``, shallow clones). It reads records only through
the ``parents_of`` function it is handed; it never touches the store.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator

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
