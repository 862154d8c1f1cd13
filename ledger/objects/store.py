"""The object store: content-addressed objects in pack files on a filesystem.

This module owns putting objects into packs (hashing, choosing a codec,
compressing and writing overlap in a thread pool) and reading them back with
a hash check. It knows nothing of commits, refs or training state, and must
never return bytes whose blake3 differs from the id they were asked by.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Protocol

import xxhash

from ledger.errors import CorruptionError, ObjectMissingError
from ledger.objects import direct
from ledger.objects.codecs import MIN_SAVING, decoder, encode_chunk
from ledger.objects.durable import disk_errors, fsync_dir, temp_path
from ledger.objects.hashing import hash_bytes
from ledger.objects.packs import (
    HEADER,
    PACK_MAGIC,
    PACK_VERSION,
    IndexEntry,
    encode_pack_tail,
    pread_exact,
    read_pack_index,
)
from ledger.threads import block_signals

DEFAULT_MAX_PACK_BYTES = 1 << 30
# What compress="auto" asks an encoding to save before it has measured this machine.
AUTO_START_SAVING = 0.25
# Background write-back granularity of a pack being written (see PackWriter._note_written).
FLUSH_BYTES = 64 << 20
RECENT_MAX = 1 << 18
Located = tuple[str, IndexEntry]


class ObjectSource(Protocol):
    """Where a read may get objects the store lacks (a ledger's remotes: ledger.remotes.lazy)."""

    def fetch(self, oids: Sequence[bytes], what: dict[bytes, str] | None = None) -> None:
        """Store whichever of ``oids`` it can find (checked); missing ones stay missing."""

    def has(self, oid: bytes) -> bool:
        """Whether the source holds ``oid``, as far as it knows without asking anyone."""


class ObjectStore:
    """Objects of one ledger, read from and written to ``<root>/objects``.

    Example:
        >>> import tempfile
        >>> store = ObjectStore(Path(tempfile.mkdtemp()), fsync=False)
        >>> with ThreadPoolExecutor(2) as pool:
        ...     w = store.writer(pool)
        ...     oid = w.put("blob", b"hello")
        ...     _ = w.finish()
        >>> store.read(bytes.fromhex(oid), "greeting")
        b'hello'
    """

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.root = root
        self.packs_dir = root / "objects" / "packs"
        self.tmp_dir = root / "objects" / "tmp"
        self.fsync = fsync
        self.damaged: dict[str, str] = {}
        self._index: dict[bytes, Located] = {}
        self._loaded: set[str] = set()
        self._entries: dict[str, list[IndexEntry]] = {}
        # xxh3-128 + length of recently seen chunks -> their blake3 id (see PackWriter).
        self.recent: dict[bytes, bytes] = {}
        self._flusher: ThreadPoolExecutor | None = None
        self.rates = Rates()
        self.buffers = direct.Buffers()  # aligned buffers of packs written with O_DIRECT
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        # Consulted by read/read_many for objects no pack holds (lazy restore from a remote).
        self.source: ObjectSource | None = None
        self.packs_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.refresh()

    # -- index -------------------------------------------------------------

    def refresh(self) -> None:
        """Load the index of every pack that appeared since the last call."""
        with self._lock:
            for path in sorted(self.packs_dir.glob("*.pack")):
                name = path.stem
                if name in self._loaded or name in self.damaged:
                    continue
                try:
                    entries = read_pack_index(path)
                except CorruptionError as e:
                    self.damaged[name] = str(e)
                    continue
                except FileNotFoundError:
                    continue
                self._add(name, entries)

    def _add(self, name: str, entries: Sequence[IndexEntry]) -> None:
        for entry in entries:
            self._index.setdefault(entry.id, (name, entry))
        self._loaded.add(name)
        self._entries[name] = list(entries)

    def add_pack(self, name: str, entries: Sequence[IndexEntry]) -> None:
        """Make a pack this process just wrote visible without re-reading it."""
        with self._lock:
            self._add(name, entries)

    def sync(self) -> None:
        """Forget packs that vanished (another process's gc), then load new ones."""
        on_disk = {p.stem for p in self.packs_dir.glob("*.pack")}
        with self._lock:
            vanished = self._loaded - on_disk
            if vanished:
                self._forget(vanished)
        self.refresh()

    def _forget(self, names: set[str]) -> None:
        for name in names:
            self._loaded.discard(name)
            self._entries.pop(name, None)
            self.damaged.pop(name, None)
            fd = self._fds.pop(name, None)
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._index = {}
        for name in sorted(self._loaded):
            for entry in self._entries[name]:
                self._index.setdefault(entry.id, (name, entry))

    def pack_entries(self, name: str) -> list[IndexEntry]:
        """The index entries of a loaded pack."""
        return list(self._entries.get(name, []))

    def pack_path(self, name: str) -> Path:
        """The file of a pack."""
        return self.packs_dir / f"{name}.pack"

    def remove_packs(self, names: Iterable[str]) -> None:
        """Delete packs (gc only, under the ledger's gc lock) and forget their objects."""
        doomed = set(names)
        for name in doomed:
            with contextlib.suppress(FileNotFoundError):
                self.pack_path(name).unlink()
        if doomed and self.fsync:
            fsync_dir(self.packs_dir)
        with self._lock:
            self._forget(doomed)

    def read_encoded(self, name: str, entry: IndexEntry) -> bytes:
        """The stored (encoded) bytes of one entry, unchecked: gc copies them as they are."""
        blob = bytearray(entry.length)
        pread_exact(self._fd(name), memoryview(blob), entry.offset, f"pack {name[:12]}")
        return bytes(blob)

    def remember(self, key: bytes, oid: bytes) -> None:
        """Record a chunk's cheap fingerprint -> id (bounded: the oldest half is dropped)."""
        if len(self.recent) >= RECENT_MAX:
            for old in list(self.recent)[: RECENT_MAX // 2]:
                self.recent.pop(old, None)
        self.recent[key] = oid

    def has(self, oid: bytes) -> bool:
        """Whether the object is stored (in a pack already known to this process)."""
        return oid in self._index

    def locate(self, oid: bytes) -> Located | None:
        """The pack and index entry of an object, re-scanning packs once on a miss."""
        found = self._index.get(oid)
        if found is None:
            self.refresh()
            found = self._index.get(oid)
        return found

    def ids(self, kind: str) -> list[bytes]:
        """Ids of every stored object of one kind (``chunk``, ``manifest``, ``commit``, ``blob``)."""
        return [oid for oid, (_, e) in list(self._index.items()) if e.kind == kind]

    def pack_names(self) -> list[str]:
        """Names of every readable pack."""
        return sorted(self._loaded)

    # -- reading -----------------------------------------------------------

    def _fd(self, pack: str) -> int:
        fd = self._fds.get(pack)
        if fd is None:
            with self._lock:
                fd = self._fds.get(pack)
                if fd is None:
                    fd = os.open(self.packs_dir / f"{pack}.pack", os.O_RDONLY)
                    self._fds[pack] = fd
        return fd

    def map_pack(self, name: str) -> mmap.mmap:
        """Pack ``name`` mapped copy-on-write: writes to the mapping never reach the file.

        The mapping keeps the pack's bytes (and disk space) alive after a gc
        deletes the file, until the last buffer over it is released.

        Raises:
            FileNotFoundError: a concurrent gc removed the pack.
        """
        fd = os.open(self.packs_dir / f"{name}.pack", os.O_RDONLY)
        try:
            return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        finally:
            os.close(fd)

    def check(self, oid: bytes, data: memoryview, what: str, pack: str) -> None:
        """Raise CorruptionError unless ``data`` hashes to ``oid`` (bytes read in place)."""
        if hash_bytes(data) != oid:
            raise CorruptionError(
                f"object {oid.hex()[:12]} ({what}) in pack {pack[:12]} fails its hash check: "
                "the stored bytes are damaged"
            )

    def read_into(self, oid: bytes, out: memoryview, what: str) -> None:
        """Like :meth:`_read_into`, re-syncing once if the pack vanished under a concurrent gc."""
        try:
            self._read_into(oid, out, what)
        except FileNotFoundError:
            self.sync()
            self._read_into(oid, out, what)

    def _read_into(self, oid: bytes, out: memoryview, what: str) -> None:
        """Decode object ``oid`` into ``out`` (exactly its raw length) and check its hash.

        Args:
            oid: the object's 32-byte id.
            out: writable buffer of the object's raw length.
            what: how to name the object in an error (e.g. the tensor's path).
        """
        found = self.locate(oid)
        if found is None:
            raise ObjectMissingError(f"object {oid.hex()[:12]} ({what}) is missing from the store")
        pack, entry = found
        if entry.raw_length != len(out):
            raise CorruptionError(
                f"object {oid.hex()[:12]} ({what}) is {entry.raw_length} bytes, expected {len(out)}"
            )
        label = f"object {oid.hex()[:12]} ({what}) in pack {pack[:12]}"
        fd = self._fd(pack)
        if entry.codec == "raw":
            pread_exact(fd, out, entry.offset, label)
        else:
            blob = bytearray(entry.length)
            pread_exact(fd, memoryview(blob), entry.offset, label)
            try:
                decoder(entry.codec).decode_into(memoryview(blob), out)
            except CorruptionError as e:
                raise CorruptionError(f"{label} cannot be decoded: {e}") from e
        self.check(oid, out, what, pack)

    def read(self, oid: bytes, what: str) -> bytes:
        """The raw bytes of object ``oid``, hash-checked."""
        found = self.locate(oid)
        if found is None and self.source is not None:
            self.source.fetch([oid], {oid: what})
            found = self.locate(oid)
        if found is None:
            raise ObjectMissingError(f"object {oid.hex()[:12]} ({what}) is missing from the store")
        out = bytearray(found[1].raw_length)
        self.read_into(oid, memoryview(out), what)
        return bytes(out)

    def read_many(
        self, jobs: Sequence[tuple[bytes, memoryview, str]], pool: ThreadPoolExecutor
    ) -> None:
        """Run :meth:`read_into` for every job, in parallel, raising the first error."""
        if self.source is not None:
            missing = {oid: what for oid, _, what in jobs if not self.has(oid)}
            if missing:
                self.refresh()
                missing = {oid: what for oid, what in missing.items() if not self.has(oid)}
            if missing:
                self.source.fetch(list(missing), missing)
        futures = [pool.submit(self.read_into, oid, out, what) for oid, out, what in jobs]
        for f in futures:
            f.result()

    # -- writing -----------------------------------------------------------

    def writer(
        self,
        pool: ThreadPoolExecutor | None,
        *,
        compress: bool | str = True,
        max_pack_bytes: int = DEFAULT_MAX_PACK_BYTES,
    ) -> PackWriter:
        """A writer that packs new objects; call ``finish()`` to make them durable and visible."""
        return PackWriter(self, pool, compress=compress, max_pack_bytes=max_pack_bytes)

    def flusher(self) -> ThreadPoolExecutor:
        """The one thread that runs background fdatasync calls for pack writers."""
        with self._lock:
            if self._flusher is None:
                self._flusher = ThreadPoolExecutor(
                    1, thread_name_prefix="ledger-flush", initializer=block_signals
                )
            return self._flusher

    def close(self) -> None:
        """Close every open pack file."""
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()


class Rates:
    """Measured speeds of this machine: the codec (bytes/s per worker) and disk write-back.

    They drive ``compress="auto"``: an encoding must save at least the fraction
    ``disk / (codec * workers)`` of a chunk, or the chunk is stored raw: when the
    disk is faster than the codec, compressing only slows the commit down.
    """

    def __init__(self) -> None:
        self.codec: float | None = None
        self.disk: float | None = None

    @staticmethod
    def _ema(old: float | None, new: float) -> float:
        return new if old is None else 0.7 * old + 0.3 * new

    def note_codec(self, nbytes: int, seconds: float) -> None:
        if seconds > 0 and nbytes >= 1 << 16:
            self.codec = self._ema(self.codec, nbytes / seconds)

    def note_disk(self, nbytes: int, seconds: float) -> None:
        if seconds > 0 and nbytes >= 1 << 20:
            self.disk = self._ema(self.disk, nbytes / seconds)

    def min_saving(self, workers: int) -> float:
        """The saving an encoding must reach to be worth its time (auto policy).

        Before both speeds are measured, a saving of a quarter is asked for: bf16
        weights (~32%), zeros and sparse data compress, fp32 weights (~16%) are
        written raw, the right call on any disk faster than ~0.6 GB/s.
        """
        if self.codec is None or self.disk is None:
            return AUTO_START_SAVING
        return min(0.95, max(MIN_SAVING, self.disk / (self.codec * max(1, workers))))


class WriteStats:
    """What a writer stored: new objects and bytes, and the logical bytes it was given."""

    def __init__(self) -> None:
        self.chunks_total = 0
        self.chunks_written = 0
        self.bytes_written = 0
        self.logical_bytes = 0


_Prepared = tuple[bytes, str | None, "bytes | memoryview | None"]


def raw_run(found: Sequence[Located | None]) -> tuple[str, int] | None:
    """Where located objects lie back to back, uncompressed, in one pack: (pack, offset).

    None when any is not stored here (yet), is encoded, or they are not
    consecutive in one pack; the caller then reads them one by one.

    Example:
        >>> raw_run([("p", IndexEntry(b"a" * 32, "chunk", "raw", 8, 4, 4)),
        ...          ("p", IndexEntry(b"b" * 32, "chunk", "raw", 12, 4, 4))])
        ('p', 8)
    """
    if not found or found[0] is None:
        return None
    pack, first = found[0]
    pos = first.offset
    for located in found:
        if located is None or located[0] != pack or located[1].codec != "raw":
            return None
        if located[1].offset != pos:
            return None
        pos += located[1].length
    return pack, first.offset


class PackWriter:
    """Writes objects not yet stored into new packs, overlapping hash/encode with I/O."""

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
        self._entries: list[IndexEntry] = []
        self._pending: set[bytes] = set()
        self._fh: BinaryIO | direct.DirectFile | None = None
        self._tmp: Path | None = None
        self._pos = 0
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
            return known, None, None
        prepared = self._prepare(data, itemsize)
        self.store.remember(key, prepared[0])
        return prepared

    def _prepare(self, data: memoryview, itemsize: int | None) -> _Prepared:
        oid = hash_bytes(data)
        if self.store.has(oid) or oid in self._pending:
            return oid, None, None
        if self.compress == "auto":
            workers = self.pool._max_workers if self.pool is not None else 1
            started = time.perf_counter()
            codec, blob = encode_chunk(
                data,
                float_itemsize=itemsize,
                compress=True,
                min_saving=self.store.rates.min_saving(workers),
            )
            if codec != "raw":  # a full encode ran: that is the codec's speed
                self.store.rates.note_codec(len(data), time.perf_counter() - started)
        else:
            codec, blob = encode_chunk(data, float_itemsize=itemsize, compress=bool(self.compress))
        return oid, codec, blob

    def _write(self, kind: str, prepared: _Prepared, raw_length: int) -> None:
        oid, codec, blob = prepared
        if codec is None or blob is None or oid in self._pending or self.store.has(oid):
            return
        self._append(oid, kind, codec, blob, raw_length)
        if kind == "chunk":
            self.stats.chunks_written += 1

    def _append(
        self, oid: bytes, kind: str, codec: str, blob: bytes | memoryview, raw_length: int
    ) -> None:
        """Write one encoded object at the end of the open pack and index it."""
        if self._fh is None:
            self._open()
        assert self._fh is not None
        with disk_errors("a pack"):
            self._fh.write(blob)
            self._note_written(len(blob))
        self._entries.append(IndexEntry(oid, kind, codec, self._pos, len(blob), raw_length))
        self._pending.add(oid)
        self._pos += len(blob)
        self.stats.bytes_written += len(blob)
        if self._pos >= self.max_pack_bytes:
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
                        self._fh = direct.DirectFile(raw, self.store.flusher(), self.store.buffers)
                    except BaseException:
                        raw.close()
                        raise
                    self._direct = True
            if not self._direct:
                self._fh = open(self._tmp, "wb")  # noqa: SIM115 - closed in _seal/abort
            assert self._fh is not None
            self._fh.write(HEADER.pack(PACK_MAGIC, PACK_VERSION))
        self._pos = HEADER.size

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
        if self._fh is None or self._tmp is None:
            return
        tail, name = encode_pack_tail(self._entries, self._pos)
        with disk_errors("a pack"):
            self._fh.write(tail)
            self._fh.flush()
            self._wait_flush()
            if self.store.fsync:
                os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None
            final = self.store.packs_dir / f"{name}.pack"
            os.replace(self._tmp, final)
            if self.store.fsync:
                fsync_dir(self.store.packs_dir)
        self._tmp = None
        self.store.add_pack(name, self._entries)
        self._done.append(name)
        self._entries = []
        self._pending = set()

    def put_encoded(self, entry: IndexEntry, blob: bytes) -> None:
        """Copy an already-encoded object (gc repacking): same id, kind, codec, raw length."""
        if entry.id not in self._pending:
            self._append(entry.id, entry.kind, entry.codec, blob, entry.raw_length)

    def put(self, kind: str, data: bytes, *, float_itemsize: int | None = None) -> str:
        """Store one object (if new) and return its hex id."""
        view = memoryview(data)
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
        if self._tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self._tmp.unlink()
            self._tmp = None


def _datasync(fd: int, nbytes: int, rates: Rates) -> None:
    started = time.perf_counter()
    getattr(os, "fdatasync", os.fsync)(fd)
    rates.note_disk(nbytes, time.perf_counter() - started)
