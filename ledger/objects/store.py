"""The object store: content-addressed objects in pack files on a filesystem.

This module owns a ledger's ``objects/`` folder: the in-memory index of its
packs (``ledger.objects.lookup``: the merged index of ``ledger.objects.midx``
plus the packs it does not cover; loaded, refreshed only when the files
changed, forgotten when gc or compaction removes packs), reading objects
back (each decoded and hash-checked by ``ledger.objects.check``), falling back
to an ``ObjectSource`` for objects no pack holds, and handing out writers
(``ledger.objects.writer.PackWriter`` writes new packs). It knows nothing of
commits, refs or training state, and must never return bytes whose blake3
differs from the id they were asked by.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from ledger.errors import (
    CorruptionError,
    ObjectMissingError,
    PackUnreadableError,
    RecordTooLargeError,
)
from ledger.objects import direct
from ledger.objects.check import check_hash, decode_object
from ledger.objects.durable import fsync_dir
from ledger.objects.handles import Handle, PackHandles
from ledger.objects.lookup import Located, PackTable
from ledger.objects.midx import MIDX_NAME, MergedIndex, write_midx
from ledger.objects.packs import IndexEntry, pread_exact, read_pack_index
from ledger.objects.safepath import check_inside
from ledger.objects.writer import DEFAULT_MAX_PACK_BYTES, PackWriter, Rates
from ledger.threads import block_signals

RECENT_MAX = 1 << 18
SETTLED_NS = 2_000_000_000  # a directory unchanged this long after a scan needs no rescan


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
        self._table = PackTable()  # the merged index, plus the packs it does not cover
        self._loaded: set[str] = set()  # every readable pack, covered by the merged index or not
        self._midx_seen: tuple[object, ...] | None = None
        self.midx_error: str | None = None  # why a damaged merged index was set aside
        # xxh3-128 + length of recently seen chunks -> their blake3 id (see PackWriter).
        self.recent: dict[bytes, bytes] = {}
        self._flusher: ThreadPoolExecutor | None = None
        self.rates = Rates()
        self.buffers = direct.Buffers()  # aligned buffers of packs written with O_DIRECT
        self._scanned: tuple[int, int, int] | None = None  # packs_dir as of the last scan
        self._names: set[str] = set()
        self._names_settled = False
        self.handles = PackHandles()  # a bounded cache of open packs (ulimit -n stays safe)
        self._pack_files: dict[str, str] = {}
        self._lock = threading.Lock()
        # Consulted by read/read_many for objects no pack holds (lazy restore from a remote).
        self.source: ObjectSource | None = None
        for owned in (self.packs_dir, self.tmp_dir):  # never a link out of the ledger
            check_inside(root, owned, "using").mkdir(parents=True, exist_ok=True)
        self.refresh()

    # -- index -------------------------------------------------------------

    @property
    def midx_path(self) -> Path:
        """The merged index of this store's packs (``ledger.objects.midx``)."""
        return self.root / "objects" / MIDX_NAME

    def refresh(self) -> None:
        """Load the merged index if it changed, then the index of every pack it does not cover."""
        with self._lock:
            self._load_midx()
            covered = self._table.covered()
            on_disk = self._on_disk()
            self._loaded |= covered & on_disk
            self._table.gone = covered - on_disk
            for name in sorted(on_disk - self._loaded - self.damaged.keys() - covered):
                path = self.pack_path(name)
                try:
                    entries = read_pack_index(path)
                except CorruptionError as e:
                    self.damaged[name] = str(e)
                    continue
                except FileNotFoundError:
                    continue
                except PermissionError:
                    self.damaged[name] = unreadable_reason(path)
                    continue
                self._add(name, entries)

    def _load_midx(self) -> None:
        """(Re)read the merged index when its file changed; a damaged one is set aside."""
        try:
            st = os.stat(self.midx_path)
        except FileNotFoundError:
            seen = None
        else:
            seen = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        if seen == self._midx_seen:
            return
        self._midx_seen = seen
        fresh: MergedIndex | None = None
        if seen is not None:
            try:
                fresh = MergedIndex.read(self.midx_path)
                self.midx_error = None
            except (CorruptionError, RecordTooLargeError, OSError) as e:
                self.midx_error = str(e)
        self._loaded -= self._table.set_midx(fresh)  # no longer covered: read their own indexes

    def _on_disk(self) -> set[str]:
        """The names of the packs in ``objects/packs/`` now.

        A scan is skipped while the directory's change time is the one seen at
        the last scan, trusted only once that scan ran well after the change
        (git's "racy" rule: a file system with coarse times could otherwise hide
        a pack added in the same tick).
        """
        st = os.stat(self.packs_dir)
        seen = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if seen == self._scanned and self._names_settled:
            return set(self._names)
        with os.scandir(self.packs_dir) as it:
            names = {e.name[:-5] for e in it if e.name.endswith(".pack") and len(e.name) > 5}
        self._scanned, self._names = seen, names
        self._names_settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > SETTLED_NS
        return set(names)

    def _add(self, name: str, entries: Sequence[IndexEntry]) -> None:
        self._table.add(name, entries)
        self._loaded.add(name)

    def add_pack(self, name: str, entries: Sequence[IndexEntry]) -> None:
        """Make a pack this process just wrote visible without re-reading it."""
        with self._lock:
            self._add(name, entries)

    def sync(self) -> None:
        """Forget packs that vanished (another process's gc), then load new ones."""
        on_disk = self._on_disk()
        with self._lock:
            vanished = self._loaded - on_disk
            if vanished:
                self._forget(vanished)
        self.refresh()

    def _forget(self, names: set[str]) -> None:
        for name in names:
            self._loaded.discard(name)
            self.damaged.pop(name, None)
            self.handles.invalidate(self.pack_path(name))
            self._pack_files.pop(name, None)
        self._table.forget(names)

    def pack_entries(self, name: str) -> list[IndexEntry]:
        """The index entries of a loaded pack."""
        if name in self._table.entries_of:
            return list(self._table.entries_of[name])
        if name not in self._loaded:
            return []
        try:
            return read_pack_index(self.pack_path(name))
        except (CorruptionError, OSError):  # fall back on what the merged index says
            assert self._table.midx is not None
            return [e for p, e in self._table.midx.entries() if p == name]

    def covered_objects(self) -> int:
        """How many records the merged index holds (0 without one)."""
        return len(self._table.midx) if self._table.midx is not None else 0

    def covered_locations(self, oid: bytes) -> list[Located]:
        """Every (pack, entry) of ``oid`` in the packs the merged index covers (still present)."""
        return self._table.covered_locations(oid)

    def covered_packs(self) -> set[str]:
        """The loaded packs that the merged index covers (the rest are indexed one by one)."""
        return self._table.covered() & self._loaded

    def write_midx(self, packs: Mapping[str, Sequence[IndexEntry]], keep: Iterable[str]) -> None:
        """Replace the merged index by one covering ``packs`` and the covered packs ``keep``.

        Compaction and gc only, under the gc lock held exclusively.
        """
        check_inside(self.root, self.midx_path, "writing")
        write_midx(
            self.midx_path,
            packs,
            base=self._table.midx,
            keep=keep,
            fsync=self.fsync,
            tmp_dir=self.tmp_dir,
        )
        with self._lock:
            self._midx_seen = ("written",)
        self.refresh()

    def pack_path(self, name: str) -> Path:
        """The file of a pack."""
        return self.packs_dir / f"{name}.pack"

    def remove_packs(self, names: Iterable[str]) -> None:
        """Delete packs (gc only, under the ledger's gc lock) and forget their objects."""
        doomed = set(names)
        check_inside(self.root, self.packs_dir, "deleting packs in")
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
        with self._open(name) as fd:
            pread_exact(fd, memoryview(blob), entry.offset, f"pack {name[:12]}")
        return bytes(blob)

    def remember(self, key: bytes, oid: bytes) -> None:
        """Record a chunk's cheap fingerprint -> id (bounded: the oldest half is dropped)."""
        if len(self.recent) >= RECENT_MAX:
            for old in list(self.recent)[: RECENT_MAX // 2]:
                self.recent.pop(old, None)
        self.recent[key] = oid

    def has(self, oid: bytes) -> bool:
        """Whether the object is stored (in a pack already known to this process)."""
        return self._table.find(oid) is not None

    def locate(self, oid: bytes) -> Located | None:
        """The pack and index entry of an object, re-scanning packs once on a miss."""
        found = self._table.find(oid)
        if found is None:
            self.refresh()
            found = self._table.find(oid)
        return found

    def ids(self, kind: str) -> list[bytes]:
        """Ids of every stored object of one kind (``chunk``, ``manifest``, ``commit``, ``blob``)."""
        return self._table.ids(kind)

    def uncovered_ids(self, kind: str) -> list[bytes]:
        """Ids of one kind in the packs the merged index does not cover (the newest, mostly)."""
        return self._table.uncovered_ids(kind)

    def entries(self, kind: str) -> Iterator[Located]:
        """(pack, entry) of every stored object of one kind, each id once."""
        return self._table.entries(kind)

    def ids_with_prefix(self, kind: str, prefix: str) -> list[str]:
        """Hex ids of one kind that start with the lower-case hex ``prefix`` (O(log n))."""
        return self._table.ids_with_prefix(kind, prefix)

    def pack_names(self) -> list[str]:
        """Names of every readable pack."""
        return sorted(self._loaded)

    def index_bytes(self) -> int:
        """Bytes the in-memory index holds: the merged index file plus the per-pack table."""
        return self._table.nbytes()

    # -- reading -----------------------------------------------------------

    def _open(self, pack: str) -> Handle:
        """A descriptor of pack ``pack`` from the bounded cache: ``with self._open(p) as fd:``.

        Raises:
            FileNotFoundError: a concurrent gc removed the pack (callers re-sync).
            PackUnreadableError: the pack exists but cannot be opened.
        """
        path = self._pack_files.get(pack)
        if path is None:  # (kept as text: building a Path per read cost ~5 us)
            path = self._pack_files[pack] = str(self.pack_path(pack))
        try:
            return self.handles.get(path)
        except FileNotFoundError:
            raise
        except PermissionError:
            raise PackUnreadableError(
                unreadable_reason(Path(path)), pack=pack, path=str(path)
            ) from None
        except OSError as e:
            raise PackUnreadableError(
                f"pack {path} cannot be opened ({e.strerror}); raise the open-file limit "
                "(ulimit -n) or close other files, then retry",
                pack=pack,
                path=str(path),
            ) from None

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
        label = f"object {oid.hex()[:12]} ({what}) in pack {pack[:12]}"
        check_hash(oid, data, label, pack=pack, path=what)

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
            raise ObjectMissingError(
                f"object {oid.hex()[:12]} ({what}) is missing from the store",
                object=oid.hex(),
                path=what,
            )
        pack, entry = found
        if entry.raw_length != len(out):
            raise CorruptionError(
                f"object {oid.hex()[:12]} ({what}) is {entry.raw_length} bytes, expected {len(out)}"
            )
        label = f"object {oid.hex()[:12]} ({what}) in pack {pack[:12]}"
        if entry.codec == "raw":
            with self._open(pack) as fd:
                pread_exact(fd, out, entry.offset, label)
            decode_object(entry, out, label, pack=pack, path=what)
        else:
            blob = bytearray(entry.length)
            with self._open(pack) as fd:
                pread_exact(fd, memoryview(blob), entry.offset, label)
            decode_object(entry, blob, label, into=out, pack=pack, path=what)

    def read(self, oid: bytes, what: str) -> bytes:
        """The raw bytes of object ``oid``, hash-checked."""
        found = self.locate(oid)
        if found is None and self.source is not None:
            self.source.fetch([oid], {oid: what})
            found = self.locate(oid)
        if found is None:
            raise ObjectMissingError(
                f"object {oid.hex()[:12]} ({what}) is missing from the store",
                object=oid.hex(),
                path=what,
            )
        out = bytearray(found[1].raw_length)
        self.read_into(oid, memoryview(out), what)
        return bytes(out)

    def read_many(
        self, jobs: Sequence[tuple[bytes, memoryview, str]], pool: ThreadPoolExecutor
    ) -> None:
        """Run :meth:`read_into` for every job, in parallel, raising the first error.

        The jobs run in pack order (by pack, then offset): the workers walk each
        pack front to back, which the kernel's read-ahead streams, whatever
        order the state's tensors were committed in.
        """
        if self.source is not None:
            missing = {oid: what for oid, _, what in jobs if not self.has(oid)}
            if missing:
                self.refresh()
                missing = {oid: what for oid, what in missing.items() if not self.has(oid)}
            if missing:
                self.source.fetch(list(missing), missing)
        ordered = sorted(range(len(jobs)), key=lambda i: self._position(jobs[i][0], i))
        futures = [pool.submit(self.read_into, *jobs[i]) for i in ordered]
        for f in futures:
            f.result()

    def _position(self, oid: bytes, i: int) -> tuple[int, str, int, int]:
        """Sort key of a read: known objects by (pack, offset), then unknown ones in order."""
        found = self._table.find(oid)
        return (1, "", 0, i) if found is None else (0, found[0], found[1].offset, i)

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
        self.handles.close_all()


def unreadable_reason(path: Path) -> str:
    """Why pack ``path`` is set aside when this process may not read it, and the fix."""
    return (
        f"pack {path} cannot be read (permission denied); its objects count as missing "
        f"until its owner makes it readable (chmod u+r {path})"
    )


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
