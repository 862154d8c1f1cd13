"""Pack files: many objects in one file, with the index at its end.

This module owns the pack format (see docs/format.md, "Packs"). A pack is

    header   b"LGPK" + u32 format version
    blobs    encoded objects, back to back
    index    msgpack PackIndex: one entry per object
    footer   u64 index offset, u64 index length, 32-byte blake3 of the index, b"LGPKEND1"

and is named ``<blake3 of its index, hex>.pack``. A pack is written under a
temporary name, fsync'd, then renamed, so a pack either exists whole or not at
all. This module must never decide which objects go in a pack, and must never
trust an index it has not checked against its footer and the pack's name.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import msgspec

from ledger.errors import CorruptionError
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
        or not 0 <= entry.raw_length <= MAX_OBJECT_BYTES
        or (entry.codec == "raw" and entry.length != entry.raw_length)
        or entry.offset + entry.length > blobs_end
    )


def pread_exact(fd: int, out: memoryview, offset: int, what: str) -> None:
    """Fill ``out`` from ``fd`` at ``offset`` or raise :class:`CorruptionError` on a short read."""
    done = 0
    while done < len(out):
        n = os.preadv(fd, [out[done:]], offset + done)
        if n == 0:
            raise CorruptionError(f"{what} is truncated")
        done += n
