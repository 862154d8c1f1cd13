"""Pack files: many objects in one file, with the index at its end.

This module owns the pack format (see docs/format.md, "Packs"). A pack is

    header   b"LGPK" + u32 format version
    blobs    encoded objects, back to back
    index    msgpack PackIndex: one entry per object
    footer   u64 index offset, u64 index length, 32-byte blake3 of the index, b"LGPKEND1"

and is named ``<blake3 of its index, hex>.pack``. A pack is written under a
temporary name, fsync'd, then renamed, so a pack either exists whole or not at
all. :class:`PackFile` is the one writer of that layout (the store's packs,
the packs built for a remote, gc's rewritten packs), and :func:`packed_size`
is what the same layout takes without writing it (gc's estimate). This module
must never decide which objects go in a pack, and must never trust an index it
has not checked against its footer and the pack's name.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import msgspec

from ledger.errors import CorruptionError, RecordTooLargeError
from ledger.objects.codecs import CODEC_NAMES
from ledger.objects.hashing import HASH_BYTES, hash_bytes

PACK_MAGIC = b"LGPK"
PACK_VERSION = 1
HEADER = struct.Struct("<4sI")
FOOTER = struct.Struct(f"<QQ{HASH_BYTES}s8s")
FOOTER_MAGIC = b"LGPKEND1"
KINDS = ("chunk", "manifest", "commit", "blob")
# Bounds a reader enforces before trusting a pack it did not write.
MAX_INDEX_BYTES = 1 << 30
MAX_OBJECT_BYTES = 1 << 32
# The most raw bytes one object of each kind may declare (docs/format.md, "Caps"):
# a reader refuses a larger entry before allocating anything, a writer refuses
# to store one. Chunks are also bounded by what their manifest implies.
MAX_RECORD_BYTES = {
    "chunk": MAX_OBJECT_BYTES,
    "manifest": 1 << 30,  # ~100 B a tensor node + 65 B a chunk id: millions of tensors
    "commit": 64 << 20,
    "blob": 256 << 20,  # metadata blobs (the installed-package list)
}


class IndexEntry(msgspec.Struct, array_like=True, frozen=True):
    """Where one object lives inside a pack."""

    id: bytes
    kind: str
    codec: str
    offset: int
    length: int
    raw_length: int


class PackIndex(msgspec.Struct, tag="pack-index", frozen=True):
    """The index stored at the end of a pack."""

    format: int
    entries: list[IndexEntry]


_index_decoder = msgspec.msgpack.Decoder(PackIndex)
_encoder = msgspec.msgpack.Encoder()


def encode_pack_tail(entries: list[IndexEntry], index_offset: int) -> tuple[bytes, str]:
    """The index + footer bytes for a pack whose blobs end at ``index_offset``, and its name."""
    index = _encoder.encode(PackIndex(format=PACK_VERSION, entries=entries))
    digest = hash_bytes(index)
    footer = FOOTER.pack(index_offset, len(index), digest, FOOTER_MAGIC)
    return index + footer, digest.hex()


def read_pack_index(path: Path) -> list[IndexEntry]:
    """Read and check the index of the pack at ``path``.

    Raises:
        CorruptionError: the pack is truncated, its footer or index is damaged,
            or an entry points outside the blob area.
    """
    name = path.stem
    size = path.stat().st_size
    if size < HEADER.size + FOOTER.size:
        raise CorruptionError(f"pack {path.name} is truncated ({size} bytes)")
    with open(path, "rb") as f:
        magic, version = HEADER.unpack(f.read(HEADER.size))
        if magic != PACK_MAGIC:
            raise CorruptionError(f"pack {path.name} does not start with the pack magic")
        if version > PACK_VERSION:
            raise CorruptionError(
                f"pack {path.name} has format {version}; upgrade training-ledger to read it"
            )
        if version < 1:
            raise CorruptionError(f"pack {path.name} has format {version}, which never existed")
        f.seek(size - FOOTER.size)
        offset, length, digest, end = FOOTER.unpack(f.read(FOOTER.size))
        if end != FOOTER_MAGIC:
            raise CorruptionError(f"pack {path.name} has no valid footer (torn or truncated)")
        if length > MAX_INDEX_BYTES or offset + length + FOOTER.size != size:
            raise CorruptionError(f"pack {path.name} footer points outside the file")
        f.seek(offset)
        index = f.read(length)
    if hash_bytes(index) != digest or digest.hex() != name:
        raise CorruptionError(f"pack {path.name} index does not match its hash")
    try:
        decoded = _index_decoder.decode(index)
    except msgspec.DecodeError as e:
        raise CorruptionError(f"pack {path.name} index cannot be decoded: {e}") from e
    if decoded.format != version:
        raise CorruptionError(
            f"pack {path.name} index has format {decoded.format} in a format {version} pack"
        )
    if not all(entry_is_valid(entry, offset) for entry in decoded.entries):
        raise CorruptionError(f"pack {path.name} has an invalid index entry")
    return decoded.entries


def entry_is_valid(entry: IndexEntry, blobs_end: int) -> bool:
    """Whether an index entry read from an untrusted pack or index can be used.

    Args:
        entry: the entry.
        blobs_end: the offset its blob must end by.

    Example:
        >>> entry_is_valid(IndexEntry(b"x" * 32, "chunk", "raw", 8, 4, 4), 12)
        True
    """
    return not (
        len(entry.id) != HASH_BYTES
        or entry.kind not in KINDS
        or entry.codec not in CODEC_NAMES
        or entry.offset < HEADER.size
        or entry.length < 0
        or not 0 <= entry.raw_length <= MAX_RECORD_BYTES[entry.kind]
        or (entry.codec == "raw" and entry.length != entry.raw_length)
        or entry.offset + entry.length > blobs_end
    )


def check_record_size(kind: str, size: int, what: str) -> None:
    """Refuse to store an object of ``kind`` over its cap (:data:`MAX_RECORD_BYTES`).

    Raises:
        RecordTooLargeError: ``size`` is over the cap; nothing was written.

    Example:
        >>> check_record_size("commit", 1024, "commit record")
    """
    cap = MAX_RECORD_BYTES[kind]
    if size > cap:
        raise RecordTooLargeError(
            f"{what} is {size} bytes, over the {cap >> 20} MiB a {kind} object may hold; "
            "store less in it (large data belongs in tensors or ledger.File values)",
            kind=kind,
            size=size,
            cap=cap,
        )


def pread_exact(fd: int, out: memoryview, offset: int, what: str) -> None:
    """Fill ``out`` from ``fd`` at ``offset`` or raise :class:`CorruptionError` on a short read."""
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], offset + done)
        if n == 0:
            raise CorruptionError(f"{what} is truncated")
        done += n


class Writable(Protocol):
    """A file object a pack is written to (a buffered file, or a ``direct.DirectFile``)."""

    def write(self, data: bytes | memoryview, /) -> int: ...


class PackLayout:
    """Where the objects of one pack lie and the bytes around them; no I/O.

    Example:
        >>> layout = PackLayout()
        >>> layout.place(b"x" * 32, "blob", "raw", 5, 5).offset == HEADER.size
        True
        >>> layout.size() == HEADER.size + 5 + len(layout.tail()[0])
        True
    """

    def __init__(self) -> None:
        self.entries: list[IndexEntry] = []
        self.end = HEADER.size

    def place(self, oid: bytes, kind: str, codec: str, length: int, raw_length: int) -> IndexEntry:
        """Put the next object's ``length`` stored bytes right after the previous one's."""
        entry = IndexEntry(oid, kind, codec, self.end, length, raw_length)
        self.entries.append(entry)
        self.end += length
        return entry

    def full(self, target: int) -> bool:
        """Whether a writer sealing at ``target`` bytes seals this pack now."""
        return self.end >= target

    def tail(self) -> tuple[bytes, str]:
        """The index + footer bytes after the blobs, and the pack's name."""
        return encode_pack_tail(self.entries, self.end)

    def size(self) -> int:
        """The bytes of the whole pack once sealed."""
        return self.end + len(self.tail()[0])


class PackFile:
    """One pack written to a file object: header now, blobs as they come, index and footer last.

    Example:
        >>> import io
        >>> fh = io.BytesIO()
        >>> pack = PackFile(fh)
        >>> _ = pack.add(hash_bytes(b"hi"), "blob", "raw", b"hi", 2)
        >>> name, size = pack.seal()
        >>> size == len(fh.getvalue()) and name == hash_bytes(fh.getvalue()[10:-56]).hex()
        True
    """

    def __init__(self, fh: Writable) -> None:
        self.fh = fh
        self.layout = PackLayout()
        fh.write(HEADER.pack(PACK_MAGIC, PACK_VERSION))

    def add(
        self, oid: bytes, kind: str, codec: str, blob: bytes | memoryview, raw_length: int
    ) -> IndexEntry:
        """Write one stored (encoded) object after the previous one; its index entry."""
        self.fh.write(blob)
        return self.layout.place(oid, kind, codec, len(blob), raw_length)

    def seal(self) -> tuple[str, int]:
        """Write the index and footer; the pack's name and size. Nothing may be added after."""
        tail, name = self.layout.tail()
        self.fh.write(tail)
        return name, self.layout.end + len(tail)


def packed_size(entries: Iterable[IndexEntry], target: int) -> int:
    """The bytes of the packs a writer sealing at ``target`` writes for ``entries``, in order.

    Lays the entries' stored bytes out as :class:`PackFile` does (same offsets,
    same index, same sealing rule) without writing anything.

    Example:
        >>> e = IndexEntry(b"x" * 32, "blob", "raw", 8, 100, 100)
        >>> packed_size([e, e], 1) == 2 * packed_size([e], 1)
        True
    """
    total = 0
    layout: PackLayout | None = None
    for entry in entries:
        layout = layout or PackLayout()
        layout.place(entry.id, entry.kind, entry.codec, entry.length, entry.raw_length)
        if layout.full(target):
            total += layout.size()
            layout = None
    return total + (layout.size() if layout is not None else 0)
