"""What every codec shares: the codec interface, zstd contexts, and reusable encode buffers.

This module owns the pieces the codec modules (``ledger.objects.codecs`` and
``ledger.objects.planecodecs``) build on: the :class:`Codec` interface, the
per-thread zstd contexts and their parameters, bounded zstd decoding, and
:class:`Scratch`, the free lists of buffers an encode writes into. Nothing here
picks a codec; ``ledger.objects.codecs`` does.

Why reusable buffers: encoding a 4 MiB float chunk allocated ~8 MiB of
temporaries (planes, the joined blob, zstd's output). glibc returns such
blocks to the kernel when they are freed, so every chunk faulted fresh pages
in again; on the development VM that was 60-80% of a compressed commit's CPU
time (system time up to 3x the user time of the encode itself). A chunk's
encode now writes into buffers taken from a small free list and given back
after the writer has copied the blob out.
"""

from __future__ import annotations

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
# zstd output is gathered in pieces of this size (under glibc's mmap threshold, so
# the pieces come from and go back to the heap instead of fresh pages).
ZSTD_PIECE = 1 << 16
# How many idle Scratch objects each free list keeps (about one chunk's size each).
SCRATCH_KEEP = 8

_local = threading.local()

# Byte planes of floats are nearly match-free: what pays is zstd's Huffman coding of
# literals. A tiny match table (hash_log 6) and the longest minimum match (7) skip
# most of the match search: on trained fp32/bf16 exponent planes this is 2.1x the
# speed of level 1 *and* stores them smaller (0.245 vs 0.263 of their size;
# docs/benchmarks.md). Decoding needs none of this: zstd frames describe themselves.
PLANE_PARAMS = {"window_log": 17, "hash_log": 6, "chain_log": 6, "search_log": 1, "min_match": 7}


def compressor() -> zstandard.ZstdCompressor:
    """This thread's general-purpose zstd compressor (level 1, content size written)."""
    c = getattr(_local, "cctx", None)
    if c is None:
        c = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.cctx = c
    return c


def plane_compressor() -> zstandard.ZstdCompressor:
    """This thread's zstd compressor tuned for byte planes of floats (:data:`PLANE_PARAMS`)."""
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


def zstd_decode(blob: bytes | memoryview, raw_len: int) -> bytes:
    """Decode one zstd frame that must declare and hold exactly ``raw_len`` bytes.

    Raises:
        CorruptionError: the frame is damaged or its size is not ``raw_len``.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
        if params.content_size != raw_len:
            raise CorruptionError(
                f"zstd frame declares {params.content_size} bytes, index says {raw_len}"
            )
        # The frame declares its size (checked above), so decompress allocates exactly it;
        # passing max_output_size too costs ~55 us a call (a 1 KB commit record: 20x).
        out = _decompressor().decompress(blob)
    except zstandard.ZstdError as e:
        raise CorruptionError(f"zstd frame cannot be decoded: {e}") from e
    if len(out) != raw_len:
        raise CorruptionError(f"zstd frame decoded to {len(out)} bytes, expected {raw_len}")
    return out


def zstd_into(
    cctx: zstandard.ZstdCompressor, data: np.ndarray, dest: np.ndarray, start: int, limit: int
) -> int | None:
    """Compress ``data`` as one frame into ``dest[start:]``; its length, or None if not under ``limit``.

    Only ``dest[start : start + limit]`` is ever written.

    Example:
        >>> dest = np.zeros(100, np.uint8)
        >>> zstd_into(compressor(), np.zeros(1000, np.uint8), dest, 10, 90) is not None
        True
        >>> zstd_into(compressor(), np.arange(256, dtype=np.uint8), dest, 0, 90) is None
        True
    """
    chunker = cctx.chunker(size=len(data), chunk_size=ZSTD_PIECE)
    end = start
    total = 0
    for step in (lambda: chunker.compress(data.data), chunker.finish):
        for piece in step():  # (each step's output must be consumed before the next)
            k = len(piece)
            if total + k < limit:
                dest[end : end + k] = np.frombuffer(piece, dtype=np.uint8)
                end += k
            total += k  # (a frame over the limit is still finished, so the context stays clean)
    return total if total < limit else None


class Scratch:
    """Named byte buffers that only grow, reused from one encode to the next.

    Example:
        >>> s = Scratch()
        >>> a = s.array("plane", 10); a[:] = 7
        >>> s.array("plane", 4).tolist()  # the same memory, shorter
        [7, 7, 7, 7]
    """

    free: ClassVar[dict[str, list[Scratch]]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}

    def array(self, name: str, nbytes: int) -> np.ndarray:
        """``nbytes`` of uint8 under ``name``; earlier contents may remain."""
        buf = self._bufs.get(name)
        if buf is None or len(buf) < nbytes:
            buf = np.empty(nbytes, dtype=np.uint8)
            self._bufs[name] = buf
        return buf[:nbytes]

    def holds(self, view: memoryview) -> bool:
        """Whether ``view`` lies in one of this Scratch's buffers."""
        arr = np.frombuffer(view, dtype=np.uint8)
        return any(np.may_share_memory(arr, buf) for buf in self._bufs.values())

    @classmethod
    def take(cls, kind: str) -> Scratch:
        """An idle Scratch from the ``kind`` free list, or a new one."""
        with cls._lock:
            pool = cls.free.get(kind)
            if pool:
                return pool.pop()
        return cls()

    def give(self, kind: str) -> None:
        """Return this Scratch to the ``kind`` free list (dropped when the list is full)."""
        with self._lock:
            pool = self.free.setdefault(kind, [])
            if len(pool) < SCRATCH_KEEP:
                pool.append(self)


class Codec:
    """One reversible transform between raw bytes and stored bytes."""

    name: ClassVar[str]

    def encode(self, raw: memoryview) -> bytes | memoryview:
        """Encode ``raw``; may return ``raw`` itself."""
        raise NotImplementedError

    def decode_into(self, blob: memoryview, out: memoryview) -> None:
        """Decode ``blob`` into ``out``, whose length is the raw length; refuse any mismatch."""
        raise NotImplementedError
