"""The commit-graph file: every commit's parents and generation, so walks read no record.

This module owns ``objects/commit-graph`` (docs/format.md, "Commit graph"; git's
commit-graph): an optional cache, derived from the commit records, that turns
a walk such as ``main~50`` or an ancestry check from one record read per
commit (locate, read, hash, decode: ~20 us) into one binary search followed by
array reads. All integers are big-endian:

    header   b"LGCG" + u32 version (1) + u32 commit count N
    ids      N x 32 bytes, sorted
    rows     N x 12 bytes: u32 first parent's position, u32 second parent's
             position (0xFFFFFFFF: none), u32 generation
    footer   16-byte xxh3-128 of everything before it + b"LGCGEND1"

The graph is closed under parents: a commit is in it only with every parent
(so a walk that starts in the graph stays in it), and a commit with more than
two parents, or a parent the store lacks, is left out and read from its record.
Commits are immutable, so an entry never goes wrong; it can only outlive its
commit (a gc in another process), which callers check where it matters. A
missing, damaged or foreign file is never an error: the walk reads records.
This module must never trust a row whose positions or generations do not check.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import xxhash

from ledger.errors import CorruptionError, RecordTooLargeError
from ledger.history.records import CommitRecord
from ledger.objects.durable import atomic_write, read_bounded

log = logging.getLogger("ledger.commitgraph")

GRAPH_NAME = "commit-graph"
GRAPH_MAGIC = b"LGCG"
GRAPH_VERSION = 1
GRAPH_END = b"LGCGEND1"
HEADER = struct.Struct(">4sII")
ROW = struct.Struct(">III")
ID_BYTES = 32
NONE = 0xFFFFFFFF
FOOTER_BYTES = 16 + len(GRAPH_END)
MAX_GRAPH_BYTES = 1 << 32  # 4 GiB: ~97 million commits
# Positions remembered per walker: a walk's next step is then found without a search.
REMEMBER_MAX = 1 << 16


class _Ids(Sequence[bytes]):
    """The sorted id column, bisected in place."""

    def __init__(self, view: memoryview, n: int) -> None:
        self.view, self.n = view, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        return bytes(self.view[i * ID_BYTES : (i + 1) * ID_BYTES])


class CommitGraph:
    """One commit-graph file, read and checked.

    Example:
        >>> a, b = b"a" * 32, b"b" * 32
        >>> g = CommitGraph(encode_graph([a, b], [(NONE, NONE, 1), (0, NONE, 2)]))
        >>> g.position(b), g.parent_positions(1), g.generation(1)
        (1, [0], 2)
    """

    def __init__(self, data: bytes, what: str = GRAPH_NAME) -> None:
        if len(data) < HEADER.size + FOOTER_BYTES or data[-len(GRAPH_END) :] != GRAPH_END:
            raise CorruptionError(f"commit graph {what} is truncated or has no footer")
        body = memoryview(data)[:-FOOTER_BYTES]
        if xxhash.xxh3_128_digest(body) != data[-FOOTER_BYTES : -len(GRAPH_END)]:
            raise CorruptionError(f"commit graph {what} does not match its checksum")
        magic, version, n = HEADER.unpack_from(data)
        if magic != GRAPH_MAGIC:
            raise CorruptionError(f"commit graph {what} does not start with its magic")
        if version != GRAPH_VERSION:
            raise CorruptionError(f"commit graph {what} has version {version}, not {GRAPH_VERSION}")
        if HEADER.size + n * (ID_BYTES + ROW.size) != len(body):
            raise CorruptionError(f"commit graph {what} has a count that does not match its size")
        self.data, self.n, self.what = data, n, what
        self._rows = HEADER.size + n * ID_BYTES
        self._ids = _Ids(memoryview(data)[HEADER.size : self._rows], n)

    @classmethod
    def read(cls, path: Path) -> CommitGraph:
        """Read and check the commit graph at ``path``.

        Raises:
            FileNotFoundError: there is none.
            CorruptionError: it is damaged (walks then read records).
        """
        return cls(read_bounded(path, MAX_GRAPH_BYTES), path.name)

    def __len__(self) -> int:
        return self.n

    def id_at(self, pos: int) -> bytes:
        """The id of the commit at ``pos``."""
        return self._ids[pos]

    def position(self, oid: bytes) -> int | None:
        """The position of commit ``oid``, or None when the graph does not hold it (O(log n))."""
        i = bisect.bisect_left(self._ids, oid)
        return i if i < self.n and self._ids[i] == oid else None

    def row(self, pos: int) -> tuple[int, int, int]:
        """(first parent's position, second's, generation), positions NONE when absent."""
        return ROW.unpack_from(self.data, self._rows + pos * ROW.size)

    def generation(self, pos: int) -> int:
        """The generation number of the commit at ``pos``."""
        return self.row(pos)[2]

    def parent_positions(self, pos: int) -> list[int]:
        """The positions of a commit's parents, first parent first.

        Raises:
            CorruptionError: a position is out of range or a parent's generation is
                not below the child's (the walk could never end).
        """
        first, second, gen = self.row(pos)
        out = [p for p in (first, second) if p != NONE]
        for p in out:
            if p >= self.n or self.row(p)[2] >= gen:
                raise CorruptionError(f"commit graph {self.what} has a bad row at {pos}")
        return out

    def ids_array(self) -> Any:
        """The id column as a numpy ``S32`` array (for building the next graph)."""
        import numpy as np

        return np.frombuffer(self.data, f"S{ID_BYTES}", self.n, HEADER.size)

    def rows_array(self) -> Any:
        """The rows as an ``(n, 3)`` int64 numpy array."""
        import numpy as np

        rows = np.frombuffer(self.data, ">u4", self.n * 3, self._rows)
        return rows.reshape(self.n, 3).astype(np.int64)


def encode_graph(ids: Sequence[bytes], rows: Sequence[tuple[int, int, int]]) -> bytes:
    """The bytes of a commit graph of sorted ``ids`` and their ``rows``.

    Example:
        >>> len(encode_graph([b"a" * 32], [(NONE, NONE, 1)]))
        80
    """
    return _encode(len(ids), b"".join(ids), b"".join(ROW.pack(*r) for r in rows))


def _encode(n: int, ids: bytes, rows: bytes) -> bytes:
    body = b"".join([HEADER.pack(GRAPH_MAGIC, GRAPH_VERSION, n), ids, rows])
    return body + xxhash.xxh3_128_digest(body) + GRAPH_END


class Walker:
    """``parents_of(cid)`` from the graph where it holds the commit, else from its record.

    A walker remembers the positions of the parents it returned, so a walk's
    next step costs no search.

    Example:
        >>> parents = Walker(None, lambda cid: [])  # no graph: every answer from records
        >>> parents("ab" * 32)
        []
    """

    def __init__(self, graph: CommitGraph | None, from_record: Callable[[str], list[str]]) -> None:
        self.graph, self.from_record = graph, from_record
        self._pos: dict[str, int] = {}
        self.used = False  # whether any answer came from the graph

    def __call__(self, cid: str) -> list[str]:
        graph = self.graph
        if graph is None:
            return self.from_record(cid)
        pos = self._pos.get(cid)
        if pos is None:
            try:
                oid = bytes.fromhex(cid)
            except ValueError:
                return self.from_record(cid)
            pos = graph.position(oid) if len(oid) == ID_BYTES else None
            if pos is None:
                return self.from_record(cid)
        if len(self._pos) >= REMEMBER_MAX:
            self._pos.clear()
        try:
            positions = graph.parent_positions(pos)
        except CorruptionError as e:  # a bad row: this walk reads records from here on
            log.warning("%s; walks read commit records (`ledger verify --repair` rebuilds it)", e)
            self.graph = None
            return self.from_record(cid)
        self.used = True
        out = []
        for p in positions:
            parent = graph.id_at(p).hex()
            self._pos[parent] = p
            out.append(parent)
        return out


def build_graph(
    ids: Iterable[bytes],
    old: CommitGraph | None,
    read: Callable[[bytes], CommitRecord | None],
) -> bytes:
    """The bytes of a commit graph of the commits ``ids`` (the store's, now).

    Rows of commits ``old`` holds are taken from it; the others' parents come
    from ``read`` (None: the record cannot be read, so the commit is left out).
    Commits whose parents are not all in the graph, or that have more than two,
    are left out, and so are their descendants.

    Example:
        >>> from ledger.history.records import utcnow
        >>> rec = CommitRecord(manifest="m", parents=[], time=utcnow(), generation=1)
        >>> len(CommitGraph(build_graph([b"a" * 32], None, lambda oid: rec)))
        1
    """
    import numpy as np

    cur = np.array(list(ids), dtype=f"S{ID_BYTES}")
    cur.sort()
    if len(cur):
        cur = cur[np.append(True, cur[1:] != cur[:-1])]  # (np.unique hashes: 10x slower)
    raw = cur.tobytes()
    n = len(cur)
    if n == 0:
        return encode_graph([], [])
    # parent positions (into cur) and generation of every commit; -1 where unknown
    rows = np.full((n, 3), -1, np.int64)
    known = np.zeros(n, bool)
    if old is not None and len(old):
        old_ids, old_rows = old.ids_array(), old.rows_array()
        j = np.minimum(np.searchsorted(old_ids, cur), len(old_ids) - 1)
        in_old = old_ids[j] == cur
        to_new = np.full(len(old_ids) + 1, -2, np.int64)  # -2: the parent is gone
        to_new[j[in_old]] = np.nonzero(in_old)[0]
        to_new[-1] = -1  # index -1 stands for NONE below
        taken = old_rows[j[in_old]]
        for col in (0, 1):
            taken[:, col] = to_new[np.where(taken[:, col] == NONE, -1, taken[:, col])]
        rows[in_old] = taken
        known[in_old] = True
    position = {raw[i * ID_BYTES : (i + 1) * ID_BYTES]: i for i in np.nonzero(~known)[0].tolist()}

    def locate(oid: bytes) -> int:
        i = int(np.searchsorted(cur, oid))
        return i if i < n and raw[i * ID_BYTES : (i + 1) * ID_BYTES] == oid else -2

    new: set[int] = set()
    for oid, i in position.items():
        rec = read(oid)
        new.add(i)
        if rec is None or len(rec.parents) > 2:
            rows[i] = (-2, -1, 0)
        else:
            ps = [locate(bytes.fromhex(p)) for p in rec.parents] + [-1, -1]
            rows[i] = (ps[0], ps[1], 0)
    keep = _closure(rows, new)  # a commit only with all its parents
    kept = rows[keep]
    new_pos = np.append(np.cumsum(keep) - 1, NONE)  # index -1 (no parent) maps to NONE
    kept[:, :2] = new_pos[kept[:, :2]]
    return _encode(int(keep.sum()), cur[keep].tobytes(), kept.astype(">u4").tobytes())


def extend_graph(
    old: CommitGraph,
    ids: Iterable[bytes],
    read: Callable[[bytes], CommitRecord | None],
) -> bytes | None:
    """The bytes of ``old`` with the commits of ``ids`` it lacks added (None: it lacks none).

    What keeps the graph close behind the commits: its cost is a few copies of
    the file (no search per old commit) plus one record read per new commit. A
    new commit whose parents are not all in the graph (or new and added) is left
    out, as in :func:`build_graph`; commits deleted since ``old`` stay in it
    (gc rebuilds it whole).

    Example:
        >>> from ledger.history.records import utcnow
        >>> rec = CommitRecord(manifest="m", parents=[], time=utcnow())
        >>> g = CommitGraph(extend_graph(CommitGraph(encode_graph([], [])), [b"a" * 32], lambda o: rec))
        >>> g.position(b"a" * 32), g.generation(0)
        (0, 1)
    """
    import numpy as np

    fresh = sorted({oid for oid in ids if len(oid) == ID_BYTES and old.position(oid) is None})
    records = {oid: read(oid) for oid in fresh}

    def parents_of(oid: bytes) -> list[bytes] | None:
        rec = records[oid]
        return (
            None if rec is None or len(rec.parents) > 2 else list(map(bytes.fromhex, rec.parents))
        )

    gens = _kept_generations(fresh, parents_of, lambda p: _old_generation(old, p))
    if not gens:
        return None
    new_ids = np.array(sorted(gens), dtype=f"S{ID_BYTES}")
    old_ids, old_rows = old.ids_array(), old.rows_array()
    at = np.searchsorted(old_ids, new_ids)  # where each new id goes among the old
    shift = np.arange(len(old_ids)) + np.searchsorted(at, np.arange(len(old_ids)), "right")
    final = dict(zip(sorted(gens), (at + np.arange(len(at))).tolist(), strict=True))
    remap = np.append(shift, NONE)  # index -1 (NONE below) stays NONE
    for col in (0, 1):
        old_rows[:, col] = remap[np.where(old_rows[:, col] == NONE, -1, old_rows[:, col])]

    def place(parent: bytes) -> int:
        if parent in final:
            return final[parent]
        pos = old.position(parent)
        assert pos is not None  # a kept commit's parents are all in the graph
        return int(shift[pos])

    new_rows = []
    for oid in sorted(gens):
        rec = records[oid]
        assert rec is not None
        at_parents = [place(bytes.fromhex(p)) for p in rec.parents] + [NONE, NONE]
        new_rows.append((at_parents[0], at_parents[1], gens[oid]))
    ids_out = np.insert(old_ids, at, new_ids)
    rows_out = np.insert(old_rows, at, np.array(new_rows, np.int64).reshape(-1, 3), axis=0)
    return _encode(len(ids_out), ids_out.tobytes(), rows_out.astype(">u4").tobytes())


def _old_generation(old: CommitGraph, oid: bytes) -> int | None:
    pos = old.position(oid)
    return None if pos is None else old.generation(pos)


def _closure(rows: Any, new: set[int]) -> Any:
    """Which rows to keep (every parent kept), filling in the generations of the rows settled.

    ``rows[i]`` holds parent positions (-1: none, -2: a parent outside the store) and,
    for rows taken from the old graph, their generation; ``new`` names the rows
    read from records.
    """
    import numpy as np

    settle = np.zeros(len(rows), bool)
    settle[np.fromiter(new, np.int64, len(new))] = True
    # A row of the old graph has only old rows as parents (the old graph was closed), so
    # when none lost a parent (nothing deleted: the usual case) all of them stay as they are.
    if (rows[~settle, :2] == -2).any():
        settle[:] = True

    def parents_of(i: int) -> list[int] | None:
        ps = [p for p in rows[i, :2].tolist() if p != -1]
        return None if -2 in ps else ps

    gens = _kept_generations(np.nonzero(settle)[0].tolist(), parents_of, lambda p: int(rows[p, 2]))
    keep = ~settle
    for i, gen in gens.items():
        keep[i] = True
        rows[i, 2] = gen
    return keep


K = TypeVar("K", int, bytes)


def _kept_generations(
    todo: Sequence[K],
    parents_of: Callable[[K], list[K] | None],
    settled: Callable[[K], int | None],
) -> dict[K, int]:
    """The generations of the commits of ``todo`` kept in a closed graph: those whose
    parents are all kept (an iterative depth-first walk, parents first).

    ``parents_of(c)``: its parents, or None when it cannot be kept (no record, more than
    two parents); ``settled(p)``: the generation of a parent outside ``todo`` (None: not
    in the graph).
    """
    pending, done = set(todo), set()
    gens: dict[K, int] = {}
    for start in todo:
        stack = [start]
        while stack:
            c = stack[-1]
            if c in done:
                stack.pop()
                continue
            ps = parents_of(c)
            first = [p for p in ps or () if p in pending and p not in done]
            if first:
                stack.extend(first)
                continue
            stack.pop()
            done.add(c)
            if ps is None:
                continue
            parent_gens = [gens.get(p) if p in pending else settled(p) for p in ps]
            if all(g is not None for g in parent_gens):
                gens[c] = 1 + max((g for g in parent_gens if g is not None), default=0)
    return gens


class GraphFile:
    """A ledger's commit graph, read on first use and again whenever its file changed.

    Example:
        >>> GraphFile(Path("/nonexistent")).current() is None
        True
    """

    def __init__(self, root: Path) -> None:
        self.path = graph_path(root)
        self._seen: tuple[int, int, int, int] | None = None
        self._graph: CommitGraph | None = None
        self.error: str | None = None  # why the file was set aside, if it was
        self._lock = threading.Lock()

    def current(self) -> CommitGraph | None:
        """The graph as the file holds it now (None: no file, or a damaged one)."""
        key = stat_key(self.path)
        with self._lock:
            if key != self._seen:
                self._graph, self.error = (None, None) if key is None else load_graph(self.path)
                self._seen = key
            return self._graph

    def walker(self, from_record: Callable[[str], list[str]]) -> Walker:
        """A fresh :class:`Walker` over the current graph."""
        return Walker(self.current(), from_record)


def graph_path(root: Path) -> Path:
    """Where a ledger keeps its commit graph."""
    return root / "objects" / GRAPH_NAME


def load_graph(path: Path) -> tuple[CommitGraph | None, str | None]:
    """The commit graph at ``path`` (None when there is none or it is damaged), and why
    it was set aside (None: it was not)."""
    try:
        return CommitGraph.read(path), None
    except FileNotFoundError:
        return None, None
    except (CorruptionError, RecordTooLargeError, OSError) as e:
        log.warning("commit graph set aside (%s); walks read commit records", e)
        return None, str(e)


def disagreements(graph: CommitGraph, cid: str, rec: CommitRecord) -> bool:
    """Whether the graph's row for commit ``cid`` names other parents than its record.

    Example:
        >>> from ledger.history.records import utcnow
        >>> g = CommitGraph(encode_graph([b"a" * 32], [(NONE, NONE, 1)]))
        >>> disagreements(g, "61" * 32, CommitRecord(manifest="m", parents=[], time=utcnow()))
        False
    """
    pos = graph.position(bytes.fromhex(cid))
    if pos is None:
        return False
    try:
        return [graph.id_at(p).hex() for p in graph.parent_positions(pos)] != rec.parents
    except CorruptionError:
        return True


def write_graph(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Replace the commit graph by ``data`` (no fsync: a torn file fails its checksum)."""
    atomic_write(path, data, fsync=False, tmp_dir=tmp_dir)


def stat_key(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one version of the file from the next (None: no file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
