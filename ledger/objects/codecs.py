"""Codecs: how an object's raw bytes become stored bytes, and back.

This module owns the codecs and the policy that picks one per chunk. A codec
is a small object with a stable name; the name is recorded for every stored
object (in the pack index) and any parameters travel inside the encoded blob,
so ledgers written today stay readable when new codecs arrive. Codecs must be
lossless and must never trust the sizes an encoded blob claims: every decode
is bounded by the raw length the index records.

Codecs:
    raw      the bytes as they are.
    zstd     one zstd frame.
    bgzstd   byte-grouped zstd for 2/4/8-byte elements: the chunk is viewed as
             (n, itemsize) bytes, each byte position becomes a plane, and each
             plane is zstd-compressed or kept raw, whichever is smaller. The
             exponent bytes of trained float weights compress well; mantissa
             bytes do not and are stored raw at almost no cost. Read, no
             longer written: ``expzstd`` replaced it for new objects.
    expzstd  exponent-split zstd for 2/4/8-byte elements: the 8 bits just below
             the sign (the whole exponent of bfloat16 and float32) become one
             plane, the sign joins the mantissa's high bits in a second, the
             remaining bytes are planes of their own; each plane is zstd'd or
             kept raw. Splitting is a few vectorised shifts (no transpose), and
             only the exponent plane is entropy-coded unless a sample shows
             another plane shrinking (ZipNN's layout).
"""

from __future__ import annotations

import struct
import threading
from typing import Any, ClassVar

import numpy as np
import zstandard

from ledger.errors import CorruptionError

ZSTD_LEVEL = 1
# A stored encoding must save at least this fraction, or the raw bytes are kept.
MIN_SAVING = 0.02
# Larger inputs are first tried on a sample of this size: when the sample does not
# shrink, the whole input is stored raw without being compressed (ZipNN's trick).
SAMPLE_BYTES = 32 << 10

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.cctx = c
    return c


# Byte planes of floats are nearly match-free: what pays is zstd's Huffman coding of
# literals. A tiny match table (hash_log 6) and the longest minimum match (7) skip
# most of the match search: on trained fp32/bf16 exponent planes this is 2.1x the
# speed of level 1 *and* stores them smaller (0.245 vs 0.263 of their size;
# docs/benchmarks.md). Decoding needs none of this: zstd frames describe themselves.
PLANE_PARAMS = {"window_log": 17, "hash_log": 6, "chain_log": 6, "search_log": 1, "min_match": 7}


def _plane_compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "plane_cctx", None)
    if c is None:
        params = zstandard.ZstdCompressionParameters(
            strategy=zstandard.STRATEGY_FAST, target_length=0, write_content_size=1, **PLANE_PARAMS
        )
        c = zstandard.ZstdCompressor(compression_params=params)
        _local.plane_cctx = c
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = zstandard.ZstdDecompressor()
        _local.dctx = d
    return d


def _zstd_decode(blob: bytes | memoryview, raw_len: int) -> bytes:
    try:
        params = zstandard.get_frame_parameters(blob)
        if params.content_size != raw_len:
            raise CorruptionError(
                f"zstd frame declares {params.content_size} bytes, index says {raw_len}"
            )
        out = _decompressor().decompress(blob, max_output_size=raw_len)
    except zstandard.ZstdError as e:
        raise CorruptionError(f"zstd frame cannot be decoded: {e}") from e
    if len(out) != raw_len:
        raise CorruptionError(f"zstd frame decoded to {len(out)} bytes, expected {raw_len}")
    return out


class Codec:
    """One reversible transform between raw bytes and stored bytes."""

    name: ClassVar[str]

    def encode(self, raw: memoryview) -> bytes | memoryview:
        """Encode ``raw``; may return ``raw`` itself."""
        raise NotImplementedError

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        """Decode ``blob`` into ``out``, whose length is the raw length; refuse any mismatch."""
        raise NotImplementedError


class RawCodec(Codec):
    """Bytes stored as they are."""

    name = "raw"

    def encode(self, raw: memoryview) -> bytes | memoryview:
        return raw

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        if len(blob) != len(out):
            raise CorruptionError(f"raw object is {len(blob)} bytes, expected {len(out)}")
        out[:] = blob


class ZstdCodec(Codec):
    """One zstd frame with its content size."""

    name = "zstd"

    def encode(self, raw: memoryview) -> bytes | memoryview:
        return _compressor().compress(raw)

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        out[:] = _zstd_decode(blob, len(out))


_PLANE_HEAD = struct.Struct("<BQ")  # mode (0 raw, 1 zstd, 2 nibbles: expzstd only), stored length
_NIBBLE_HEAD = struct.Struct("<BQ")  # base value, escape count


def _pack_planes(size: int, planes: list[tuple[int, bytes | memoryview]]) -> bytes:
    """The blob of a plane codec: item size, the plane table, then the planes back to back."""
    head = [bytes([size])]
    head += [_PLANE_HEAD.pack(mode, len(part)) for mode, part in planes]
    return b"".join([*head, *(part for _, part in planes)])


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
            planes.append(memoryview(_zstd_decode(part, n)))
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
    return 1 - len(_plane_compressor().compress(head.data)) / max(1, len(head))


def _compress_plane(plane: np.ndarray) -> tuple[int, bytes | memoryview]:
    """(mode, bytes) of one plane: zstd when it saves MIN_SAVING, else the plane itself."""
    view = memoryview(plane.data)
    packed = _plane_compressor().compress(view)
    if len(packed) < len(view) * (1 - MIN_SAVING):
        return 1, packed
    return 0, view


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


def _pack_nibbles(plane: np.ndarray, base: int) -> bytes:
    """Mode 2: each value as a 4-bit code ``value - base`` (15: the next escape), two per byte.

    The pairs are zstd'd: half the bytes to code, and Huffman on pairs of
    exponents gets under the one bit per value that single bytes cannot.
    """
    codes = plane - np.uint8(base)
    where = np.flatnonzero(codes >= 15)  # (np.minimum on uint8 is ~15x slower than this)
    escapes = plane[where]
    codes[where] = 15
    if len(codes) % 2:
        codes = np.append(codes, np.uint8(0))
    pairs = codes.view("<u2")
    packed = np.right_shift(pairs, 4)
    np.bitwise_or(packed, pairs, out=packed)  # low byte: code[2k] | code[2k+1] << 4
    frame = _plane_compressor().compress(packed.astype(np.uint8).data)
    return b"".join([_NIBBLE_HEAD.pack(base, len(escapes)), escapes.tobytes(), frame])


def _unpack_nibbles(part: memoryview, n: int) -> np.ndarray:
    if len(part) < _NIBBLE_HEAD.size:
        raise CorruptionError("expzstd nibble plane is truncated in its header")
    base, count = _NIBBLE_HEAD.unpack_from(part)
    start = _NIBBLE_HEAD.size
    if count > n or len(part) < start + count:
        raise CorruptionError(f"expzstd nibble plane declares {count} escapes for {n} values")
    escapes = np.frombuffer(part[start : start + count], dtype=np.uint8)
    packed = np.frombuffer(_zstd_decode(part[start + count :], (n + 1) // 2), dtype=np.uint8)
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


def _exponent_part(plane: np.ndarray, base: int | None) -> tuple[int, bytes | memoryview]:
    """(mode, bytes) of the exponent plane: nibbles when ``base`` is given, else as any plane."""
    if base is None:
        return _compress_plane(plane)
    packed = _pack_nibbles(plane, base)
    if len(packed) < len(plane) * (1 - MIN_SAVING):
        return 2, packed
    return 0, memoryview(plane.data)


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


_UINT: dict[int, np.dtype[np.unsignedinteger[Any]]] = {
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


class ExponentSplitZstdCodec(Codec):
    """Exponent plane, sign+mantissa-high plane, low byte planes; each zstd'd or raw.

    For an element of ``s`` bytes (bit ``8s-1`` the sign), plane 0 holds bits
    ``8s-9 .. 8s-2`` (bfloat16's and float32's whole exponent), plane 1 the sign
    in its bit 7 above bits ``8s-16 .. 8s-10``, and plane ``2 + j`` byte ``j``
    for ``j < s - 2``. Any bytes round-trip: it is a fixed bit permutation.
    The blob is laid out as bgzstd's: item size, plane table, planes.

    Example:
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

    def _split(self, words: np.ndarray) -> list[np.ndarray]:
        size = self.itemsize
        shift = 8 * size - 9
        n = len(words)
        exp = np.right_shift(words, shift, out=np.empty(n, np.uint8), casting="unsafe")
        high = np.right_shift(words, 8 * size - 8, out=np.empty(n, np.uint8), casting="unsafe")
        sign = np.right_shift(words, 8 * size - 16, out=np.empty(n, np.uint8), casting="unsafe")
        np.bitwise_xor(high, sign, out=high)  # sign = low ^ ((low ^ high) & 0x80)
        np.bitwise_and(high, 0x80, out=high)
        np.bitwise_xor(sign, high, out=sign)
        low = [
            np.right_shift(words, 8 * j, out=np.empty(n, np.uint8), casting="unsafe")
            for j in range(size - 2)
        ]
        return [exp, sign, *low]

    def encode(self, raw: memoryview, min_saving: float = MIN_SAVING) -> bytes | memoryview:
        """Encode; ``raw`` itself when a sample shows the chunk will not save ``min_saving``."""
        size = self.itemsize
        n = len(raw) // size
        if n * size != len(raw) or size not in _UINT:
            raise ValueError(f"expzstd needs whole {size}-byte elements, got {len(raw)} bytes")
        words = np.frombuffer(raw, dtype=_UINT[size])
        sampled = len(raw) >= 4 * SAMPLE_BYTES * size
        head = self._split(words[:SAMPLE_BYTES]) if sampled else self._split(words)
        savings = [_sample_saving(p) for p in head]
        first = head[0][:SAMPLE_BYTES]
        base = _nibble_base(first)
        if base is not None:  # few exponents: nibbles, if they beat zstd on the bytes
            nibbled = 1 - len(_pack_nibbles(first, base)) / len(first)
            base = base if nibbled > savings[0] else None
            savings[0] = max(savings[0], nibbled)
        useful = [saving >= MIN_SAVING for saving in savings]
        if sampled and sum(s for s in savings if s >= MIN_SAVING) / size < min_saving:
            return raw
        planes = self._split(words) if sampled else head
        parts = [_exponent_part(planes[0], base) if useful[0] else (0, memoryview(planes[0].data))]
        parts += [
            _compress_plane(p) if not sampled or useful[i] else (0, memoryview(p.data))
            for i, p in enumerate(planes[1:], start=1)
        ]
        return _pack_planes(size, parts)

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


def _compress_if_worth(data: memoryview, min_saving: float = MIN_SAVING) -> bytes | None:
    """zstd of ``data``, or None when a sample shows it will not shrink by ``min_saving``."""
    if len(data) > 4 * SAMPLE_BYTES:
        sample = data[:SAMPLE_BYTES]
        if len(_compressor().compress(sample)) >= len(sample) * (1 - min_saving):
            return None
    return _compressor().compress(data)


_RAW = RawCodec()
_ZSTD = ZstdCodec()
_BG = ByteGroupZstdCodec()
_EXP = {size: ExponentSplitZstdCodec(size) for size in _UINT}

CODEC_NAMES = ("raw", "zstd", "bgzstd", "expzstd")


def decoder(name: str) -> Codec:
    """The codec that decodes objects stored under ``name``.

    Example:
        >>> decoder("zstd").name
        'zstd'
    """
    if name == "raw":
        return _RAW
    if name == "zstd":
        return _ZSTD
    if name == "bgzstd":
        return _BG  # the blob carries its own item size
    if name == "expzstd":
        return _EXP[4]
    raise CorruptionError(f"unknown codec {name!r}; upgrade training-ledger to read this ledger")


def encode_chunk(
    raw: memoryview, *, float_itemsize: int | None, compress: bool, min_saving: float = MIN_SAVING
) -> tuple[str, bytes | memoryview]:
    """Pick a codec for one chunk and encode it; keep raw bytes unless encoding saves enough.

    Args:
        raw: the chunk's bytes.
        float_itemsize: element size when the chunk holds 16/32/64-bit floats, else None.
        compress: False stores every chunk raw (for disks faster than the codec).
        min_saving: the fraction an encoding must save to be kept (raised by the
            "auto" policy when the disk is faster than the codec).

    Example:
        >>> encode_chunk(memoryview(b"a" * 1000), float_itemsize=None, compress=True)[0]
        'zstd'
    """
    if not compress or len(raw) < 64:
        return "raw", raw
    if float_itemsize in (2, 4, 8) and len(raw) % float_itemsize == 0:
        blob = _EXP[float_itemsize].encode(raw, min_saving)
        name = "expzstd"
    else:
        packed = _compress_if_worth(raw, min_saving)
        if packed is None:
            return "raw", raw
        blob, name = packed, "zstd"
    if len(blob) < len(raw) * (1 - min_saving):
        return name, blob
    return "raw", raw
