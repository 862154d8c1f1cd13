"""The store's in-memory index: which pack holds each object, in O(1) or O(log n).

This module owns the table a store looks objects up in: the merged index
(``ledger.objects.midx``, binary search over its bytes) for the packs it
covers, and a dict for the packs it does not (written since the last
compaction). It is told which packs exist and which vanished; it never reads
the disk itself (``ledger.objects.store`` does).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ledger.objects.midx import MergedIndex
from ledger.objects.packs import IndexEntry

Located = tuple[str, IndexEntry]
# What one object of a pack the merged index does not cover costs in memory (measured:
# the IndexEntry, its id bytes, the dict slot and the list slot).
OVERLAY_ENTRY_BYTES = 360


class PackTable:
    """Objects -> (pack, entry): the merged index, plus a dict for the packs it does not cover.

    Example:
        >>> table = PackTable()
        >>> table.add("p", [IndexEntry(b"x" * 32, "blob", "raw", 8, 4, 4)])
        >>> table.find(b"x" * 32)[0], table.find(b"y" * 32)
        ('p', None)
    """

    def __init__(self) -> None:
        self.overlay: dict[bytes, Located] = {}
        self.entries_of: dict[str, list[IndexEntry]] = {}  # the packs not covered
        self.midx: MergedIndex | None = None
        self.gone: set[str] = set()  # covered packs that vanished (gc, compaction)
        self._last: tuple[bytes, Located] | None = None  # a read locates its object twice

    def covered(self) -> set[str]:
        """The packs the merged index covers (present or gone)."""
        return set(self.midx.packs) if self.midx is not None else set()

    def add(self, name: str, entries: Sequence[IndexEntry]) -> None:
        """Index a pack the merged index does not cover."""
        for entry in entries:
            self.overlay.setdefault(entry.id, (name, entry))
        self.entries_of[name] = list(entries)

    def _rebuild(self) -> None:
        self.overlay = {}
        for name in sorted(self.entries_of):
            for entry in self.entries_of[name]:
                self.overlay.setdefault(entry.id, (name, entry))

    def set_midx(self, fresh: MergedIndex | None) -> set[str]:
        """Use a new merged index; the packs the old one covered and this one does not."""
        old = self.covered()
        self.midx = fresh
        self._last = None  # it may name a pack the new index does not cover (and gone forgets)
        new = self.covered()
        self.gone &= new
        moved = new & self.entries_of.keys()
        if moved:  # packs the new merged index covers leave the dict
            for name in moved:
                self.entries_of.pop(name)
            self._rebuild()
        return old - new

    def forget(self, names: Iterable[str]) -> None:
        """Packs that vanished: their objects are no longer found through them."""
        covered = self.covered()
        dropped = False
        self._last = None
        for name in names:
            dropped |= self.entries_of.pop(name, None) is not None
            if name in covered:
                self.gone.add(name)
        if dropped:
            self._rebuild()

    def covered_locations(self, oid: bytes) -> list[Located]:
        """Every (pack, entry) of ``oid`` in the covered packs still present."""
        found = self.midx.lookup(oid) if self.midx is not None else []
        return [located for located in found if located[0] not in self.gone]

    def find(self, oid: bytes) -> Located | None:
        """One (pack, entry) of ``oid``, or None."""
        found = self.overlay.get(oid)
        if found is not None or self.midx is None:
            return found
        last = self._last
        if last is not None and last[0] == oid and last[1][0] not in self.gone:
            return last[1]
        found = next(iter(self.covered_locations(oid)), None)
        if found is not None:
            self._last = (oid, found)
        return found

    def entries(self, kind: str) -> Iterator[Located]:
        """(pack, entry) of every object of one kind, each id once."""
        seen: set[bytes] = set()
        for oid, located in list(self.overlay.items()):
            if located[1].kind == kind:
                seen.add(oid)
                yield located
        if self.midx is not None:
            for located in self.midx.entries(kind):
                oid = located[1].id
                if oid not in seen and located[0] not in self.gone:
                    seen.add(oid)
                    yield located

    def ids(self, kind: str) -> list[bytes]:
        """Ids of every object of one kind."""
        out = [oid for oid, (_, e) in list(self.overlay.items()) if e.kind == kind]
        if self.midx is not None:
            if self.gone:
                out += [e.id for p, e in self.midx.entries(kind) if p not in self.gone]
            else:
                out += self.midx.ids(kind)
        return list(dict.fromkeys(out))

    def uncovered_ids(self, kind: str) -> list[bytes]:
        """Ids of one kind in the dict (packs the merged index does not cover)."""
        return [oid for oid, (_, e) in list(self.overlay.items()) if e.kind == kind]

    def ids_with_prefix(self, kind: str, prefix: str) -> list[str]:
        """Hex ids of one kind that start with the lower-case hex ``prefix``: a binary search
        of the merged index plus a pass over the dict."""
        raw = bytes.fromhex(prefix[: len(prefix) // 2 * 2])
        found = [o for o, (_, e) in list(self.overlay.items()) if e.kind == kind]
        if self.midx is not None:
            found += [o for o in self.midx.with_prefix(kind, raw) if self.find(o) is not None]
        return [h for h in dict.fromkeys(o.hex() for o in found) if h.startswith(prefix)]

    def nbytes(self) -> int:
        """Bytes this table holds: the merged index file plus the dict's entries."""
        midx = self.midx.nbytes() if self.midx is not None else 0
        return midx + sum(len(v) for v in self.entries_of.values()) * OVERLAY_ENTRY_BYTES
