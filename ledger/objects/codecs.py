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
             bytes do not and are stored raw at almost no cost.
"""

from __future__ import annotations

import struct
import threading
from typing import ClassVar

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


_PLANE_HEAD = struct.Struct("<BQ")  # mode (0 raw, 1 zstd), stored length


class ByteGroupZstdCodec(Codec):
    """Byte planes of fixed-size elements, each zstd'd or raw (blob header: itemsize, plane table)."""

    name = "bgzstd"

    def __init__(self, itemsize: int = 4) -> None:
        self.itemsize = itemsize

    def worth(self, raw: memoryview, min_saving: float) -> set[int] | None:
        """Planes worth compressing, judged on a prefix; None when the whole chunk
        would not save ``min_saving`` (then nothing is transposed or compressed)."""
        size = self.itemsize
        rows = SAMPLE_BYTES
        if len(raw) < 4 * rows * size:
            return set(range(size))  # small: just try every plane
        head = np.frombuffer(raw[: rows * size], dtype=np.uint8).reshape(rows, size).T.copy()
        savings = [1 - len(_plane_compressor().compress(head[i].data)) / rows for i in range(size)]
        useful = {i for i, saving in enumerate(savings) if saving >= MIN_SAVING}
        if sum(savings[i] for i in useful) / size < min_saving:
            return None
        return useful

    def encode(self, raw: memoryview, min_saving: float = MIN_SAVING) -> bytes | memoryview:
        size = self.itemsize
        n = len(raw) // size
        if n * size != len(raw) or size not in (2, 4, 8):
            raise ValueError(f"bgzstd needs whole {size}-byte elements, got {len(raw)} bytes")
        useful = self.worth(raw, min_saving)
        if useful is None:
            return raw
        planes = np.frombuffer(raw, dtype=np.uint8).reshape(n, size).T.copy()
        parts: list[bytes | memoryview] = []
        head = [bytes([size])]
        for i in range(size):
            plane = memoryview(planes[i].data)
            packed = _plane_compressor().compress(plane) if i in useful else None
            if packed is not None and len(packed) < len(plane) * (1 - MIN_SAVING):
                head.append(_PLANE_HEAD.pack(1, len(packed)))
                parts.append(packed)
            else:
                head.append(_PLANE_HEAD.pack(0, len(plane)))
                parts.append(plane)
        return b"".join([*head, *parts])

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        if len(blob) < 1:
            raise CorruptionError("bgzstd object is empty")
        size = blob[0]
        n = len(out) // size if size else 0
        if size not in (2, 4, 8) or n * size != len(out):
            raise CorruptionError(f"bgzstd object has item size {size} for {len(out)} bytes")
        pos = 1 + size * _PLANE_HEAD.size
        if len(blob) < pos:
            raise CorruptionError("bgzstd object is truncated in its plane table")
        dest = np.frombuffer(out, dtype=np.uint8).reshape(n, size)
        for i in range(size):
            mode, length = _PLANE_HEAD.unpack_from(blob, 1 + i * _PLANE_HEAD.size)
            part = blob[pos : pos + length]
            if len(part) != length:
                raise CorruptionError("bgzstd object is truncated in its planes")
            pos += length
            if mode == 0:
                if length != n:
                    raise CorruptionError(f"bgzstd raw plane is {length} bytes, expected {n}")
                dest[:, i] = np.frombuffer(part, dtype=np.uint8)
            elif mode == 1:
                dest[:, i] = np.frombuffer(_zstd_decode(part, n), dtype=np.uint8)
            else:
                raise CorruptionError(f"bgzstd plane mode {mode} is unknown")
        if pos != len(blob):
            raise CorruptionError("bgzstd object has trailing bytes")


def _compress_if_worth(data: memoryview, min_saving: float = MIN_SAVING) -> bytes | None:
    """zstd of ``data``, or None when a sample shows it will not shrink by ``min_saving``."""
    if len(data) > 4 * SAMPLE_BYTES:
        sample = data[:SAMPLE_BYTES]
        if len(_compressor().compress(sample)) >= len(sample) * (1 - min_saving):
            return None
    return _compressor().compress(data)


_RAW = RawCodec()
_ZSTD = ZstdCodec()
_BG = {2: ByteGroupZstdCodec(2), 4: ByteGroupZstdCodec(4), 8: ByteGroupZstdCodec(8)}

CODEC_NAMES = ("raw", "zstd", "bgzstd")


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
        return _BG[4]  # the blob carries its own item size
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
        blob = _BG[float_itemsize].encode(raw, min_saving)
        name = "bgzstd"
    else:
        packed = _compress_if_worth(raw, min_saving)
        if packed is None:
            return "raw", raw
        blob, name = packed, "zstd"
    if len(blob) < len(raw) * (1 - min_saving):
        return name, blob
    return "raw", raw
