"""Content hashing: blake3 names every object.

This module owns the choice of hash. Every object id in the ledger is the
lowercase hex blake3-256 of the object's *raw* (decoded) bytes, so the name
does not depend on the codec used to store it. It must never be used for
anything but naming and verifying content.
"""

from __future__ import annotations

import blake3

HASH_BYTES = 32
HEX_LEN = 2 * HASH_BYTES


def hash_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte blake3 digest of ``data`` (releases the GIL for large inputs).

    Example:
        >>> hash_bytes(b"").hex()[:16]
        'af1349b9f5f9a1a6'
    """
    hasher = new_hasher()
    hasher.update(data)
    return hasher.digest()


def new_hasher() -> blake3.blake3:
    """An empty blake3 hasher, to hash data that grows (``update``, ``copy``, ``digest``).

    Example:
        >>> h = new_hasher(); h.update(b""); h.digest() == hash_bytes(b"")
        True
    """
    return blake3.blake3(max_threads=1)


def is_hex_id(text: str) -> bool:
    """Whether ``text`` looks like a full object id (64 lowercase hex chars).

    Example:
        >>> is_hex_id("ab" * 32), is_hex_id("xyz")
        (True, False)
    """
    return len(text) == HEX_LEN and all(c in "0123456789abcdef" for c in text)
