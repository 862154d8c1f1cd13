"""The commit graph: walking from commits to every ancestor, and the refs under a prefix.

This module owns the one parent walk that gc, verify, ``delete_branch``, ``du``
and the remotes share. It reads records only through the ``parents_of``
function it is handed; it never touches the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator


def ancestors(parents_of: Callable[[str], list[str]], roots: Iterable[str]) -> Iterator[str]:
    """Every commit reachable from ``roots`` (the roots included), each once, depth first.

    A generator, so a search can stop at the first hit.

    Example:
        >>> graph = {"c": ["b"], "b": ["a"], "a": []}
        >>> list(ancestors(graph.__getitem__, ["c"]))
        ['c', 'b', 'a']
    """
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        cid = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        yield cid
        stack.extend(parents_of(cid))


def refs_under(refs: dict[str, str], prefix: str) -> dict[str, str]:
    """The refs under ``prefix``, named without it, sorted.

    Example:
        >>> refs_under({"refs/heads/main": "ab", "HEAD": "x"}, "refs/heads/")
        {'main': 'ab'}
    """
    return {k[len(prefix) :]: v for k, v in sorted(refs.items()) if k.startswith(prefix)}
