"""Hostile or damaged input stays bounded: record caps, bounded reads, crafted manifests.

Crafted packs are built with the store's own pack writer (``PackFile``) and
then given lies (a declared size); crafted manifests are encoded with the
manifest's own records. Peak memory is measured with ``tracemalloc`` (every
Python allocation, touched or not), never with timings.
"""

from __future__ import annotations

import contextlib
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from ledger import Ledger
from ledger.errors import CorruptionError, LedgerError, RecordTooLargeError
from ledger.manifest import DictNode, Manifest, TensorNode
from ledger.objects.hashing import hash_bytes
from ledger.objects.packs import MAX_RECORD_BYTES, PackFile

MiB = 1 << 20


def _crafted_pack(root: Path, kind: str, raw_length: int, blob: bytes) -> bytes:
    """A well-formed pack (name = hash of its index) whose one object declares ``raw_length``."""
    oid = hash_bytes(b"what the attacker claims")
    fh = io.BytesIO()
    pack = PackFile(fh)
    pack.add(oid, kind, "zstd", blob, raw_length)
    name, _ = pack.seal()
    (root / "objects" / "packs" / f"{name}.pack").write_bytes(fh.getvalue())
    return oid


def _peak_while(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with contextlib.suppress(LedgerError):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_small_pack_declaring_a_huge_commit_allocates_nothing_and_is_named(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lg"
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"a": [1]}, rng=False)
    blob = b"\x28\xb5\x2f\xfd" + os.urandom(33_000)  # 33 KB that claim to be 1 GiB
    oid = _crafted_pack(root, "commit", 1 << 30, blob)
    with Ledger.open(root) as lg:
        with pytest.raises(CorruptionError, match=oid.hex()[:12]):
            lg.record(oid.hex())
        assert _peak_while(lambda: lg.record(oid.hex())) < 16 * MiB
        report = lg.verify()
        assert not report.ok and any("damaged" in p for p in report.problems)
        assert lg.checkout("HEAD") == {"a": [1]}  # the rest works


def test_writers_refuse_a_record_over_its_cap(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "lg", create=True, fsync=False) as lg:
        w = lg.store.writer(None)
        with pytest.raises(RecordTooLargeError, match="64 MiB"):
            w.put("commit", bytes(MAX_RECORD_BYTES["commit"] + 1))
        w.put("commit", bytes(1024))  # the writer still works
        w.finish()


def test_the_manifest_cap_leaves_room_for_a_100_000_tensor_state() -> None:
    chunk = "ab" * 32
    nodes = [TensorNode("float32", [1024, 1024], 4 * MiB, [chunk], id=i) for i in range(100_000)]
    keys: list[str | int] = [f"model.layers.{i}.mlp.weight" for i in range(100_000)]
    data = msgspec.msgpack.encode(Manifest(2, 4 * MiB, DictNode(keys, list(nodes))))
    assert len(data) * 10 < MAX_RECORD_BYTES["manifest"]


def test_a_ref_view_that_never_ends_is_read_only_up_to_its_cap(tmp_path: Path) -> None:
    root = tmp_path / "lg"
    with Ledger.open(root, create=True, fsync=False) as lg:
        c = lg.commit({"a": [1]}, rng=False)
    (root / "refs").unlink()
    os.symlink("/dev/zero", root / "refs")
    with Ledger.open(root) as lg:
        assert lg.get("main").id == c.id  # replayed from the log, the view ignored
