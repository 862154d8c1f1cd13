"""The merged pack index and compaction: every object stays readable, the index stays exact.

* the merged index answers exactly what the packs' own indexes say, for any
  sequence of commits, compactions and gcs (a hypothesis property);
* a damaged merged index is set aside, never trusted: every pack is read from
  its own index and the ledger stays whole;
* a reader that still holds the pack list from before a compaction (another
  process) finds every object after the packs it knew vanished;
* a SIGKILL at any moment of a compaction (tests/scripts/compact_loop.py)
  leaves every returned commit restorable and the merged index exact.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, load_script, start_ready
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import Ledger
from ledger.errors import CorruptionError
from ledger.objects.codecs import CODEC_NAMES
from ledger.objects.compact import COMPACT_PACKS, rollup
from ledger.objects.lookup import PackTable
from ledger.objects.midx import MIDX_NAME, PY_SEARCHES, MergedIndex, encode_midx
from ledger.objects.packs import IndexEntry, read_pack_index
from ledger.retention import KeepLast

gs = load_script("gc_state")


def packs_on_disk(root: Path) -> dict[str, set[tuple[object, ...]]]:
    """Each pack's own index, read from its file: name -> its entries as tuples."""
    out = {}
    for path in sorted((root / "objects" / "packs").glob("*.pack")):
        out[path.stem] = {_fields(e) for e in read_pack_index(path)}
    return out


def _fields(e: object) -> tuple[object, ...]:
    return tuple(getattr(e, f) for f in e.__struct_fields__)  # type: ignore[attr-defined]


def assert_index_exact(lg: Ledger) -> None:
    """The merged index holds exactly the entries of the packs it covers that are on disk,
    and every object of every pack reads back hash-checked."""
    disk = packs_on_disk(lg.root)
    midx_path = lg.root / "objects" / MIDX_NAME
    if midx_path.exists():
        midx = MergedIndex.read(midx_path)
        merged: dict[str, set[tuple[object, ...]]] = {}
        for pack, entry in midx.entries():
            merged.setdefault(pack, set()).add(_fields(entry))
        for pack in midx.packs:
            if pack in disk:
                assert merged.get(pack, set()) == disk[pack], pack[:12]
    lg.refresh()
    for entries in disk.values():
        for e in entries:
            oid, kind, raw_length = e[0], e[1], e[5]
            assert isinstance(oid, bytes)
            assert len(lg.store.read(oid, str(kind))) == raw_length


def test_compaction_leaves_one_pack_that_a_fresh_open_indexes_without_reading_packs(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=256).id for i in range(COMPACT_PACKS - 1)]
        assert len(lg.store.pack_names()) == COMPACT_PACKS - 1  # not due yet
        report = lg.compact()
        assert (report.packs_merged, report.packs_after) == (COMPACT_PACKS - 1, 1)
        assert_index_exact(lg)
    with Ledger.open(ledger_dir) as lg:
        assert lg.store.pack_names() == sorted(lg.store.covered_packs())
        assert lg.store.index_bytes() <= 64 * 4 * len(ids) + 4096
        for i, cid in enumerate(ids):
            assert lg.resolve(cid[:10]) == cid
            assert lg.checkout(cid)["meta"]["i"] == i
        assert lg.verify(full=True).ok


def test_commits_compact_in_the_background_once_enough_packs_piled_up(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        for i in range(COMPACT_PACKS + 5):
            gs.commit_state(lg, 1, i, n=256)
        lg._join_compaction()
        assert len(lg.store.pack_names()) < COMPACT_PACKS
        assert lg.store.covered_packs()
        assert_index_exact(lg)


def test_a_damaged_merged_index_is_set_aside_and_every_pack_read_from_its_own_index(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        ids = [gs.commit_state(lg, 1, i, n=256).id for i in range(4)]
        lg.compact()
        gs.commit_state(lg, 1, 4, n=256)
    path = ledger_dir / "objects" / MIDX_NAME
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptionError, match="does not match its hash"):
        MergedIndex.read(path)
    with Ledger.open(ledger_dir) as lg:
        assert lg.store.midx_error is not None and "hash" in lg.store.midx_error
        assert not lg.store.covered_packs() and len(lg.store.pack_names()) == 2
        assert [lg.checkout(c)["meta"]["i"] for c in ids] == [0, 1, 2, 3]
        assert lg.verify(full=True).ok
        lg.compact()  # writes a good one again
        assert lg.store.midx_error is None and lg.store.covered_packs()


def test_a_reader_holding_the_old_pack_list_finds_every_object_after_a_compaction(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as writer:
        ids = [gs.commit_state(writer, 1, i, n=256).id for i in range(6)]
        with Ledger.open(ledger_dir) as reader:
            before = reader.store.pack_names()
            writer.compact()
            assert not set(before) & set(writer.store.pack_names())
            assert reader.store.pack_names() == before  # it has not looked yet
            for i, cid in enumerate(ids):
                assert reader.checkout(cid)["meta"]["i"] == i
            assert reader.store.pack_names() == writer.store.pack_names()


def test_rollup_keeps_the_small_packs_a_geometric_progression() -> None:
    assert rollup({"a": 10, "b": 10, "c": 10, "big": 1000}) == ["a", "b", "c"]
    assert rollup({"a": 1, "b": 2, "c": 4}) == []
    # merging the small ones would outgrow the next: it joins them
    assert rollup({"a": 5, "b": 5, "c": 12, "d": 100}) == ["a", "b", "c"]


OPS = st.lists(
    st.sampled_from(["commit", "commit", "commit-side", "compact", "gc", "expire-old"]),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS)
def test_after_any_commits_compactions_and_gcs_every_object_reads_and_the_index_is_exact(
    tmp_path_factory: pytest.TempPathFactory, ops: list[str]
) -> None:
    root = tmp_path_factory.mktemp("prop") / "ledger"
    with Ledger.open(root, create=True, fsync=False, chunk_size=4096) as lg:
        lg.set_retention(KeepLast(2))
        kept: dict[str, int] = {}
        for i, op in enumerate(["commit", *ops]):
            if op == "commit":
                kept[gs.commit_state(lg, 2, i, n=1024).id] = i
            elif op == "commit-side":
                gs.commit_state(lg, 2, i, n=1024, branch="side")
            elif op == "compact":
                report = lg.compact()
                assert set(lg.store.pack_names()) == lg.store.covered_packs()
                assert report.packs_after == len(lg.store.pack_names())
            elif op == "gc":
                lg.gc(grace=0)
            else:
                lg.expire("HEAD")
            assert_index_exact(lg)
        assert lg.verify(full=True).ok
        head = lg.resolve("main")
        if head not in lg.expired():
            assert lg.checkout(head)["meta"]["i"] == kept[head]
    with Ledger.open(root) as fresh:
        assert_index_exact(fresh)
        assert fresh.verify(full=True).ok


def test_sigkill_during_compaction_loses_no_commit_and_leaves_the_index_exact(
    ledger_dir: Path,
) -> None:
    rng = random.Random(20261203)
    Ledger.open(ledger_dir, create=True, fsync=True).close()
    made: dict[str, tuple[int, int]] = {}
    kills_in_compaction = 0
    for run in range(1, 6):
        proc = start_ready(SCRIPTS / "compact_loop.py", ledger_dir, run, "--slow", "0.03")
        assert proc.stdout is not None
        starts = rng.randint(1, 3)
        seen: list[str] = []
        while starts:
            line = proc.stdout.readline()
            assert line, "".join(seen)
            seen.append(line)
            starts -= line == "compact start\n"
        time.sleep(rng.uniform(0.0, 0.08))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, out[-2000:]
        lines = [x.strip() for x in (*seen, *out.split("\n")[:-1]) if x.strip()]
        kills_in_compaction += lines[-1] == "compact start"
        count = 0
        for line in lines:
            if line.startswith("commit "):
                made[line.split()[1]] = (run, count)
                count += 1
        with Ledger.open(ledger_dir, fsync=False) as lg:
            assert lg.verify(full=True).ok
            assert_index_exact(lg)
            for cid, (r, i) in made.items():
                tree = lg.checkout(cid)
                assert tree["meta"] == gs.make_state(r, i, n=256)["meta"]
                assert torch.equal(tree["unique"], gs.make_state(r, i, n=256)["unique"])
    assert kills_in_compaction >= 1


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_codec_a_writer_may_use_has_a_number_in_the_merged_index(codec: str) -> None:
    # A codec added to the writers but not to the merged index made compaction
    # fail on the first pack that held it.
    entry = IndexEntry(bytes(range(32)), "chunk", codec, 8, 400 if codec == "raw" else 100, 400)
    merged = MergedIndex(encode_midx({"ab" * 32: [entry]}))
    assert merged.lookup(entry.id) == [("ab" * 32, entry)]


def test_a_lookup_after_a_new_merged_index_never_names_a_pack_the_old_one_covered() -> None:
    """Found by the property test above: the last lookup was cached with its pack, and a
    new merged index that no longer covers that pack took it off the "gone" list, so
    the cache answered with a deleted pack."""
    oid = b"x" * 32
    entry = IndexEntry(oid, "chunk", "raw", 8, 4, 4)
    old_pack, new_pack = "aa" * 32, "bb" * 32
    table = PackTable()
    table.set_midx(MergedIndex.build({old_pack: [entry]}))
    assert table.find(oid) == (old_pack, entry)
    table.forget([old_pack])  # compaction deleted it...
    table.set_midx(MergedIndex.build({new_pack: [entry]}))  # ...after indexing its copy
    assert table.find(oid) == (new_pack, entry)
    table.set_midx(MergedIndex.build({old_pack: [entry], new_pack: [entry]}))
    assert table.find(oid) is not None
    table.forget([old_pack, new_pack])
    assert table.find(oid) is None


def test_lookups_find_the_same_before_and_after_the_id_column_is_copied() -> None:
    """The first PY_SEARCHES searches of a group bisect the records in place, later ones
    search a numpy copy of the ids: both must give every id and refuse absent ones."""
    rng = random.Random(4)
    ids = sorted({rng.randbytes(32) for _ in range(300)})
    entries = [IndexEntry(oid, "commit", "raw", 8 + i, 4, 4) for i, oid in enumerate(ids)]
    idx = MergedIndex.build({"aa" * 32: entries})
    absent = [rng.randbytes(32) for _ in range(50)]
    for round_ in range(2):  # 350 searches a round: the copy is made during the first
        for i, oid in enumerate(ids):
            assert [e.offset for _, e in idx.lookup(oid)] == [8 + i], (round_, i)
        assert all(idx.lookup(oid) == [] for oid in absent)
    assert idx._groups["commit"]._sorted is not None
    assert len(ids) + len(absent) > PY_SEARCHES
