"""Moving objects: what a remote holds (its view), downloads into the store, uploads as packs.

This module owns reading a remote's refs and index files (cached by name in
the ledger, since index files never change), fetching objects with coalesced
range reads, checking every one (hash, size, codec bounds) before it enters
the local store, and packing local objects for upload. It decides nothing
about refs or commits: ``sync`` does. It must never store an unchecked object.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ledger.errors import (
    CorruptionError,
    ObjectMissingError,
    RecordTooLargeError,
    RemoteCorruptionError,
)
from ledger.objects.check import decode_object
from ledger.objects.durable import atomic_write, read_bounded
from ledger.objects.packs import IndexEntry
from ledger.objects.store import ObjectStore
from ledger.remotes.base import Remote, Version
from ledger.remotes.layout import (
    MAX_INDEX_BYTES,
    MAX_REFS_BYTES,
    REFS_KEY,
    Located,
    PackBuilder,
    PackRecord,
    RemoteRefs,
    decode_index,
    decode_refs,
    index_key,
    object_map,
    pack_key,
)
from ledger.threads import block_signals

#: Data packs are sealed at this size (docs/remotes.md, "Pack size", benchmarks/push.py).
PACK_TARGET = 64 << 20
#: Range reads: neighbours closer than GAP are read together, one read is at most SPAN.
GAP = 1 << 20
SPAN = 64 << 20
DOWNLOAD_THREADS = 4


class Progress(Protocol):
    """Told the bytes a transfer will move, then each part as it is done (a progress bar)."""

    def start(self, total: int, description: str) -> None:
        """A transfer of ``total`` bytes begins."""

    def advance(self, done: int) -> None:
        """``done`` more bytes were moved."""


@dataclass
class RemoteView:
    """What one remote holds, as read at ``version``."""

    remote: Remote
    refs: RemoteRefs | None
    version: Version
    packs: list[PackRecord]
    objects: dict[bytes, Located] = field(default_factory=dict)

    def has(self, oid: bytes) -> bool:
        """Whether the remote stores object ``oid``."""
        return oid in self.objects


def load_view(remote: Remote, cache: Path | None, *, offline: bool = False) -> RemoteView:
    """Read ``refs.json`` and every index file it lists (index files come from ``cache`` if there).

    ``offline`` reads only the cache (what the last contact saw). O(1) requests:
    one for the refs, one per index file not yet cached (at most 8 are listed).
    Every read, from the remote or the cache, is bounded by its record's cap.
    """
    if offline:
        data: bytes | None = _read_cache(cache, REFS_KEY, MAX_REFS_BYTES)
        version: Version = None
    else:
        data, version = remote.get_versioned(REFS_KEY, MAX_REFS_BYTES)
    if data is None:
        return RemoteView(remote, None, version, [])
    refs = decode_refs(data, remote.url)
    packs: list[PackRecord] = []
    for name in refs.indexes:
        raw = _read_cache(cache, index_key(name), MAX_INDEX_BYTES)
        if raw is None:
            if offline:
                return RemoteView(remote, None, None, [])
            key = index_key(name)
            raw = remote.get(key, MAX_INDEX_BYTES)
            packs.extend(decode_index(raw, name, remote.url))
            _write_cache(cache, key, raw)
        else:
            packs.extend(decode_index(raw, name, f"the cache of {remote.url}"))
    if not offline:
        _write_cache(cache, REFS_KEY, data)
    return RemoteView(remote, refs, version, packs, object_map(packs))


def _read_cache(cache: Path | None, key: str, cap: int) -> bytes | None:
    """A cached copy (None: absent, or over its cap: a damaged cache is read again from the remote)."""
    if cache is None:
        return None
    try:
        return read_bounded(cache / key, cap)
    except (FileNotFoundError, RecordTooLargeError):
        return None


def _write_cache(cache: Path | None, key: str, data: bytes) -> None:
    if cache is not None:
        path = cache / key
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, fsync=False)


def cache_refs(cache: Path | None, refs_data: bytes, index: tuple[str, bytes] | None) -> None:
    """Remember what a push just wrote, so the next contact needs no re-download."""
    if index is not None:
        _write_cache(cache, index_key(index[0]), index[1])
    _write_cache(cache, REFS_KEY, refs_data)


# -- downloading ----------------------------------------------------------------


def _spans(entries: list[IndexEntry]) -> list[list[IndexEntry]]:
    """Entries of one pack grouped into reads (sorted by offset; small gaps bridged)."""
    spans: list[list[IndexEntry]] = []
    for entry in sorted(entries, key=lambda e: e.offset):
        if spans:
            first, last = spans[-1][0], spans[-1][-1]
            end = entry.offset + entry.length
            if entry.offset - (last.offset + last.length) <= GAP and end - first.offset <= SPAN:
                spans[-1].append(entry)
                continue
        spans.append([entry])
    return spans


def download(
    view: RemoteView,
    store: ObjectStore,
    oids: Iterable[bytes],
    what: Mapping[bytes, str] | None = None,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Fetch the objects of ``oids`` that the store lacks and the remote has; check, then store them.

    Returns (objects stored, bytes read from the remote).

    Raises:
        RemoteCorruptionError: an object fails its check (named with its pack and
            the remote); objects checked before it stay, nothing unchecked is stored.
    """
    remote = view.remote
    by_pack: dict[str, list[IndexEntry]] = collections.defaultdict(list)
    seen: set[bytes] = set()
    for oid in oids:
        if oid in seen or store.has(oid) or oid not in view.objects:
            continue
        seen.add(oid)
        pack, entry = view.objects[oid]
        by_pack[pack].append(entry)
    if not by_pack:
        return 0, 0
    jobs = [(pack, span) for pack, entries in sorted(by_pack.items()) for span in _spans(entries)]
    if progress is not None:
        progress.start(sum(e.length for es in by_pack.values() for e in es), "fetching")

    def read(pack: str, span: list[IndexEntry]) -> list[tuple[IndexEntry, bytes]]:
        start = span[0].offset
        length = span[-1].offset + span[-1].length - start
        key = pack_key(pack)
        data = remote.get_range(key, start, length) if remote.ranged else remote.get(key)
        if not remote.ranged:
            data = data[start : start + length]
        out = []
        for e in span:
            blob = data[e.offset - start : e.offset - start + e.length]
            label = what.get(e.id, e.kind) if what else e.kind
            where = f"object {e.id.hex()[:12]} ({label}) in pack {pack[:12]} of {remote.url}"
            decode_object(e, blob, where, damaged=RemoteCorruptionError)
            out.append((e, bytes(blob)))
        return out

    writer = store.writer(None, compress=False)
    stored = received = 0
    try:
        with ThreadPoolExecutor(
            DOWNLOAD_THREADS, thread_name_prefix="ledger-fetch", initializer=block_signals
        ) as pool:
            window: collections.deque[Future[list[tuple[IndexEntry, bytes]]]] = collections.deque()
            pending = iter(jobs)
            for pack, span in pending:
                window.append(pool.submit(read, pack, span))
                if len(window) >= 2 * DOWNLOAD_THREADS:
                    break
            while window:
                for entry, blob in window.popleft().result():
                    writer.put_encoded(entry, blob)
                    stored += 1
                    received += len(blob)
                    if progress is not None:
                        progress.advance(len(blob))
                nxt = next(pending, None)
                if nxt is not None:
                    window.append(pool.submit(read, *nxt))
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    return stored, received


# -- uploading ------------------------------------------------------------------


@dataclass
class UploadStats:
    """What an upload sent."""

    packs: list[PackRecord] = field(default_factory=list)
    objects: int = 0
    chunks: int = 0
    bytes_sent: int = 0
    bytes_resumed: int = 0
    temp_files: list[Path] = field(default_factory=list)


def _local_encoded(store: ObjectStore, oid: bytes, what: str) -> tuple[IndexEntry, bytes]:
    found = store.locate(oid)
    if found is None:
        raise ObjectMissingError(f"object {oid.hex()[:12]} ({what}) is missing from the store")
    pack, entry = found
    blob = store.read_encoded(pack, entry)
    try:
        decode_object(entry, blob, f"local object {oid.hex()[:12]} ({what})")
    except CorruptionError as e:
        raise CorruptionError(f"{e} (nothing was pushed)", **e.fields) from None
    return entry, blob


def upload(
    store: ObjectStore,
    remote: Remote,
    objects: list[tuple[bytes, str]],
    pool: ThreadPoolExecutor,
    *,
    target: int,
    keep_files: bool,
    progress: Progress | None = None,
) -> UploadStats:
    """Pack ``objects`` (id, what) in order and store each pack on the remote unless it is there.

    Local objects are re-checked (hash) before they leave. A pack already on the
    remote (same name, so same bytes: an interrupted push being resumed) is not
    sent again. ``keep_files`` keeps the temporary packs (the Hub uploads them at
    commit time); the caller deletes ``stats.temp_files``.
    """
    stats = UploadStats()
    builder = PackBuilder(store.tmp_dir, target)
    if progress is not None and objects:
        sizes = (store.locate(oid) for oid, _ in objects)
        progress.start(sum(f[1].length for f in sizes if f is not None), "pushing")

    def send(record: PackRecord, path: Path) -> None:
        key = pack_key(record.name)
        stats.packs.append(record)
        if remote.exists(key):
            stats.bytes_resumed += record.size
        else:
            remote.put(key, path)
            stats.bytes_sent += record.size
        if keep_files:
            stats.temp_files.append(path)
        else:
            path.unlink()

    window: collections.deque[Future[tuple[IndexEntry, bytes]]] = collections.deque()
    todo = iter(objects)
    try:
        for oid, what in todo:
            window.append(pool.submit(_local_encoded, store, oid, what))
            if len(window) >= 16:
                break
        while window:
            entry, blob = window.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                window.append(pool.submit(_local_encoded, store, *nxt))
            stats.objects += 1
            stats.chunks += entry.kind == "chunk"
            sealed = builder.add(entry, blob)
            if sealed is not None:
                send(*sealed)
            if progress is not None:
                progress.advance(len(blob))
        last = builder.seal()
        if last is not None:
            send(*last)
    except BaseException:
        for fut in window:
            fut.cancel()
        builder.discard()
        for path in stats.temp_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        raise
    return stats
