"""The remote layout: the refs document, index files and packs, and their checks.

This module owns the records a remote holds (docs/remotes.md, "Layout")::

    refs.json            RemoteRefs (JSON): branches, tags, expired commits,
                         the index files in force; moved only by put_if (CAS)
    index/<hash>.idx     RemoteIndex (msgpack): for each pack its name, size and
                         entries; named by the blake3 of its bytes (immutable)
    packs/<hash>.pack    packs in the ledger's own pack format (docs/format.md §5)

and the validation of everything read back: a remote is untrusted, so every
name, size and field is checked before use and every object is re-hashed
(by ``ledger.objects.check.decode_object``, where it is read). It also builds
packs into temporary files for upload (laid out by ``ledger.objects.packs.PackFile``).
It must never do network I/O itself.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, Literal

import msgspec

from ledger.errors import FormatVersionError, RemoteCorruptionError
from ledger.history.refs import check_ref_name
from ledger.objects.durable import temp_path
from ledger.objects.hashing import hash_bytes, is_hex_id
from ledger.objects.packs import FOOTER, MAX_OBJECT_BYTES, IndexEntry, PackFile, entry_is_valid

REMOTE_KIND = "training-ledger-remote"
REMOTE_FORMAT = 1
REFS_KEY = "refs.json"
#: A push lists at most this many index files; beyond it, it writes one merged index.
MAX_INDEX_FILES = 8
#: Bounds on what a reader accepts before it parses.
MAX_REFS_BYTES = 64 << 20
MAX_INDEX_BYTES = 1 << 30
MAX_PACK_BYTES = 1 << 40


def stored_bound(raw_length: int) -> int:
    """The most bytes an encoded object of ``raw_length`` raw bytes may take on a remote.

    Writers store an encoding only when it is smaller than the raw bytes; the
    bound adds zstd's worst case (and bgzstd's plane table) so that any
    honest entry fits, and a declared length past it (a 1 KiB commit said to
    be stored in 1 GiB) is refused before a range is read.

    Example:
        >>> stored_bound(1 << 20) > 1 << 20
        True
    """
    return raw_length + (raw_length >> 7) + 4096


class RemoteExpiry(msgspec.Struct, frozen=True):
    """Why and when a commit's state was dropped (its record stays on the remote)."""

    reason: str
    time: dt.datetime


class RemoteRefs(msgspec.Struct, tag="remote-refs", kw_only=True):
    """``refs.json``: the only mutable record of a remote."""

    kind: str = REMOTE_KIND
    format: int = REMOTE_FORMAT
    chunk_size: int
    compress: bool | Literal["auto"] = "auto"
    head: str | None = None
    branches: dict[str, str] = {}
    tags: dict[str, str] = {}
    expired: dict[str, RemoteExpiry] = {}
    indexes: list[str] = []
    updated: dt.datetime
    pushes: int = 0


class PackRecord(msgspec.Struct, frozen=True):
    """One remote pack: its name (blake3 of its index), file size and entries."""

    name: str
    size: int
    entries: list[IndexEntry]


class RemoteIndex(msgspec.Struct, tag="remote-index"):
    """``index/<hash>.idx``: the packs one push wrote (or every pack, once merged)."""

    format: int
    packs: list[PackRecord]


_index_decoder = msgspec.msgpack.Decoder(RemoteIndex)
_refs_decoder = msgspec.json.Decoder(RemoteRefs)
_encoder = msgspec.msgpack.Encoder()
Located = tuple[str, IndexEntry]


def pack_key(name: str) -> str:
    """The key of a pack.

    Example:
        >>> pack_key("ab" * 32)[:8]
        'packs/ab'
    """
    return f"packs/{name}.pack"


def index_key(name: str) -> str:
    """The key of an index file."""
    return f"index/{name}.idx"


def encode_refs(refs: RemoteRefs) -> bytes:
    """``refs.json`` bytes (pretty JSON, so people can read a remote)."""
    return msgspec.json.format(msgspec.json.encode(refs)) + b"\n"


def decode_refs(data: bytes, where: str) -> RemoteRefs:
    """Parse and validate ``refs.json`` read from ``where``.

    Raises:
        RemoteCorruptionError: it is too large, malformed or names invalid refs.
        FormatVersionError: a newer training-ledger wrote it.
    """
    if len(data) > MAX_REFS_BYTES:
        raise RemoteCorruptionError(f"{where}: refs.json is {len(data)} bytes, over the limit")
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        raise RemoteCorruptionError(f"{where}: refs.json is not JSON ({e})") from e
    if not isinstance(raw, dict) or raw.get("kind") != REMOTE_KIND:
        raise RemoteCorruptionError(f"{where} is not a training-ledger remote (refs.json kind)")
    version = raw.get("format")
    if not isinstance(version, int) or version > REMOTE_FORMAT:
        raise FormatVersionError(
            f"{where} has remote format {version}; this training-ledger reads up to "
            f"{REMOTE_FORMAT}: upgrade with pip install -U training-ledger"
        )
    try:
        refs = _refs_decoder.decode(data)
    except msgspec.ValidationError as e:
        raise RemoteCorruptionError(f"{where}: refs.json is not valid ({e})") from e
    bad = _refs_problem(refs)
    if bad:
        raise RemoteCorruptionError(f"{where}: refs.json {bad}")
    return refs


def _refs_problem(refs: RemoteRefs) -> str | None:
    if refs.chunk_size < 4096 or refs.chunk_size % 64 or refs.chunk_size > MAX_OBJECT_BYTES:
        return f"has an invalid chunk_size {refs.chunk_size}"
    for kind, table in (("branch", refs.branches), ("tag", refs.tags)):
        for name, cid in table.items():
            try:
                check_ref_name(name, kind)
            except Exception:
                return f"names an invalid {kind} {name!r}"
            if not is_hex_id(cid):
                return f"has {kind} {name!r} pointing at {cid!r}, not a commit id"
    if refs.head is not None and refs.head not in refs.branches:
        return f"has head {refs.head!r}, which is not one of its branches"
    if not all(is_hex_id(c) for c in refs.expired) or not all(is_hex_id(i) for i in refs.indexes):
        return "holds a malformed commit or index id"
    return None


def encode_index(packs: list[PackRecord]) -> tuple[bytes, str]:
    """The bytes of an index file for ``packs`` and its name."""
    data = _encoder.encode(RemoteIndex(format=REMOTE_FORMAT, packs=packs))
    return data, hash_bytes(data).hex()


def decode_index(data: bytes, name: str, where: str) -> list[PackRecord]:
    """Parse and validate an index file fetched as ``name`` from ``where``.

    Raises:
        RemoteCorruptionError: its hash is not its name, or any entry is out of bounds.
    """
    if len(data) > MAX_INDEX_BYTES or hash_bytes(data).hex() != name:
        raise RemoteCorruptionError(
            f"index {name[:12]} on {where} does not match its name (tampered or truncated)"
        )
    try:
        index = _index_decoder.decode(data)
    except msgspec.DecodeError as e:
        raise RemoteCorruptionError(f"index {name[:12]} on {where} cannot be decoded: {e}") from e
    if index.format > REMOTE_FORMAT:
        raise FormatVersionError(
            f"index {name[:12]} on {where} has format {index.format}; upgrade training-ledger"
        )
    for pack in index.packs:
        if not is_hex_id(pack.name) or not 0 < pack.size <= MAX_PACK_BYTES:
            raise RemoteCorruptionError(f"index {name[:12]} on {where} lists an invalid pack")
        end = pack.size - FOOTER.size
        if not all(
            entry_is_valid(entry, end) and entry.length <= stored_bound(entry.raw_length)
            for entry in pack.entries
        ):
            raise RemoteCorruptionError(
                f"index {name[:12]} on {where}: pack {pack.name[:12]} has an invalid entry"
            )
    return index.packs


def object_map(packs: Iterable[PackRecord]) -> dict[bytes, Located]:
    """Object id -> (pack name, entry), first pack wins."""
    out: dict[bytes, Located] = {}
    for pack in packs:
        for entry in pack.entries:
            out.setdefault(entry.id, (pack.name, entry))
    return out


class PackBuilder:
    """Writes objects into pack files in ``tmp_dir``, sealing one at ``target`` bytes.

    Example:
        >>> import tempfile
        >>> b = PackBuilder(Path(tempfile.mkdtemp()), target=1 << 20)
        >>> b.add(IndexEntry(hash_bytes(b"x"), "blob", "raw", 0, 1, 1), b"x")
        >>> [p.name for p, _ in b.finish()] == [b.sealed[0][0].name]
        True
    """

    def __init__(self, tmp_dir: Path, target: int) -> None:
        self.tmp_dir = tmp_dir
        self.target = target
        self.sealed: list[tuple[PackRecord, Path]] = []
        self._tmp: Path | None = None
        self._fh: BinaryIO | None = None
        self._pack: PackFile | None = None

    def add(self, entry: IndexEntry, blob: bytes) -> tuple[PackRecord, Path] | None:
        """Append one encoded object; return the pack it sealed, if any."""
        if self._pack is None:
            self._tmp = temp_path(self.tmp_dir, ".pack")
            self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in seal/discard
            self._pack = PackFile(self._fh)
        self._pack.add(entry.id, entry.kind, entry.codec, blob, entry.raw_length)
        return self.seal() if self._pack.layout.full(self.target) else None

    def seal(self) -> tuple[PackRecord, Path] | None:
        """Finish the open pack (index + footer) and return it, or None if none is open."""
        if self._pack is None or self._fh is None or self._tmp is None:
            return None
        name, size = self._pack.seal()
        self._fh.close()
        record = PackRecord(name=name, size=size, entries=self._pack.layout.entries)
        done = (record, self._tmp)
        self.sealed.append(done)
        self._tmp, self._fh, self._pack = None, None, None
        return done

    def finish(self) -> list[tuple[PackRecord, Path]]:
        """Seal the open pack; every pack built."""
        self.seal()
        return self.sealed

    def discard(self) -> None:
        """Delete every temporary file."""
        if self._fh is not None:
            self._fh.close()
        paths = [p for _, p in self.sealed] + ([self._tmp] if self._tmp else [])
        for path in paths:
            if path.exists():
                os.unlink(path)
