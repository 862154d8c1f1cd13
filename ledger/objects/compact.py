"""Compaction: many small packs merged into few, and the merged index rewritten to cover them.

This module owns when a store's packs are due for compaction and how they are
merged (docs/format.md, "Merged index"; git's auto-gc repack and
multi-pack index, restic's prune). One commit writes one small pack; without
compaction a ledger of 100,000 commits has 100,000 packs, and every open
would read each one's index. :func:`compact` copies the objects of the small
packs into new packs, then writes a merged index covering every pack, then
deletes the small packs, in that order and each step durable before the next,
so a kill at any instant leaves every object in some pack that either the
merged index or a pack scan finds. It keeps every object (it never decides
what is live: that is gc's), so a reader that still holds the old pack list
finds a vanished object again after re-syncing. The caller holds the ledger's
gc lock exclusively. It must never delete a pack it has not first copied, nor
anything but packs the store lists.
"""

from __future__ import annotations

import msgspec

from ledger.objects.packs import IndexEntry
from ledger.objects.store import DEFAULT_MAX_PACK_BYTES, ObjectStore

# Packs below this size may be merged; larger ones are left as they are (indexed by the
# merged index).
SMALL_PACK_BYTES = 64 << 20
# The small packs kept form a geometric progression of this factor (git's
# ``repack --geometric``): each is at least this many times the one below, so a
# byte is copied O(log n) times over a ledger's life, never once per compaction.
GEOMETRIC_FACTOR = 2
# A compaction is due when this many packs are not covered by the merged index, or more
# when the index is large (1 per 1024 covered objects), so the index's rewrite, linear in
# its size, costs each commit about the same at any history length.
COMPACT_PACKS = 32
COVERED_OBJECTS_PER_PACK = 1024


class CompactReport(msgspec.Struct):
    """What one compaction did."""

    packs_merged: int
    packs_written: int
    objects_copied: int
    bytes_copied: int
    packs_after: int


def compaction_due(store: ObjectStore) -> bool:
    """Whether enough packs lie outside the merged index to make a compaction worth it.

    Example:
        >>> compaction_due(lg.store)  # doctest: +SKIP
        False
    """
    uncovered = len(store.pack_names()) - len(store.covered_packs())
    return uncovered >= max(COMPACT_PACKS, store.covered_objects() // COVERED_OBJECTS_PER_PACK)


def compact(store: ObjectStore, *, small: int = SMALL_PACK_BYTES) -> CompactReport:
    """Merge the packs smaller than ``small`` into new packs and index every pack in one file.

    The caller holds the ledger's gc lock exclusively. An object the merge finds
    in a pack it keeps (a copy left by an earlier compaction cut short) is not
    copied again.

    Example:
        >>> with lg.gc_lock.hold(shared=False):  # doctest: +SKIP
        ...     compact(lg.store).packs_after
        1
    """
    store.sync()
    sizes: dict[str, int] = {}
    for name in store.pack_names():
        try:
            sizes[name] = store.pack_path(name).stat().st_size
        except FileNotFoundError:
            continue
    merge = rollup({n: size for n, size in sizes.items() if size < small})
    if len(merge) < 2:  # nothing to merge: index what is not indexed yet
        merge = []
    merging = set(merge)
    keep = [n for n in sizes if n not in merging]
    covered = store.covered_packs()
    fresh = {n: store.pack_entries(n) for n in keep if n not in covered}
    copies: list[tuple[str, IndexEntry]] = []
    seen = {e.id for entries in fresh.values() for e in entries}  # kept packs hold these
    for name in merge:
        for entry in store.pack_entries(name):
            if entry.id not in seen and not _kept_elsewhere(store, entry.id, merging):
                seen.add(entry.id)
                copies.append((name, entry))
    written: list[str] = []
    copied_bytes = 0
    if copies:
        writer = store.writer(None, compress=False, max_pack_bytes=DEFAULT_MAX_PACK_BYTES)
        try:
            for name, entry in copies:
                writer.put_encoded(entry, store.read_encoded(name, entry))
                copied_bytes += entry.length
            written = writer.finish()
        except BaseException:
            writer.abort()
            raise
        for name in written:
            fresh[name] = store.pack_entries(name)
    store.write_midx(fresh, keep=covered & set(keep))
    store.remove_packs(merge)
    return CompactReport(
        packs_merged=len(merge),
        packs_written=len(written),
        objects_copied=len(copies),
        bytes_copied=copied_bytes,
        packs_after=len(store.pack_names()),
    )


def rollup(sizes: dict[str, int], factor: int = GEOMETRIC_FACTOR) -> list[str]:
    """The packs to merge so that those left, with the merged one, grow geometrically.

    Sorted by size, the packs above the split already grow by ``factor`` each;
    the ones below are merged, then any pack the merged one would outgrow joins
    them (the rule of git's ``repack --geometric``).

    Example:
        >>> rollup({"a": 1, "b": 1, "c": 1, "d": 64})
        ['a', 'b', 'c']
        >>> rollup({"a": 1, "b": 4, "c": 16})
        []
    """
    order = sorted(sizes, key=lambda n: (sizes[n], n))
    split = len(order) - 1
    while split > 0 and sizes[order[split]] >= factor * sizes[order[split - 1]]:
        split -= 1
    if split == 0:
        return []
    split += 1
    total = sum(sizes[n] for n in order[:split])
    while split < len(order) and sizes[order[split]] < factor * total:
        total += sizes[order[split]]
        split += 1
    return order[:split]


def _kept_elsewhere(store: ObjectStore, oid: bytes, merge: set[str]) -> bool:
    """Whether ``oid`` is in a covered pack that this compaction keeps."""
    return any(pack not in merge for pack, _ in store.covered_locations(oid))
