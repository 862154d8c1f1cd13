"""The commit graph of ``ledger log --graph``: order commits, then draw their lanes.

This module owns two pure functions over parent links: :func:`topo_order`
(children before parents, newest first among the commits that are ready) and
:func:`draw` (one row per commit, ``*`` on its lane and ``|`` on the others,
plus connector rows with ``/`` where lanes join and ``\\`` where a merge
opens one), in the style of ``git log --graph``. It never reads a ledger.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Mapping, Sequence

import msgspec


class GraphRow(msgspec.Struct, frozen=True):
    """One output row: its drawing, and the commit on it (None for a connector row)."""

    graph: str
    commit: str | None


def topo_order(parents: Mapping[str, Sequence[str]], times: Mapping[str, dt.datetime]) -> list[str]:
    """Every commit of ``parents``, each after all of its children, newest first otherwise.

    Parents outside ``parents`` are ignored.

    Example:
        >>> t = dt.datetime(2025, 1, 1)
        >>> topo_order({"b": ["a"], "a": []}, {"a": t, "b": t})
        ['b', 'a']
    """
    pending = dict.fromkeys(parents, 0)
    for ps in parents.values():
        for p in ps:
            if p in pending:
                pending[p] += 1
    ready = [(-times[c].timestamp(), c) for c, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        _, cid = heapq.heappop(ready)
        order.append(cid)
        for p in parents[cid]:
            if p in pending:
                pending[p] -= 1
                if pending[p] == 0:
                    heapq.heappush(ready, (-times[p].timestamp(), p))
    return order


def draw(order: Sequence[str], parents: Mapping[str, Sequence[str]]) -> list[GraphRow]:
    """The rows of the graph for commits in ``order`` (children first).

    Example:
        >>> rows = draw(["e", "c", "b", "a"], {"e": ["b"], "c": ["b"], "b": ["a"], "a": []})
        >>> [r.graph for r in rows]
        ['*', '| *', '|/', '*', '*']
    """
    lanes: list[str | None] = []
    rows: list[GraphRow] = []
    for cid in order:
        rows.extend(_join(lanes, cid))
        if cid in lanes:
            col = lanes.index(cid)
        else:
            lanes.append(cid)
            col = len(lanes) - 1
        rows.append(GraphRow(_lane_row(lanes, col), cid))
        known = [p for p in parents.get(cid, ()) if p in parents]
        lanes[col] = known[0] if known else None
        extra = [p for p in known[1:] if p not in lanes]
        if extra:
            rows.append(GraphRow(_fork_row(lanes, col), None))
            lanes[col + 1 : col + 1] = extra
        while lanes and lanes[-1] is None:
            lanes.pop()
    return rows


def _lane_row(lanes: Sequence[str | None], col: int) -> str:
    cells = [
        "*" if i == col else ("|" if lane is not None else " ") for i, lane in enumerate(lanes)
    ]
    return " ".join(cells).rstrip()


def _fork_row(lanes: Sequence[str | None], col: int) -> str:
    chars = [" "] * (2 * len(lanes) + 1)
    for i, lane in enumerate(lanes):
        if lane is None:
            continue
        if i <= col:
            chars[2 * i] = "|"
        else:
            chars[2 * i + 1] = "\\"
    chars[2 * col + 1] = "\\"
    return "".join(chars).rstrip()


def _join(lanes: list[str | None], cid: str) -> list[GraphRow]:
    """Connector rows that merge every lane waiting for ``cid`` and close empty lanes."""
    target: list[int | None] = []
    kept: list[str | None] = []
    for lane in lanes:
        if lane is None:
            target.append(None)
        elif lane == cid and cid in kept:
            target.append(kept.index(cid))
        else:
            target.append(len(kept))
            kept.append(lane)
    pos = list(range(len(lanes)))
    rows: list[GraphRow] = []
    while any(t is not None and pos[i] > t for i, t in enumerate(target)):
        chars = [" "] * (2 * len(lanes))
        for i, t in enumerate(target):
            if t is None:
                continue
            if pos[i] > t:
                chars[2 * pos[i] - 1] = "/"
                pos[i] -= 1
            elif chars[2 * pos[i]] == " ":
                chars[2 * pos[i]] = "|"
        rows.append(GraphRow("".join(chars).rstrip(), None))
    lanes[:] = kept
    return rows
