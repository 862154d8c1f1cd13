"""Plane codecs for floats: byte-grouped (``bgzstd``) and exponent-split (``expzstd``) zstd.

This module owns the codecs that cut fixed-size elements into byte planes and
entropy-code the planes that shrink (see ``ledger.objects.codecs`` for which
chunks get them). Both blobs are laid out alike: the item size, a plane table
of (mode, stored length), then the planes back to back. A plane is raw (mode
0), one zstd frame (1), or, for expzstd's exponent plane only, 4-bit codes
with escapes (2). Encoding writes into reusable buffers (``Scratch``) so that
a commit does not fault in fresh pages for every chunk.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from ledger.errors import CorruptionError
from ledger.objects.codecbase import (
    MIN_SAVING,
    SAMPLE_BYTES,
    Codec,
    Scratch,
    plane_compressor,
    zstd_decode,
    zstd_into,
)

_PLANE_HEAD = struct.Struct("<BQ")  # mode (0 raw, 1 zstd, 2 nibbles: expzstd only), stored length
_NIBBLE_HEAD = struct.Struct("<BQ")  # base value, escape count
_UINT: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


def _read_planes(
    name: str, blob: memoryview, raw_len: int, nibbles: bool = False
) -> tuple[int, list[memoryview]]:
    """Item size and every plane (decoded, ``raw_len / size`` bytes each) of a plane-codec blob."""
    if len(blob) < 1:
        raise CorruptionError(f"{name} object is empty")
    size = blob[0]
    n = raw_len // size if size else 0
    if size not in (2, 4, 8) or n * size != raw_len:
        raise CorruptionError(f"{name} object has item size {size} for {raw_len} bytes")
    pos = 1 + size * _PLANE_HEAD.size
    if len(blob) < pos:
        raise CorruptionError(f"{name} object is truncated in its plane table")
    planes: list[memoryview] = []
    for i in range(size):
        mode, length = _PLANE_HEAD.unpack_from(blob, 1 + i * _PLANE_HEAD.size)
        part = blob[pos : pos + length]
        if len(part) != length:
            raise CorruptionError(f"{name} object is truncated in its planes")
        pos += length
        if mode == 0:
            if length != n:
                raise CorruptionError(f"{name} raw plane is {length} bytes, expected {n}")
            planes.append(part)
        elif mode == 1:
            planes.append(memoryview(zstd_decode(part, n)))
        elif mode == 2 and nibbles:
            planes.append(memoryview(_unpack_nibbles(part, n).data))
        else:
            raise CorruptionError(f"{name} plane mode {mode} is unknown")
    if pos != len(blob):
        raise CorruptionError(f"{name} object has trailing bytes")
    return size, planes


def _sample_saving(plane: np.ndarray) -> float:
    """The fraction zstd saves on a plane's first SAMPLE_BYTES (the whole plane if shorter)."""
    head = plane[:SAMPLE_BYTES]
    return 1 - len(plane_compressor().compress(head.data)) / max(1, len(head))


def _nibble_base(plane: np.ndarray) -> int | None:
    """The base ``b`` whose window ``b .. b+14`` holds all but 1/256 of ``plane``, or None."""
    if len(plane) == 0:
        return None
    hist = np.bincount(plane, minlength=256)
    window = np.convolve(hist, np.ones(15, dtype=np.int64))[14:256]  # [b] = hist[b : b + 15]
    base = int(np.argmax(window[:242]))
    if len(plane) - int(window[base]) > len(plane) // 256:
        return None
    return base


def _nibbles_into(
    plane: np.ndarray, base: int, dest: np.ndarray, start: int, limit: int, work: Scratch
) -> int | None:
    """Mode 2 into ``dest[start:]``: each value as a 4-bit code ``value - base`` (15: the next escape).

    Two codes per byte, then zstd'd: half the bytes to code, and Huffman on
    pairs of exponents gets under the one bit per value that single bytes
    cannot. The plane's length, or None when it would not be under ``limit``.
    """
    n = len(plane)
    m = n + n % 2
    codes = work.array("codes", m)
    np.subtract(plane, np.uint8(base), out=codes[:n])  # wraps below base: escaped too
    codes[n:] = 0
    mask = work.array("mask", n).view(np.bool_)
    np.greater_equal(codes[:n], 15, out=mask)
    where = np.flatnonzero(mask)  # (np.minimum on uint8 is ~15x slower than this)
    count = len(where)
    body = start + _NIBBLE_HEAD.size + count
    if body - start >= limit:
        return None
    dest[body - count : body] = plane[where]
    codes[where] = 15
    pairs = codes.view("<u2")
    packed = work.array("packed", m).view("<u2")
    np.right_shift(pairs, 4, out=packed)
    np.bitwise_or(packed, pairs, out=packed)  # low byte: code[2k] | code[2k+1] << 4
    low = work.array("low", m // 2)
    np.copyto(low, packed, casting="unsafe")
    _NIBBLE_HEAD.pack_into(dest.data, start, base, count)
    frame = zstd_into(plane_compressor(), low, dest, body, limit - (body - start))
    return None if frame is None else body - start + frame


def _unpack_nibbles(part: memoryview, n: int) -> np.ndarray:
    if len(part) < _NIBBLE_HEAD.size:
        raise CorruptionError("expzstd nibble plane is truncated in its header")
    base, count = _NIBBLE_HEAD.unpack_from(part)
    start = _NIBBLE_HEAD.size
    if count > n or len(part) < start + count:
        raise CorruptionError(f"expzstd nibble plane declares {count} escapes for {n} values")
    escapes = np.frombuffer(part[start : start + count], dtype=np.uint8)
    packed = np.frombuffer(zstd_decode(part[start + count :], (n + 1) // 2), dtype=np.uint8)
    pairs = packed.astype("<u2")
    high = np.bitwise_and(pairs, 0xF0)
    np.left_shift(high, 4, out=high)
    np.bitwise_and(pairs, 0x0F, out=pairs)
    np.bitwise_or(pairs, high, out=pairs)
    codes = pairs.view(np.uint8)[:n]
    plane = codes + np.uint8(base)
    escaped = np.flatnonzero(codes == 15)
    if len(escaped) != count:
        raise CorruptionError(f"expzstd nibble plane has escapes other than its {count}")
    plane[escaped] = escapes
    return plane


class ByteGroupZstdCodec(Codec):
    """Byte planes of fixed-size elements, each zstd'd or raw (blob: item size, plane table, planes).

    Written by earlier versions for every float chunk; decoded, no longer written.
    """

    name = "bgzstd"

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        size, planes = _read_planes(self.name, blob, len(out))
        dest = np.frombuffer(out, dtype=np.uint8).reshape(-1, size)
        for i, plane in enumerate(planes):
            dest[:, i] = np.frombuffer(plane, dtype=np.uint8)


class ExponentSplitZstdCodec(Codec):
    """Exponent plane, sign+mantissa-high plane, low byte planes; each zstd'd or raw.

    For an element of ``s`` bytes (bit ``8s-1`` the sign), plane 0 holds bits
    ``8s-9 .. 8s-2`` (bfloat16's and float32's whole exponent), plane 1 the sign
    in its bit 7 above bits ``8s-16 .. 8s-10``, and plane ``2 + j`` byte ``j``
    for ``j < s - 2``. Any bytes round-trip: it is a fixed bit permutation.
    The blob is laid out as bgzstd's: item size, plane table, planes.

    Example:
        >>> from ledger.objects.codecs import decoder
        >>> raw = memoryview(bytes.fromhex("0000803f") * 64)  # 64 x float32 1.0
        >>> blob = ExponentSplitZstdCodec(4).encode(raw)
        >>> out = bytearray(len(raw))
        >>> decoder("expzstd").decode_into(memoryview(blob), memoryview(out))
        >>> bytes(out) == raw, len(blob) < len(raw)
        (True, True)
    """

    name = "expzstd"

    def __init__(self, itemsize: int = 4) -> None:
        self.itemsize = itemsize

    def _plane(self, words: np.ndarray, i: int, dest: np.ndarray, work: Scratch) -> np.ndarray:
        """Plane ``i`` of ``words``, written into ``dest`` (``len(words)`` bytes)."""
        bits = 8 * self.itemsize
        if i == 0:
            np.right_shift(words, bits - 9, out=dest, casting="unsafe")
        elif i == 1:
            np.right_shift(words, bits - 16, out=dest, casting="unsafe")
            high = work.array("high", len(words))
            np.right_shift(words, bits - 8, out=high, casting="unsafe")
            np.bitwise_xor(high, dest, out=high)  # sign = low ^ ((low ^ high) & 0x80)
            np.bitwise_and(high, 0x80, out=high)
            np.bitwise_xor(dest, high, out=dest)
        else:
            np.right_shift(words, 8 * (i - 2), out=dest, casting="unsafe")
        return dest

    def _split(self, words: np.ndarray) -> list[np.ndarray]:
        """Every plane of ``words`` in new arrays (for samples and small chunks)."""
        work = Scratch()
        return [
            self._plane(words, i, np.empty(len(words), np.uint8), work)
            for i in range(self.itemsize)
        ]

    def encode(
        self, raw: memoryview, min_saving: float = MIN_SAVING, out: Scratch | None = None
    ) -> bytes | memoryview:
        """Encode; ``raw`` itself when a sample shows the chunk will not save ``min_saving``.

        With ``out``, the blob is a view of ``out``'s memory, valid until ``out``
        is used again; without it, new bytes.
        """
        size = self.itemsize
        n = len(raw) // size
        if n * size != len(raw) or size not in _UINT:
            raise ValueError(f"expzstd needs whole {size}-byte elements, got {len(raw)} bytes")
        words = np.frombuffer(raw, dtype=_UINT[size])
        sampled = len(raw) >= 4 * SAMPLE_BYTES * size
        head = self._split(words[:SAMPLE_BYTES])
        savings = [_sample_saving(p) for p in head]
        first = head[0]
        base = _nibble_base(first)
        if base is not None:  # few exponents: nibbles, if they beat zstd on the bytes
            probe = np.empty(len(first) + 64, np.uint8)
            length = _nibbles_into(first, base, probe, 0, len(probe), Scratch())
            nibbled = -1.0 if length is None else 1 - length / len(first)
            base = base if nibbled > savings[0] else None
            savings[0] = max(savings[0], nibbled)
        useful = [saving >= MIN_SAVING for saving in savings]
        if sampled and sum(s for s in savings if s >= MIN_SAVING) / size < min_saving:
            return raw
        if not sampled:
            useful[1:] = [True] * (size - 1)  # small: every plane is tried whole
        return self._pack(words, useful, base, out)

    def _pack(
        self, words: np.ndarray, useful: list[bool], base: int | None, out: Scratch | None
    ) -> bytes | memoryview:
        size, n = self.itemsize, len(words)
        table = 1 + size * _PLANE_HEAD.size
        dest = (out or Scratch()).array("blob", table + size * n)
        limit = math.ceil(n * (1 - MIN_SAVING))  # encoded planes must save MIN_SAVING
        work = Scratch.take("work")
        try:
            pos = table
            dest[0] = size
            for i in range(size):
                region = dest[pos : pos + n]
                mode, length = 0, n
                if not useful[i]:
                    self._plane(words, i, region, work)
                else:
                    plane = self._plane(words, i, work.array("plane", n), work)
                    if i == 0 and base is not None:
                        got = _nibbles_into(plane, base, dest, pos, limit, work)
                        mode = 2
                    else:
                        got = zstd_into(plane_compressor(), plane, dest, pos, limit)
                        mode = 1
                    if got is None:
                        region[:] = plane
                        mode = 0
                    else:
                        length = got
                _PLANE_HEAD.pack_into(dest.data, 1 + i * _PLANE_HEAD.size, mode, length)
                pos += length
        finally:
            work.give("work")
        blob = memoryview(dest.data)[:pos]
        return blob if out is not None else bytes(blob)

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        size, planes = _read_planes(self.name, blob, len(out), nibbles=True)
        exp, sign, *low = (np.frombuffer(p, dtype=np.uint8) for p in planes)
        top = np.right_shift(exp, 1)
        np.bitwise_or(top, sign & 0x80, out=top)
        below = np.left_shift(exp, 7)
        np.bitwise_or(below, sign & 0x7F, out=below)
        # Whole words, high byte first: 3x the speed of writing byte columns.
        words = np.frombuffer(out, dtype=_UINT[size])
        np.copyto(words, top)
        for plane in (below, *reversed(low)):
            np.left_shift(words, 8, out=words)
            np.bitwise_or(words, plane, out=words)


EXP = {size: ExponentSplitZstdCodec(size) for size in _UINT}
"""The expzstd encoder for each element size."""
