"""Codecs: how an object's raw bytes become stored bytes, and back.

This module owns the codec registry and the policy that picks one per chunk. A
codec is a small object with a stable name; the name is recorded for every
stored object (in the pack index) and any parameters travel inside the encoded
blob, so ledgers written today stay readable when new codecs arrive. Codecs
must be lossless and must never trust the sizes an encoded blob claims: every
decode is bounded by the raw length the index records.

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

The plane codecs live in ``ledger.objects.planecodecs``, what they share in
``ledger.objects.codecbase``.
"""

from __future__ import annotations

from ledger.errors import CorruptionError
from ledger.objects.codecbase import (
    MIN_SAVING,
    SAMPLE_BYTES,
    Codec,
    Scratch,
    compressor,
    zstd_decode,
)
from ledger.objects.planecodecs import EXP, ByteGroupZstdCodec, ExponentSplitZstdCodec

__all__ = [
    "CODEC_NAMES",
    "MIN_SAVING",
    "Codec",
    "ExponentSplitZstdCodec",
    "RawCodec",
    "Scratch",
    "ZstdCodec",
    "decoder",
    "encode_chunk",
]


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
        return compressor().compress(raw)

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        out[:] = zstd_decode(blob, len(out))


def _compress_if_worth(data: memoryview, min_saving: float = MIN_SAVING) -> bytes | None:
    """zstd of ``data``, or None when a sample shows it will not shrink by ``min_saving``."""
    if len(data) > 4 * SAMPLE_BYTES:
        sample = data[:SAMPLE_BYTES]
        if len(compressor().compress(sample)) >= len(sample) * (1 - min_saving):
            return None
    return compressor().compress(data)


_RAW = RawCodec()
_ZSTD = ZstdCodec()
_BG = ByteGroupZstdCodec()

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
        return EXP[4]
    raise CorruptionError(f"unknown codec {name!r}; upgrade training-ledger to read this ledger")


def encode_chunk(
    raw: memoryview,
    *,
    float_itemsize: int | None,
    compress: bool,
    min_saving: float = MIN_SAVING,
    out: Scratch | None = None,
) -> tuple[str, bytes | memoryview]:
    """Pick a codec for one chunk and encode it; keep raw bytes unless encoding saves enough.

    Args:
        raw: the chunk's bytes.
        float_itemsize: element size when the chunk holds 16/32/64-bit floats, else None.
        compress: False stores every chunk raw (for disks faster than the codec).
        min_saving: the fraction an encoding must save to be kept (raised by the
            "auto" policy when the disk is faster than the codec).
        out: buffers a float chunk's blob is written into (then a view of them,
            valid until ``out`` is used again) instead of new bytes.

    Example:
        >>> encode_chunk(memoryview(b"a" * 1000), float_itemsize=None, compress=True)[0]
        'zstd'
    """
    if not compress or len(raw) < 64:
        return "raw", raw
    if float_itemsize in (2, 4, 8) and len(raw) % float_itemsize == 0:
        blob = EXP[float_itemsize].encode(raw, min_saving, out)
        name = "expzstd"
    else:
        packed = _compress_if_worth(raw, min_saving)
        if packed is None:
            return "raw", raw
        blob, name = packed, "zstd"
    if len(blob) < len(raw) * (1 - min_saving):
        return name, blob
    return "raw", raw
