"""Hostile or damaged input stays bounded: record caps, bounded reads, crafted manifests.

Crafted packs are built with the store's own pack writer (``PackFile``) and
then given lies (a declared size); crafted manifests are encoded with the
manifest's own records. Peak memory is measured with ``tracemalloc`` (every
Python allocation, touched or not), never with timings.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from helpers import run_cli

from ledger import Ledger
from ledger.errors import CorruptionError, LedgerError, RecordTooLargeError, UnsupportedValueError
from ledger.history.records import CommitRecord, msgpack_encoder
from ledger.manifest import MAX_DEPTH, DictNode, ListNode, Manifest, TensorNode
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


def _nested(depth: int) -> bytes:
    """A manifest whose root holds lists nested ``depth`` deep (encoded by hand: msgspec
    itself refuses to encode so deep a tree)."""
    leaf = msgspec.msgpack.encode(ListNode([]))
    head = msgspec.msgpack.encode(Manifest(2, 4096, DictNode(["deep"], [ListNode([])])))
    return head.replace(leaf, b"\x82\xa4type\xa4list\xa5items\x91" * depth + leaf, 1)


def _crafted_commit(lg: Ledger, manifest: bytes, branch: str) -> str:
    """A commit on a new ``branch`` whose manifest object is ``manifest``; its id."""
    w = lg.store.writer(None)
    mid = w.put("manifest", manifest)
    rec = CommitRecord(manifest=mid, parents=[], time=dt.datetime.now(dt.timezone.utc))
    cid = w.put("commit", msgpack_encoder.encode(rec))
    w.finish()
    lg.refs.update({f"refs/heads/{branch}": (None, cid)}, "test crafted")
    return cid


CHUNK = "00" * 32
CRAFTED = {
    "chunk-size-0": lambda: msgspec.msgpack.encode(
        Manifest(2, 0, DictNode(["w"], [TensorNode("float32", [4], 16, [CHUNK])]))
    ),
    "2^45-bytes": lambda: msgspec.msgpack.encode(
        Manifest(2, 1 << 45, DictNode(["w"], [TensorNode("float32", [1 << 43], 1 << 45, [CHUNK])]))
    ),
    "2^45-bytes-few-chunks": lambda: msgspec.msgpack.encode(
        Manifest(2, 4096, DictNode(["w"], [TensorNode("float32", [1 << 43], 1 << 45, [CHUNK])]))
    ),
    "nested-100000": lambda: _nested(100_000),
}


@pytest.mark.parametrize("kind", sorted(CRAFTED))
def test_a_crafted_manifest_is_corruption_named_by_commit_in_every_command(
    tmp_path: Path, kind: str
) -> None:
    root = tmp_path / "lg"
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"a": [1]}, rng=False)
        cid = _crafted_commit(lg, CRAFTED[kind](), "bad")
        with pytest.raises(CorruptionError, match=f"commit {cid[:12]}"):
            lg.checkout("bad")
        with pytest.raises(CorruptionError, match=f"commit {cid[:12]}"):
            lg.manifest("bad")
        report = lg.verify()
        assert not report.ok and any(cid[:12] in p for p in report.problems), report.problems
        with pytest.raises(LedgerError, match=cid[:12]):
            lg.gc()
        assert lg.checkout("main") == {"a": [1]}
    shown = run_cli("--dir", root, "show", "bad")
    assert shown.exit_code == 3 and cid[:12] in shown.output, shown.output
    assert "Traceback" not in shown.output


def test_a_state_nested_deeper_than_a_manifest_may_be_is_refused_and_the_deepest_allowed_round_trips(
    tmp_path: Path,
) -> None:
    def nested(depth: int) -> dict[str, object]:
        state: dict[str, object] = {"leaf": 1}
        for _ in range(depth - 2):  # the root dict and the leaf value are levels too
            state = {"k": state}
        return state

    with Ledger.open(tmp_path / "lg", create=True, fsync=False) as lg:
        deepest = nested(MAX_DEPTH)
        lg.commit(deepest, rng=False)
        assert lg.checkout("HEAD") == deepest
        with pytest.raises(UnsupportedValueError, match="deeper than"):
            lg.commit(nested(MAX_DEPTH + 1), rng=False)
