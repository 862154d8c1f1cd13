"""The store's pack writer: new objects hashed, encoded and written into durable packs.

This module owns putting objects into a store's packs: the cheap "seen it
lately" pre-check, hashing and choosing a codec in a thread pool while earlier
objects are written, the ``compress="auto"`` policy and the speeds that drive
it (:class:`Rates`), background write-back, ``O_DIRECT`` files for durable
packs (ledger.objects.direct), and sealing (fsync, rename, then the pack is
visible). The bytes of a pack are laid out by ``packs.PackFile`` only. It must
never make a pack visible before it is whole and durable.
"""

from __future__ import annotations

import collections
import contextlib
import os
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from ledger.objects import direct
from ledger.objects.codecs import MIN_SAVING, Scratch, encode_chunk
from ledger.objects.durable import disk_errors, fsync_dir, temp_path
from ledger.objects.hashing import hash_bytes
from ledger.objects.packs import IndexEntry, PackFile, check_record_size

if TYPE_CHECKING:
    from ledger.objects.store import ObjectStore

DEFAULT_MAX_PACK_BYTES = 1 << 30
# What compress="auto" asks an encoding to save before it has measured the disk.
AUTO_START_SAVING = 0.25
# What it asks while the codec is slower than the disk: only chunks that shrink this
# much (zeros, sparse, small integers), which also encode several times faster.
AUTO_SLOW_SAVING = 0.5
# While the codec is slower than the disk, one float chunk in this many is encoded
# anyway, so that a codec that has sped up (a quieter machine) is noticed.
AUTO_PROBE_EVERY = 16
# Background write-back granularity of a pack being written (see PackWriter._note_written).
FLUSH_BYTES = 64 << 20


class Rates:
    """Measured speeds of this machine: hash+encode (bytes/s per worker) and the disk's writes.

    They drive ``compress="auto"`` by the overlapped model: encoding runs in the
    pool while earlier chunks go to the disk, so a commit takes as long as the
    slower of the two. Compressing pays when encoding keeps up with the disk
    (``codec * workers >= disk``) and saves anything at all: the disk then has
    less to write and nothing waits for the codec. When the codec is slower, every
    encoded chunk slows the commit down, so only chunks that shrink by half or more
    are encoded (they are the fast ones to encode).

    Example:
        >>> rates = Rates()
        >>> rates.note_codec(1 << 22, 1 / 256)  # 1 GiB/s per worker
        >>> rates.note_disk(1 << 30, 1.0)  # 1 GiB/s
        >>> rates.min_saving(2)
        0.02
    """

    def __init__(self) -> None:
        self.codec: float | None = None
        self.disk: float | None = None
        self._probe = 0

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.7 * old + 0.3 * new

    def note_codec(self, nbytes: int, seconds: float) -> None:
        """Record hashing plus encoding ``nbytes`` of float chunk on one worker."""
        if seconds > 0 and nbytes >= 1 << 16:
            self.codec = self._ema(self.codec, nbytes / seconds)

    def note_disk(self, nbytes: int, seconds: float) -> None:
        """Record ``nbytes`` reaching the disk in ``seconds`` (a write-back or a direct write)."""
        if seconds > 0 and nbytes >= 1 << 20:
            self.disk = self._ema(self.disk, nbytes / seconds)

    def keeps_up(self, workers: int) -> bool | None:
        """Whether ``workers`` encode at least as fast as the disk writes; None until both are measured."""
        if self.codec is None or self.disk is None:
            return None
        return self.codec * max(1, workers) >= self.disk

    def min_saving(self, workers: int) -> float:
        """The saving an encoding must reach to be worth its time (auto policy).

        The codec is measured first (its first chunks are encoded whatever they
        save); until the disk is measured too, a quarter is asked for (bf16
        weights, zeros and sparse data compress, fp32 weights are written raw).
        """
        if self.codec is None:
            return MIN_SAVING
        keeps_up = self.keeps_up(workers)
        if keeps_up is None:
            return AUTO_START_SAVING
        if keeps_up:
            return MIN_SAVING
        self._probe = (self._probe + 1) % AUTO_PROBE_EVERY
        return MIN_SAVING if self._probe == 0 else AUTO_SLOW_SAVING


class WriteStats:
    """What a writer stored: new objects and bytes, and the logical bytes it was given."""

    def __init__(self) -> None:
        self.chunks_total = 0
        self.chunks_written = 0
        self.bytes_written = 0
        self.logical_bytes = 0


# (id, codec or None when already stored, blob, the Scratch the blob lives in or None)
_Prepared = tuple[bytes, str | None, "bytes | memoryview | None", "Scratch | None"]


class PackWriter:
    """Writes objects not yet stored into new packs, overlapping hash/encode with I/O.

    Example:
        >>> import tempfile
        >>> from ledger.objects.store import ObjectStore
        >>> store = ObjectStore(Path(tempfile.mkdtemp()), fsync=False)
        >>> w = PackWriter(store, None, compress=True, max_pack_bytes=DEFAULT_MAX_PACK_BYTES)
        >>> oid = w.put("blob", b"hello")
        >>> len(w.finish()), store.has(bytes.fromhex(oid))
        (1, True)
    """

    def __init__(
        self,
        store: ObjectStore,
        pool: ThreadPoolExecutor | None,
        *,
        compress: bool | str,
        max_pack_bytes: int,
    ) -> None:
        self.store = store
        self.pool = pool
        self.compress = compress
        self.max_pack_bytes = max_pack_bytes
        self.stats = WriteStats()
        self.window = 2 * max(1, pool._max_workers) + 2 if pool is not None else 1
        self._pending: set[bytes] = set()
        self._fh: BinaryIO | direct.DirectFile | None = None
        self._pack: PackFile | None = None
        self._tmp: Path | None = None
        self._done: list[str] = []
        self._unflushed = 0
        self._flush_future: Future[None] | None = None
        self._direct = False

    def _prepare_chunk(self, data: memoryview, itemsize: int | None) -> _Prepared:
        # Cheap pre-check: a chunk whose xxh3-128 (and length) this process saw
        # recently is the same bytes; when its object is still stored, skip the
        # blake3 hash and the codec entirely.
        key = xxhash.xxh3_128_digest(data) + len(data).to_bytes(8, "little")
        known = self.store.recent.get(key)
        if known is not None and (self.store.has(known) or known in self._pending):
            return known, None, None, None
        encodes = bool(self.compress) and itemsize in (2, 4, 8)  # (only floats use a buffer)
        prepared = self._prepare(data, itemsize, Scratch.take("blob") if encodes else None)
        self.store.remember(key, prepared[0])
        return prepared

    def _prepare(
        self, data: memoryview, itemsize: int | None, out: Scratch | None = None
    ) -> _Prepared:
        """Hash and encode one object; a float chunk's blob is written into ``out`` if given."""
        started = time.perf_counter()
        oid = hash_bytes(data)
        if self.store.has(oid) or oid in self._pending:
            return _without(out, (oid, None, None, None))
        if self.compress == "auto":
            workers = self.pool._max_workers if self.pool is not None else 1
            codec, blob = encode_chunk(
                data,
                float_itemsize=itemsize,
                compress=True,
                min_saving=self.store.rates.min_saving(workers),
                out=out,
            )
            if codec != "raw" and itemsize is not None:  # a full float encode ran
                self.store.rates.note_codec(len(data), time.perf_counter() - started)
        else:
            codec, blob = encode_chunk(
                data, float_itemsize=itemsize, compress=bool(self.compress), out=out
            )
        return _without(out, (oid, codec, blob, out))

    def _write(self, kind: str, prepared: _Prepared, raw_length: int) -> None:
        oid, codec, blob, out = prepared
        try:
            if codec is None or blob is None or oid in self._pending or self.store.has(oid):
                return
            self._append(oid, kind, codec, blob, raw_length)
            if kind == "chunk":
                self.stats.chunks_written += 1
        finally:
            if out is not None:
                out.give("blob")  # the blob has been copied into the pack

    def _append(
        self, oid: bytes, kind: str, codec: str, blob: bytes | memoryview, raw_length: int
    ) -> None:
        """Write one encoded object at the end of the open pack and index it."""
        if self._pack is None:
            self._open()
        assert self._pack is not None
        with disk_errors("a pack"):
            self._pack.add(oid, kind, codec, blob, raw_length)
            self._note_written(len(blob))
        self._pending.add(oid)
        self.stats.bytes_written += len(blob)
        if self._pack.layout.full(self.max_pack_bytes):
            self._seal()

    def _open(self) -> None:
        self._tmp = temp_path(self.store.tmp_dir, ".pack")
        self._direct = False
        with disk_errors("a pack"):
            if self.store.fsync and direct.enabled():
                # A durable pack goes around the page cache (see ledger.objects.direct).
                raw = None
                with contextlib.suppress(OSError):  # refused here (EINVAL): plain writes
                    raw = open(self._tmp, "wb", buffering=0, opener=direct.direct_opener)  # noqa: SIM115
                if raw is not None:
                    try:
                        self._fh = direct.DirectFile(
                            raw,
                            self.store.flusher(),
                            self.store.buffers,
                            self.store.rates.note_disk,
                        )
                    except BaseException:
                        raw.close()
                        raise
                    self._direct = True
            if not self._direct:
                self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in _seal/abort
            assert self._fh is not None
            self._pack = PackFile(self._fh)

    def _note_written(self, n: int) -> None:
        """Start write-back of what is written so far in the background, every FLUSH_BYTES.

        The final fsync then has only the tail left: the disk works while the
        pool hashes and encodes, instead of after (what safetensors' one write +
        one fsync does).
        """
        self._unflushed += n
        if self._direct:
            return  # direct writes reach the disk as they go
        if not self.store.fsync or self._unflushed < FLUSH_BYTES or self._fh is None:
            return
        if self._flush_future is not None and not self._flush_future.done():
            return
        self._fh.flush()
        self._flush_future = self.store.flusher().submit(
            _datasync, self._fh.fileno(), self._unflushed, self.store.rates
        )
        self._unflushed = 0

    def _wait_flush(self) -> None:
        future, self._flush_future = self._flush_future, None
        if future is not None:
            future.result()

    def _seal(self) -> None:
        if self._fh is None or self._pack is None or self._tmp is None:
            return
        with disk_errors("a pack"):
            name, _ = self._pack.seal()
            self._fh.flush()
            self._wait_flush()
            if self.store.fsync:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            os.replace(self._tmp, self.store.pack_path(name))
            if self.store.fsync:
                fsync_dir(self.store.packs_dir)
        self._tmp = None
        self.store.add_pack(name, self._pack.layout.entries)
        self._pack = None
        self._done.append(name)
        self._pending = set()

    def put_encoded(self, entry: IndexEntry, blob: bytes) -> None:
        """Copy an already-encoded object (gc repacking): same id, kind, codec, raw length."""
        if entry.id not in self._pending:
            self._append(entry.id, entry.kind, entry.codec, blob, entry.raw_length)

    def put(self, kind: str, data: bytes, *, float_itemsize: int | None = None) -> str:
        """Store one object (if new) and return its hex id.

        Raises:
            RecordTooLargeError: ``data`` is over its kind's cap (packs.MAX_RECORD_BYTES).
        """
        view = memoryview(data)
        check_record_size(kind, len(view), f"the {kind} object being written")
        prepared = self._prepare(view, float_itemsize)
        self._write(kind, prepared, len(view))
        return prepared[0].hex()

    def put_chunks(self, chunks: Iterable[tuple[memoryview, int | None]]) -> list[str]:
        """Store chunks in order, hashing and encoding ``window`` of them at once.

        Args:
            chunks: (bytes, float item size or None) per chunk; consumed lazily, so
                memory stays bounded by the window, never the whole state.

        Returns:
            The hex id of every chunk, in input order.
        """
        if self.pool is None:
            raise ValueError("put_chunks needs a writer made with a thread pool")
        pool = self.pool
        ids: list[str] = []
        inflight: collections.deque[tuple[Future[_Prepared], int]] = collections.deque()

        def drain_one() -> None:
            fut, length = inflight.popleft()
            prepared = fut.result()
            self._write("chunk", prepared, length)
            ids.append(prepared[0].hex())

        try:
            for data, itemsize in chunks:
                self.stats.chunks_total += 1
                self.stats.logical_bytes += len(data)
                inflight.append((pool.submit(self._prepare_chunk, data, itemsize), len(data)))
                if len(inflight) >= self.window:
                    drain_one()
            while inflight:
                drain_one()
        finally:
            for fut, _ in inflight:
                fut.cancel()
        return ids

    def finish(self) -> list[str]:
        """Seal the open pack (durably when the store fsyncs); return every pack written."""
        self._seal()
        return self._done

    def abort(self) -> None:
        """Drop the unsealed pack; sealed packs stay (they are valid, only unreferenced)."""
        with contextlib.suppress(OSError):
            self._wait_flush()  # never close the descriptor under a running fdatasync
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None
        self._pack = None
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None


def _without(out: Scratch | None, prepared: _Prepared) -> _Prepared:
    """``prepared``, with ``out`` given back when its blob does not live in ``out``."""
    oid, codec, blob, _ = prepared
    if out is not None and not (isinstance(blob, memoryview) and out.holds(blob)):
        out.give("blob")
        return oid, codec, blob, None
    return prepared


def _datasync(fd: int, nbytes: int, rates: Rates) -> None:
    started = time.perf_counter()
    getattr(os, "fdatasync", os.fsync)(fd)
    rates.note_disk(nbytes, time.perf_counter() - started)
