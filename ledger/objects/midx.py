"""The merged pack index: one file that indexes many packs, so opening a ledger reads no pack.

This module owns the merged index format (docs/format.md, "Merged index"),
``objects/multi-pack-index``:

    header   b"LGMI" + u32 version + u32 pack count + u32 record count per kind (4)
    packs    the covered packs' names, 32 bytes each, sorted
    records  64 bytes each, grouped by kind (chunk, manifest, commit, blob), each
             group sorted by id: id (32) | u32 pack number | u8 codec number |
             3 zero bytes | u64 offset | u64 length | u64 raw length (big-endian)
    footer   32-byte blake3 of everything before it + b"LGMIEND1"

An object stored in several covered packs has one record per pack, adjacent.
:class:`MergedIndex` answers lookups by binary search over the file's bytes
as read (no per-object Python objects: the file's 64 bytes per record, plus a
32-byte copy of the id column made on the first lookup), so its cost is
O(log n) per lookup and O(1) to load beyond reading and hashing the file. It must never trust a file whose hash or bounds do not check, and
never decides which packs exist (``ledger.objects.store`` does).
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ledger.errors import CorruptionError
from ledger.objects.durable import atomic_write, read_bounded
from ledger.objects.hashing import HASH_BYTES, hash_bytes
from ledger.objects.packs import KINDS, IndexEntry, entry_is_valid

MIDX_NAME = "multi-pack-index"
MIDX_MAGIC = b"LGMI"
MIDX_VERSION = 1
MIDX_END = b"LGMIEND1"
# Codec numbers are part of the format: append new codecs, never renumber.
MIDX_CODECS = ("raw", "zstd", "bgzstd", "expzstd")
HEADER = struct.Struct(f">4sII{len(KINDS)}I")
RECORD = struct.Struct(f">{HASH_BYTES}sIB3xQQQ")
FOOTER_BYTES = HASH_BYTES + len(MIDX_END)
MAX_MIDX_BYTES = 1 << 34  # 16 GiB: ~270 million objects
# Groups searched for an id, the few history records first: a chunk costs a few more
# microseconds, next to reading its megabytes.
LOOKUP_ORDER = ("commit", "manifest", "blob", "chunk")


# Searches of a group done in Python (bisect over the records, ~7-10 us each) before its
# id column is copied for numpy (~3 us each after a copy of ~0.2 ms per 10,000 records):
# a fresh process resolving one id or walking ``main~50`` never pays for the copy.
PY_SEARCHES = 128


class _Ids(Sequence[bytes]):
    """The ids of one record group: bisected in place for the first searches, then in C
    (numpy) over a copy of the id column (32 bytes per record)."""

    def __init__(self, data: memoryview, start: int, length: int) -> None:
        self.data, self.start, self.length = data, start, length
        self._sorted: Any = None
        self._searches = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        at = self.start + i * RECORD.size
        return bytes(self.data[at : at + HASH_BYTES])

    def left(self, key: bytes) -> int:
        """The first position whose id is not below ``key`` (like ``bisect_left``)."""
        if self._sorted is None:
            self._searches += 1
            if self._searches <= PY_SEARCHES:
                return bisect.bisect_left(self, key)
            import numpy as np

            rows = np.frombuffer(self.data, np.uint8, self.length * RECORD.size, self.start)
            column = rows.reshape(self.length, RECORD.size)[:, :HASH_BYTES]
            # fixed-width bytes compare as memcmp for equal lengths (numpy pads with zeros)
            self._sorted = np.ascontiguousarray(column).view(f"S{HASH_BYTES}").ravel()
        return int(self._sorted.searchsorted(key))


class MergedIndex:
    """One merged index file, read and checked; lookups by binary search.

    Example:
        >>> idx = MergedIndex.build({"ab" * 32: [IndexEntry(b"x" * 32, "blob", "raw", 8, 4, 4)]})
        >>> [(pack[:4], entry.offset) for pack, entry in idx.lookup(b"x" * 32)]
        [('abab', 8)]
    """

    def __init__(self, data: bytes, what: str = MIDX_NAME) -> None:
        if len(data) < HEADER.size + FOOTER_BYTES or data[-len(MIDX_END) :] != MIDX_END:
            raise CorruptionError(f"merged index {what} is truncated or has no footer")
        body = memoryview(data)[:-FOOTER_BYTES]
        if hash_bytes(body) != data[-FOOTER_BYTES : -len(MIDX_END)]:
            raise CorruptionError(f"merged index {what} does not match its hash")
        magic, version, npacks, *counts = HEADER.unpack_from(data)
        if magic != MIDX_MAGIC:
            raise CorruptionError(f"merged index {what} does not start with its magic")
        if version != MIDX_VERSION:
            raise CorruptionError(
                f"merged index {what} has version {version}; upgrade training-ledger to read it"
            )
        start = HEADER.size + npacks * HASH_BYTES
        if start + sum(counts) * RECORD.size != len(body):
            raise CorruptionError(f"merged index {what} has counts that do not match its size")
        self.data = data
        self._view = memoryview(data)
        names = self._view[HEADER.size : HEADER.size + npacks * HASH_BYTES]  # (no copy)
        self.packs = [
            bytes(names[i * HASH_BYTES : (i + 1) * HASH_BYTES]).hex() for i in range(npacks)
        ]
        self._groups: dict[str, _Ids] = {}
        for kind, count in zip(KINDS, counts, strict=True):
            self._groups[kind] = _Ids(self._view, start, count)
            start += count * RECORD.size
        self.what = what

    @classmethod
    def read(cls, path: Path) -> MergedIndex:
        """Read and check the merged index at ``path``.

        Raises:
            FileNotFoundError: there is none.
            CorruptionError: it is damaged (the store then reads every pack's own index).
        """
        return cls(read_bounded(path, MAX_MIDX_BYTES), path.name)

    @classmethod
    def build(cls, packs: Mapping[str, Sequence[IndexEntry]]) -> MergedIndex:
        """A merged index covering ``packs`` (name -> its index entries)."""
        return cls(encode_midx(packs))

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def nbytes(self) -> int:
        """Memory it holds: the file's bytes, plus the id columns searched so far."""
        columns = [g._sorted for g in self._groups.values() if g._sorted is not None]
        return len(self.data) + sum(c.nbytes for c in columns)

    def _entry(self, kind: str, group: _Ids, i: int) -> tuple[str, IndexEntry]:
        oid, pack, codec, offset, length, raw = RECORD.unpack_from(
            self._view, group.start + i * RECORD.size
        )
        if pack >= len(self.packs) or codec >= len(MIDX_CODECS):
            raise CorruptionError(f"merged index {self.what} has an invalid record")
        entry = IndexEntry(oid, kind, MIDX_CODECS[codec], offset, length, raw)
        if not entry_is_valid(entry, 1 << 63):
            raise CorruptionError(f"merged index {self.what} has an invalid record")
        return self.packs[pack], entry

    def lookup(self, oid: bytes) -> list[tuple[str, IndexEntry]]:
        """Every (pack, entry) this index holds for ``oid`` (usually one, or none)."""
        out: list[tuple[str, IndexEntry]] = []
        for kind in LOOKUP_ORDER:
            group = self._groups[kind]
            i = group.left(oid)
            while i < len(group) and group[i] == oid:
                out.append(self._entry(kind, group, i))
                i += 1
            if out:
                return out
        return out

    def with_prefix(self, kind: str, prefix: bytes) -> Iterator[bytes]:
        """The distinct ids of ``kind`` that start with ``prefix``, in order."""
        group = self._groups[kind]
        i = group.left(prefix)
        last = None
        while i < len(group):
            oid = group[i]
            if not oid.startswith(prefix):
                return
            if oid != last:
                yield oid
            last = oid
            i += 1

    def entries(self, kind: str | None = None) -> Iterator[tuple[str, IndexEntry]]:
        """Every record (of one kind, or all), as (pack, entry)."""
        for k, group in self._groups.items():
            if kind is None or k == kind:
                for i in range(len(group)):
                    yield self._entry(k, group, i)

    def renumbered(self, kind: str, numbers: Mapping[int, int]) -> Any:
        """The records of one kind whose pack is in ``numbers``, with that new pack number,
        as a ``(k, 64)`` numpy array of their bytes (in file order)."""
        import numpy as np

        group = self._groups[kind]
        rows = np.frombuffer(self._view, np.uint8, group.length * RECORD.size, group.start)
        rows = rows.reshape(group.length, RECORD.size)
        old = np.ascontiguousarray(rows[:, HASH_BYTES : HASH_BYTES + 4]).view(">u4").ravel()
        remap = np.full(len(self.packs) + 1, -1, np.int64)  # the last: any number out of range
        for was, now in numbers.items():
            remap[was] = now
        new = remap[np.minimum(old, len(self.packs))]
        keep = new >= 0
        out = rows[keep].copy()
        out[:, HASH_BYTES : HASH_BYTES + 4] = new[keep].astype(">u4").view(np.uint8).reshape(-1, 4)
        return out

    def ids(self, kind: str) -> list[bytes]:
        """The distinct ids of one kind, sorted."""
        group = self._groups[kind]
        view, start, size = self._view, group.start, RECORD.size
        out = [
            bytes(view[start + i * size : start + i * size + HASH_BYTES]) for i in range(len(group))
        ]
        return list(dict.fromkeys(out))


def encode_midx(
    packs: Mapping[str, Sequence[IndexEntry]],
    base: MergedIndex | None = None,
    keep: Iterable[str] = (),
) -> bytes:
    """The bytes of a merged index covering ``packs`` (name -> its index entries) and the
    packs ``keep`` of ``base``, whose records are copied as they are (not decoded).

    Example:
        >>> MergedIndex(encode_midx({})).packs
        []
    """
    import numpy as np

    ours = set(keep)
    kept = [name for name in (base.packs if base is not None else []) if name in ours]
    names = sorted({*packs, *kept})
    number = {name: i for i, name in enumerate(names)}

    fresh: dict[str, list[bytes]] = {kind: [] for kind in KINDS}
    for name, entries in packs.items():
        n = number[name]
        for e in entries:
            fresh[e.kind].append(
                RECORD.pack(e.id, n, MIDX_CODECS.index(e.codec), e.offset, e.length, e.raw_length)
            )
    groups: dict[str, bytes] = {}
    renumber = {i: number[n] for i, n in enumerate(base.packs) if n in ours} if base else {}
    for kind in KINDS:
        added = np.frombuffer(b"".join(sorted(fresh[kind])), f"S{RECORD.size}")
        if renumber and base is not None:
            # fixed-width bytes compare as memcmp (numpy pads with zeros): one sorted run
            # merged into another by insertion, not a sort of every record
            old = np.ascontiguousarray(base.renumbered(kind, renumber)).view(f"S{RECORD.size}")
            old = old.ravel()
            if len(old) > 1 and not bool((old[1:] >= old[:-1]).all()):
                old = np.sort(old)
            added = np.insert(old, np.searchsorted(old, added), added)
        groups[kind] = added.tobytes()
    parts = [
        HEADER.pack(
            MIDX_MAGIC, MIDX_VERSION, len(names), *(len(groups[k]) // RECORD.size for k in KINDS)
        )
    ]
    parts += [bytes.fromhex(name) for name in names]
    parts += [groups[kind] for kind in KINDS]
    body = b"".join(parts)
    return body + hash_bytes(body) + MIDX_END


def write_midx(
    path: Path,
    packs: Mapping[str, Sequence[IndexEntry]],
    *,
    base: MergedIndex | None = None,
    keep: Iterable[str] = (),
    fsync: bool,
    tmp_dir: Path,
) -> MergedIndex:
    """Write a merged index (see :func:`encode_midx`) to ``path`` atomically (durably when ``fsync``)."""
    data = encode_midx(packs, base, keep)
    atomic_write(path, data, fsync=fsync, tmp_dir=tmp_dir)
    return MergedIndex(data, path.name)
