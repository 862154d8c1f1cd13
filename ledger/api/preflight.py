"""A commit that cannot fit on the disk is refused before it writes anything.

This module owns the commit's free-space preflight (:func:`check_commit_space`),
run by ``Ledger.commit`` (blocking or in the background) under the stage's gc
lock, right before the first byte is written, and the same check for a
stage's parts (:func:`check_part_space`, run by ``Stage.write``: each rank's
share of a multi-process commit). The bound it checks is an upper
bound of what the commit may add to the ledger's disk:

- every chunk not known to be stored, at its raw size (a codec keeps an
  encoding only when it is smaller) laid out in packs as the writer lays
  them out (``packs.packed_size``: index and footer included);
- the manifest, the commit record and the package list, at their encoded
  size (the package list not at all when it is already stored);
- a new copy of the ref view (it is rewritten whole), and a margin for the
  event and for file-system blocks.

"Known to be stored" costs nothing in the common case: the bound is first
taken with every chunk counted, and only when that does not fit are the
chunks fingerprinted (the xxh3 this process remembers, else blake3) and
those the store has dropped from it. An unchanged re-commit therefore
costs only its metadata, and is never refused on an almost-full disk
(with ``trust_versions`` its unchanged tensors are not even read). It never
writes, and it decides nothing about what the commit stores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import xxhash

from ledger.errors import DiskFullError
from ledger.history.records import FORMAT_VERSION, msgpack_encoder
from ledger.interop.space import MARGIN, free_bytes, human_size
from ledger.manifest import Manifest
from ledger.objects.direct import BLOCK
from ledger.objects.hashing import HEX_LEN, hash_bytes
from ledger.objects.packs import IndexEntry, packed_size
from ledger.objects.store import ObjectStore
from ledger.objects.writer import DEFAULT_MAX_PACK_BYTES

if TYPE_CHECKING:
    from ledger.api.staging import Draft
    from ledger.state.flatten import Flattener

#: What a chunk id adds to the manifest: a 64-character msgpack string.
CHUNK_ID_BYTES = HEX_LEN + 2
#: The commit record's fixed fields: format, manifest and parent ids, time, step, stats.
RECORD_SLACK = 1 << 10
_NO_ID = bytes(32)
#: The ref view, rewritten whole (through a temporary copy) after each commit.
REF_VIEW = "refs"


def _stored(store: ObjectStore, data: memoryview) -> bool:
    """Whether the chunk ``data`` is already stored (its fingerprint is in the store)."""
    key = xxhash.xxh3_128_digest(data) + len(data).to_bytes(8, "little")
    known = store.recent.get(key)
    if known is not None and store.has(known):
        return True
    oid = hash_bytes(data)
    store.remember(key, oid)  # the writer then skips the blake3 of this chunk
    return store.has(oid)


def _packs(sizes: list[int]) -> int:
    """Bytes of the packs holding objects of ``sizes`` raw bytes, plus two blocks per pack
    (file-system rounding, and a direct write's padded tail)."""
    entries = [IndexEntry(_NO_ID, "chunk", "bgzstd", 0, n, n) for n in sizes]
    packs = 1 + sum(sizes) // DEFAULT_MAX_PACK_BYTES
    return packed_size(entries, DEFAULT_MAX_PACK_BYTES) + packs * 2 * BLOCK


def _metadata_bytes(draft: Draft, store: ObjectStore, chunks: int) -> list[int]:
    """Upper bounds of the manifest, the commit record and (when new) the package list."""
    manifest = Manifest(format=FORMAT_VERSION, chunk_size=draft.flat.chunk_size, root=draft.root)
    # the record's free-form fields; the fixed ones (ids, time, stats) fit in RECORD_SLACK
    free_form = (draft.branch, draft.message, draft.metrics, draft.params, draft.meta)
    sizes = [
        len(msgpack_encoder.encode(manifest)) + chunks * CHUNK_ID_BYTES,
        len(msgpack_encoder.encode(free_form)) + RECORD_SLACK,
    ]
    if not store.has(hash_bytes(draft.packages)):
        sizes.append(len(draft.packages))
    return sizes


def commit_bound(
    draft: Draft,
    store: ObjectStore,
    *,
    skip_stored: bool = False,
    pool: ThreadPoolExecutor | None = None,
) -> int:
    """An upper bound of the bytes writing ``draft`` may add to the ledger's disk.

    Args:
        draft: the prepared commit (its chunks not yet assigned).
        store: the ledger's object store.
        skip_stored: fingerprint every chunk and leave out those already stored
            (reads all of the state's bytes once; else every chunk is counted).
        pool: threads to fingerprint on.

    Example:
        >>> commit_bound(draft, lg.store)  # doctest: +SKIP
        2457600
    """
    return chunks_bound(
        draft.flat,
        store,
        skip_stored=skip_stored,
        pool=pool,
        metadata=lambda n: _metadata_bytes(draft, store, n),
    )


def chunks_bound(
    flat: Flattener,
    store: ObjectStore,
    *,
    skip_stored: bool = False,
    pool: ThreadPoolExecutor | None = None,
    metadata: Callable[[int], list[int]] | None = None,
) -> int:
    """An upper bound of the bytes storing ``flat``'s chunks may add (a stage's part:
    no manifest or record; ``metadata(chunks)`` adds a commit's records to the bound).

    Example:
        >>> chunks_bound(flat, lg.store)  # doctest: +SKIP
        1228800
    """
    pieces = [data for data, _ in flat.chunks()]
    if skip_stored and pieces:
        mapper = pool.map if pool is not None else map
        known = list(mapper(lambda d: _stored(store, d), pieces))
        pieces = [d for d, stored in zip(pieces, known, strict=True) if not stored]
    chunks = sum(
        len(job.reuse) if job.reuse is not None else -(-len(job.data) // flat.chunk_size)
        for job in flat.jobs
    )
    sizes = [len(d) for d in pieces] + (metadata(chunks) if metadata is not None else [])
    view = 0
    with contextlib.suppress(OSError):
        view = (store.root / REF_VIEW).stat().st_size
    return _packs(sizes) + view + MARGIN


def check_commit_space(
    draft: Draft, store: ObjectStore, pool: ThreadPoolExecutor | None = None
) -> None:
    """Refuse ``draft`` with a :class:`DiskFullError` when it may not fit on the ledger's disk.

    Call it under the stage's gc lock, after the store re-read its packs.

    Raises:
        DiskFullError: the bound (chunks not stored yet, plus metadata) is over the
            free space; nothing was written.

    Example:
        >>> check_commit_space(draft, lg.store)  # doctest: +SKIP
    """
    draft.flat.check_reused()  # chunks a gc in another process took count again
    _check(
        lambda skip: commit_bound(draft, store, skip_stored=skip, pool=pool),
        store,
        "the commit",
        "its tensors' bytes not stored yet, plus metadata",
    )


def check_part_space(flat: Flattener, store: ObjectStore) -> None:
    """Refuse a stage's part (``Stage.write``, one rank's share of a commit) with a
    :class:`DiskFullError` when its chunks may not fit; nothing is written then.

    Example:
        >>> check_part_space(flat, lg.store)  # doctest: +SKIP
    """
    _check(
        lambda skip: chunks_bound(flat, store, skip_stored=skip),
        store,
        "this part of the commit",
        "its tensors' bytes not stored yet",
    )


def _check(bound: Callable[[bool], int], store: ObjectStore, what: str, of: str) -> None:
    free = free_bytes(store.root)
    if bound(False) <= free:
        return
    needed = bound(True)
    if needed <= free:
        return
    raise DiskFullError(
        f"{what} needs up to {human_size(needed)} at {store.root} ({of}) but only "
        f"{human_size(free)} is free there; nothing was written: free some space "
        "(ledger gc) or commit to a ledger on another disk",
        path=str(store.root),
    )
