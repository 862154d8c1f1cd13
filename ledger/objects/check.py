"""Decoding a stored object and proving it is the object asked for.

This module owns the one decode-and-verify of an object, used for every
object read from a local pack (``ObjectStore``) and for every object fetched
from or pushed to a remote (``ledger.remotes.transfer``): the stored length
must match the index, the codec must decode to exactly the raw length, and
the raw bytes must hash to the id. It must never hand back bytes that failed
any of these checks.
"""

from __future__ import annotations

from typing import Any

from ledger.errors import CorruptionError
from ledger.objects.codecs import decoder
from ledger.objects.hashing import hash_bytes
from ledger.objects.packs import IndexEntry

Bytes = bytes | bytearray | memoryview


def check_hash(
    oid: bytes,
    raw: Bytes,
    what: str,
    damaged: type[CorruptionError] = CorruptionError,
    **fields: Any,
) -> None:
    """Raise ``damaged`` unless ``raw`` hashes to ``oid``; ``what`` names the object.

    ``fields`` go onto the error (``pack``, ``path``, ``url`` ...); ``object`` is ``oid``.

    Example:
        >>> check_hash(hash_bytes(b"hi"), b"hi", "object 8f4c (a blob)")
    """
    if hash_bytes(raw) != oid:
        raise damaged(
            f"{what} fails its hash check: the stored bytes are damaged",
            **{"object": oid.hex(), **fields},
        )


def decode_object(
    entry: IndexEntry,
    blob: Bytes,
    what: str,
    *,
    into: memoryview | None = None,
    damaged: type[CorruptionError] = CorruptionError,
    **fields: Any,
) -> memoryview:
    """The raw bytes of the object ``entry`` describes, decoded from its stored ``blob`` and checked.

    Args:
        entry: the object's index entry (id, codec, stored and raw length).
        blob: its stored (encoded) bytes; for the raw codec these are its bytes.
        what: how to name the object in an error (its pack, tensor path, remote).
        into: a buffer of ``entry.raw_length`` bytes to decode into (default: a
            new one; a raw object is returned in place unless ``into`` is given).
        damaged: the error to raise (``RemoteCorruptionError`` for remote data).
        **fields: put onto the error with ``object`` (``pack``, ``path``, ``url`` ...).

    Raises:
        CorruptionError: (``damaged``) the blob's length is not the index's, it
            does not decode to exactly the raw length, or it fails its hash check.

    Example:
        >>> e = IndexEntry(hash_bytes(b"hi"), "blob", "raw", 8, 2, 2)
        >>> bytes(decode_object(e, b"hi", "a greeting"))
        b'hi'
    """
    fields = {"object": entry.id.hex(), **fields}
    if len(blob) != entry.length:
        raise damaged(f"{what} is {len(blob)} bytes, its index says {entry.length}", **fields)
    if into is not None and len(into) != entry.raw_length:
        raise damaged(f"{what} is {entry.raw_length} bytes, expected {len(into)}", **fields)
    if entry.codec == "raw":
        raw = memoryview(blob)
        if into is not None:
            into[:] = raw
            raw = into
    else:
        raw = into if into is not None else memoryview(bytearray(entry.raw_length))
        try:
            decoder(entry.codec).decode_into(memoryview(blob), raw)
        except Exception as e:  # a codec refusing its input, whatever it raises
            raise damaged(f"{what} cannot be decoded: {e}", **fields) from e
    check_hash(entry.id, raw, what, damaged, **fields)
    return raw
