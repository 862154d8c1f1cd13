"""Garbage collection (issue 5, design invariant 4): what gc frees, what it must never touch.

* ``gc(dry_run=True)`` changes nothing (the directory is byte-identical) and
  reports exactly what the real run then does;
* ``objects_freed`` / ``bytes_freed`` are what really left the disk;
  unreachable commits (a force-deleted branch) are swept whole;
* packs younger than the grace period are never touched (default from the
  ledger config; ``grace=0`` allowed); packs that are mostly dead, or whose
  live part is small, are rewritten so the bytes come back; others are left;
* gc fails closed: a damaged record or manifest stops it before it expires
  or deletes anything;
* a full disk during gc's pack rewrite (or its expiry event) is a
  ``DiskFullError`` that loses no live object and leaves the ledger usable;
* concurrency: two processes commit to two branches while a third runs
  gc(grace=0) in a loop; a race on one branch gives one writer a
  ``RefConflictError`` and loses no commit; a commit that reuses an old,
  unreferenced chunk is safe against a concurrent gc (the gc lock: gc waits
  for the commit, or the commit waits for gc and writes the chunk anew).
"""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from helpers import (
    SCRIPTS,
    FullFile,
    dir_bytes,
    enospc,
    fd_path,
    finish,
    flip_stored_byte,
    load_script,
    object_ids,
    pack_ids,
    start_ready,
    tree_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import ledger.history.gc as gc_mod
import ledger.history.needs as needs_mod
import ledger.objects.writer as writer_mod
from ledger import Ledger, LedgerError
from ledger.errors import (
    CommitExpiredError,
    CorruptionError,
    DiskFullError,
    RefConflictError,
    RevisionNotFoundError,
    StalePlanError,
)
from ledger.history.records import Commit, Expire
from ledger.history.tree import chunk_ids
from ledger.objects import direct
from ledger.objects.packs import FOOTER_MAGIC, IndexEntry, PackFile, packed_size
from ledger.retention import KeepEvery, KeepLast

gs = load_script("gc_state")
N = 4096  # float32 per tensor: 16 KiB, four 4 KiB chunks


def commit(lg: Ledger, run: int, i: int, branch: str | None = None) -> Commit:
    """Commit state ``(run, i)`` with step ``i``."""
    return gs.commit_state(lg, run, i, N, branch=branch)


def restores(lg: Ledger, cid: str) -> bool:
    """Whether ``cid`` checks out bit-exactly to the state its message names."""
    return gs.restores(lg, cid, N)


def packs_dir(root: Path) -> Path:
    return root / "objects" / "packs"


def packs_size(root: Path) -> int:
    """Bytes of every pack file."""
    return dir_bytes(packs_dir(root))


def age_packs(root: Path, seconds: float) -> None:
    """Make every pack look ``seconds`` old."""
    when = time.time() - seconds
    for p in packs_dir(root).iterdir():
        os.utime(p, (when, when))


def check_branch(lg: Ledger, branch: str) -> tuple[int, int]:
    """Every commit in the branch's log restores bit-exactly or is expired; (kept, expired)."""
    expired = lg.refs.state().expired
    kept = gone = 0
    for c in lg.log(branch):
        if c.id in expired:
            with pytest.raises(CommitExpiredError):
                lg.checkout(c.id)
            gone += 1
        else:
            assert restores(lg, c.id), f"{branch}: commit {c.id[:12]} ({c.message}) differs"
            kept += 1
    return kept, gone


def kept_chunks(lg: Ledger) -> set[bytes]:
    """Chunks every reachable, unexpired commit needs (from their manifests)."""
    state = lg.refs.state()
    out: set[bytes] = set()
    for cid in gc_mod.reachable_commits(lg, state.refs):
        if cid not in state.expired:
            out |= {bytes.fromhex(c) for c in chunk_ids(lg.manifest(cid)[1].root)}
    return out


# -- dry run, reports, sweeping ---------------------------------------------------------------


def busy_ledger(lg: Ledger) -> dict[str, Commit]:
    """A ledger with something for gc to do: policy expiry, a hand expiry, a deleted branch."""
    made = {f"m{i}": commit(lg, 1, i) for i in range(8)}
    made |= {f"x{i}": commit(lg, 2, i, branch="x") for i in range(3)}
    lg.delete_branch("x", force=True)
    lg.expire(made["m6"].id, reason="by hand")
    lg.set_retention(KeepLast(2), KeepEvery(3))
    return made


def test_dry_run_changes_nothing_and_predicts_the_real_run(small: Ledger) -> None:
    busy_ledger(small)
    before = tree_bytes(small.root)
    dry = small.gc(dry_run=True, grace=0)
    assert tree_bytes(small.root) == before, "a dry run changed the ledger directory"
    assert dry.dry_run and dry.expired and dry.objects_freed and dry.bytes_freed > 0
    real = small.gc(grace=0)
    assert not real.dry_run
    for field in (
        "expired",
        "objects_freed",
        "bytes_freed",
        "packs_deleted",
        "packs_rewritten",
        "objects_kept",
        "skipped_young_packs",
    ):
        assert getattr(dry, field) == getattr(real, field), field


def plan_now(lg: Ledger, grace: float = 0) -> gc_mod.GcPlan:
    """A gc plan made the way ``Ledger.gc`` makes one (under the gc lock)."""
    with lg.gc_lock.hold(shared=False):
        return gc_mod.plan_gc(lg, lg.store, lg.refs, policies_for=lg.retention, grace=grace)


def execute_now(lg: Ledger, plan: gc_mod.GcPlan) -> gc_mod.GcReport:
    with lg.gc_lock.hold(shared=False):
        return gc_mod.execute(plan, lg.store, lg.refs)


def test_the_plan_names_exactly_what_the_real_gc_removes(small: Ledger) -> None:
    made = busy_ledger(small)
    (small.root / "objects" / "tmp" / ".crashed.pack").write_bytes(b"leftover")
    age_packs(small.root, 3600)
    os.utime(small.root / "objects" / "tmp" / ".crashed.pack", (time.time() - 60,) * 2)
    before, packs_before, ids_before = (
        tree_bytes(small.root),
        pack_ids(small.root),
        object_ids(small),
    )
    dry = small.gc(dry_run=True, grace=30)
    assert tree_bytes(small.root) == before, "a dry run changed the ledger directory"
    plan = dry.plan
    assert plan is not None
    assert plan.expire == {
        made[k].id: plan.expire[made[k].id] for k in ("m1", "m2", "m4", "m5")
    } and all("KeepLast(2)" in why for why in plan.expire.values())
    assert plan.temp_files == [".crashed.pack"] and plan.young_packs == []
    swept = {s.name for s in [*plan.delete, *plan.rewrite]}
    assert swept and plan.delete and plan.rewrite
    copied = {bytes.fromhex(oid) for s in plan.rewrite for oid in s.copy}
    size_before = packs_size(small.root)

    real = small.gc(grace=30)
    assert real.plan is not None
    assert msgspec.structs.replace(real.plan, cutoff=plan.cutoff) == plan
    assert real.expired == sorted(plan.expire) and set(small.refs.state().expired) >= set(
        plan.expire
    )
    assert packs_before - pack_ids(small.root) == swept
    assert not (small.root / "objects" / "tmp" / ".crashed.pack").exists()
    # The estimate is exact: the copies are laid out as the writer lays them out.
    assert real.bytes_freed == plan.bytes_freed == size_before - packs_size(small.root)
    ids_after = object_ids(small)
    assert copied <= ids_after and plan.objects_freed == real.objects_freed
    assert ids_after <= ids_before
    check_branch(small, "main")
    assert small.verify(full=True).ok


def test_the_estimate_is_exact_when_the_copies_fill_several_packs(
    small: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(6):
        commit(small, 1, i)
    small.set_retention(KeepLast(1))
    age_packs(small.root, 3600)
    monkeypatch.setattr(gc_mod, "REPACK_PACK_BYTES", 8 << 10)  # a new pack every ~two chunks
    packs_before = pack_ids(small.root)
    size_before = packs_size(small.root)
    plan = plan_now(small)
    assert sum(len(s.copy) for s in plan.rewrite) >= 4
    report = execute_now(small, plan)
    assert len(pack_ids(small.root) - packs_before) >= 2, "the copies should fill several packs"
    assert report.bytes_freed == plan.bytes_freed == size_before - packs_size(small.root)
    check_branch(small, "main")


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=0, max_value=3000), max_size=40),
    target=st.integers(min_value=1, max_value=20_000),
)
def test_packed_size_is_what_the_pack_files_take(lengths: list[int], target: int) -> None:
    """gc's estimate (packs.packed_size) against PackFile writing the same blobs, sealing at target."""
    entries, files, pack = [], [], None
    for i, n in enumerate(lengths):
        blob = bytes([i % 251]) * n
        oid = i.to_bytes(32, "little")
        entries.append(IndexEntry(oid, "chunk", "raw", 0, n, n))
        if pack is None:
            files.append(io.BytesIO())
            pack = PackFile(files[-1])
        pack.add(oid, "chunk", "raw", blob, n)
        if pack.layout.full(target):
            pack.seal()
            pack = None
    if pack is not None:
        pack.seal()
    assert packed_size(entries, target) == sum(len(f.getvalue()) for f in files)


def test_a_stale_plan_never_deletes_what_became_reachable(small: Ledger) -> None:
    doomed = reuse_setup(small)  # its packs an hour old, its branch gone: all garbage
    plan = plan_now(small, grace=60)
    assert plan.delete, "the deleted branch's packs should be planned for deletion"
    small.branch("revived", at=doomed.id)  # reachable again after the plan was made
    before = tree_bytes(small.root / "objects")
    with pytest.raises(StalePlanError, match="plan again"):
        execute_now(small, plan)
    assert tree_bytes(small.root / "objects") == before
    assert restores(small, doomed.id)
    # Planned afresh, gc keeps the revived commit.
    small.gc(grace=60)
    assert restores(small, doomed.id) and small.verify(full=True).ok


def test_a_stale_plan_refuses_a_pack_touched_since(small: Ledger) -> None:
    reuse_setup(small)
    plan = plan_now(small, grace=60)
    (victim, *_) = [*plan.delete, *plan.rewrite]
    os.utime(packs_dir(small.root) / f"{victim.name}.pack")  # rewritten: young again
    before = tree_bytes(small.root / "objects")
    with pytest.raises(StalePlanError, match=victim.name[:12]):
        execute_now(small, plan)
    assert tree_bytes(small.root / "objects") == before


def test_a_plan_survives_changes_that_only_drop_refs(small: Ledger) -> None:
    reuse_setup(small)
    small.branch("extra")
    plan = plan_now(small, grace=60)
    small.delete_branch("extra", force=True)  # reaches less: the plan stays safe
    report = execute_now(small, plan)
    assert report.packs_deleted + report.packs_rewritten > 0
    assert small.verify(full=True).ok and check_branch(small, "main")


def test_commit_needs_names_every_object_once(small: Ledger) -> None:
    first = commit(small, 1, 0)
    rec = small.record(first.id)
    needs = list(needs_mod.commit_needs(small, first.id, expired=False))
    kinds = [n.kind for n in needs]
    assert kinds[:3] == ["commit", "manifest", "blob"] and set(kinds[3:]) == {"chunk"}
    assert needs[1].id.hex() == rec.manifest
    assert needs[2].id.hex() == rec.meta["env"]["packages"]
    chunks = {n.id.hex() for n in needs[3:]}
    assert len(chunks) == len(needs) - 3 == len(chunk_ids(small.manifest(first.id)[1].root))
    assert all(f"in commit {first.id[:12]}" in n.what for n in needs[3:])
    assert [n.kind for n in needs_mod.commit_needs(small, first.id, expired=True)] == ["commit"]


def test_freed_counts_are_what_left_the_disk(small: Ledger) -> None:
    made = busy_ledger(small)
    ids_before, size_before = object_ids(small), packs_size(small.root)
    report = small.gc(grace=0)
    ids_after, size_after = object_ids(small), packs_size(small.root)
    assert report.bytes_freed == size_before - size_after > 0
    assert report.objects_freed == len(ids_before - ids_after) > 0
    assert ids_after <= ids_before
    assert report.packs_deleted + report.packs_rewritten > 0
    # Nothing is stored beyond what kept commits need (all packs here are small).
    assert set(small.store.ids("chunk")) == kept_chunks(small)
    assert report.expired == sorted(made[k].id for k in ("m1", "m2", "m4", "m5"))
    check_branch(small, "main")
    assert small.verify(full=True).ok


def test_unreachable_commits_are_swept_whole(small: Ledger) -> None:
    made = busy_ledger(small)
    small.set_retention()
    small.gc(grace=0)
    commits_left = {oid.hex() for oid in small.store.ids("commit")}
    for k in ("x0", "x1", "x2"):
        assert made[k].id not in commits_left
        with pytest.raises(RevisionNotFoundError):
            small.checkout(made[k].id)
    assert {made[f"m{i}"].id for i in range(8)} <= commits_left
    assert check_branch(small, "main") == (7, 1)  # m6 was expired by hand


def test_grace_protects_young_packs(small: Ledger, ledger_dir: Path) -> None:
    busy_ledger(small)
    n_packs = len(pack_ids(ledger_dir))
    assert small.config.gc_grace == 900.0  # 15 minutes by default
    before = tree_bytes(ledger_dir / "objects")
    report = small.gc()  # expiry happens, but every pack is younger than 15 minutes
    assert report.objects_freed == report.bytes_freed == 0
    assert report.skipped_young_packs == n_packs
    assert tree_bytes(ledger_dir / "objects") == before
    # Age half of the packs past the grace period: only those are swept.
    names = sorted(packs_dir(ledger_dir).iterdir())
    old, young = names[::2], names[1::2]
    when = time.time() - 901
    for p in old:
        os.utime(p, (when, when))
    young_bytes = {p.name: p.read_bytes() for p in young}
    report = small.gc()
    assert report.skipped_young_packs == len(young)
    assert report.objects_freed > 0
    for name, data in young_bytes.items():
        assert (packs_dir(ledger_dir) / name).read_bytes() == data, "a young pack was touched"
    # An explicit grace beats the configured one; grace=0 is allowed.
    assert small.gc(grace=3600).objects_freed == 0
    assert small.gc(grace=0).objects_freed > 0
    check_branch(small, "main")


def test_configured_grace_is_the_default(small: Ledger, ledger_dir: Path) -> None:
    busy_ledger(small)
    small.close()
    cfg = ledger_dir / "LEDGER"
    cfg.write_bytes(cfg.read_bytes().replace(b'"gc_grace": 900.0', b'"gc_grace": 30.0'))
    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert lg.config.gc_grace == 30.0
        assert lg.gc().objects_freed == 0
        age_packs(ledger_dir, 60)
        assert lg.gc().objects_freed > 0
        check_branch(lg, "main")


def live_and_dead_bytes(lg: Ledger, pack: str) -> tuple[int, int]:
    """(live, dead) stored bytes of one pack, as gc counts them."""
    state = lg.refs.state()
    live = gc_mod.live_objects(lg, gc_mod.reachable_commits(lg, state.refs), set(state.expired))
    entries = lg.store.pack_entries(pack)
    return (
        sum(e.length for e in entries if e.id in live),
        sum(e.length for e in entries if e.id not in live),
    )


def test_rewrite_rules(small: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pack with some dead objects is rewritten only when its live part is small."""
    # The first pack holds the shared tensor and pool 0 (live through later
    # commits), a unique tensor and the manifest (dead once the commit expires).
    first = commit(small, 1, 0)
    (first_pack,) = pack_ids(small.root)
    for i in range(1, 5):
        commit(small, 1, i)
    small.expire(first.id)
    live, dead = live_and_dead_bytes(small, first_pack)
    assert 0 < dead < live, "precondition: less than half of the pack is dead"
    # Live part above the bar: the pack stays as it is (dead bytes included).
    monkeypatch.setattr(gc_mod, "REPACK_SMALL_LIVE_BYTES", live - 1)
    before = tree_bytes(small.root / "objects")
    report = small.gc(grace=0)
    assert report.packs_rewritten == report.objects_freed == report.bytes_freed == 0
    assert tree_bytes(small.root / "objects") == before
    # Live part at or under the bar: copied into a new pack, the old one deleted.
    monkeypatch.setattr(gc_mod, "REPACK_SMALL_LIVE_BYTES", live)
    size = packs_size(small.root)
    report = small.gc(grace=0)
    assert first_pack not in pack_ids(small.root)
    assert report.packs_rewritten == 1 and report.objects_freed == 5  # 4 chunks + manifest
    assert report.bytes_freed == size - packs_size(small.root) >= dead
    check_branch(small, "main")
    assert small.verify(full=True).ok


def test_mostly_dead_pack_is_rewritten_even_when_large(
    small: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gc_mod, "REPACK_SMALL_LIVE_BYTES", 0)  # every live part is "large"
    first = commit(small, 1, 0)
    (first_pack,) = pack_ids(small.root)
    commit(small, 9, 1)  # shares only the "shared" tensor with the first commit
    small.expire(first.id)
    live, dead = live_and_dead_bytes(small, first_pack)
    assert dead / (live + dead) >= gc_mod.REPACK_DEAD_FRACTION
    size = packs_size(small.root)
    report = small.gc(grace=0)
    assert first_pack not in pack_ids(small.root)
    assert report.packs_rewritten == 1
    assert report.bytes_freed == size - packs_size(small.root) >= dead
    assert small.verify(full=True).ok
    assert restores(small, "HEAD")


# -- fail closed ------------------------------------------------------------------------------


def test_gc_refuses_to_sweep_when_a_manifest_is_damaged(small: Ledger) -> None:
    ids = [commit(small, 1, i) for i in range(4)]
    small.set_retention(KeepLast(2))  # keeps (and so needs the manifest of) commit 2
    flip_stored_byte(small, ids[2].manifest, at=3)
    small.close()
    with Ledger.open(small.root, fsync=False) as lg:
        age_packs(lg.root, 3600)
        before = tree_bytes(lg.root)
        with pytest.raises(CorruptionError) as info:
            lg.gc(grace=0)
        assert ids[2].id[:12] in str(info.value) and "verify" in str(info.value)
        # Nothing was expired, nothing deleted: the damaged commit's chunks may
        # still be wanted once its manifest is restored (e.g. from a remote).
        assert tree_bytes(lg.root) == before
        assert lg.verify().ok is False


def test_gc_refuses_to_sweep_when_a_record_hides_its_ancestors(small: Ledger) -> None:
    """Only a tag reaches these commits; a torn pack hides the middle record."""
    commit(small, 1, 0)
    small.branch("x")
    packs = [pack_ids(small.root)]
    xs = []
    for i in range(3):
        xs.append(commit(small, 2, i, branch="x"))
        packs.append(pack_ids(small.root))
    small.tag("t", at="x")
    small.delete_branch("x")
    middle = packs[2] - packs[1]
    (name,) = middle
    small.close()
    path = packs_dir(small.root) / f"{name}.pack"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with Ledger.open(small.root, fsync=False) as lg:
        age_packs(lg.root, 3600)
        before = tree_bytes(lg.root)
        with pytest.raises(CorruptionError, match=xs[1].id[:12]):
            lg.gc(grace=0)
        assert tree_bytes(lg.root) == before
        # The commit before the damage is intact, and stays so.
        assert restores(lg, xs[0].id)


# -- full disk during gc ----------------------------------------------------------------------


# Which write of gc's new pack fails: 1 is the header, then one write per copied
# object, and last the index + footer (ends with the footer magic).
REWRITE_FAILURES = {
    "header": lambda n, data: n == 1,
    "first-object": lambda n, data: n == 2,
    "mid-objects": lambda n, data: n == 5,
    "tail": lambda n, data: data.endswith(FOOTER_MAGIC),
}


# With O_DIRECT (one 4 KiB block per direct write here) the rewritten pack is two
# writes: the first block (header and first objects) and the plain tail.
REWRITE_CASES = [(where, "buffered") for where in [*REWRITE_FAILURES, "fsync"]] + [
    (where, "direct") for where in ["header", "tail", "fsync"]
]


@pytest.mark.parametrize(("where", "io"), REWRITE_CASES)
def test_full_disk_during_pack_rewrite(
    ledger_dir: Path, monkeypatch: pytest.MonkeyPatch, where: str, io: str
) -> None:
    if io == "buffered":
        monkeypatch.setenv("LEDGER_DIRECT_IO", "0")
    else:
        monkeypatch.setattr(direct, "BUFFER", direct.BLOCK)
    with Ledger.open(ledger_dir, create=True, fsync=True, chunk_size=4096) as lg:
        made = busy_ledger(lg)
        lg.gc()  # expire now (young packs: nothing freed) so the failing run only rewrites
        age_packs(ledger_dir, 3600)
        assert lg.gc(dry_run=True, grace=0).packs_rewritten >= 3
        names_before, refs_before = pack_ids(ledger_dir), lg.refs.state()
        calls = [0]
        with monkeypatch.context() as mp:
            if where == "fsync":
                real_fsync = os.fsync

                def fsync(fd: int) -> None:
                    if fd_path(fd).endswith(".pack"):
                        raise enospc()
                    real_fsync(fd)

                mp.setattr(os, "fsync", fsync)
            else:

                def full(data: Any) -> bool:
                    calls[0] += 1
                    return REWRITE_FAILURES[where](calls[0], bytes(data))

                def fake_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
                    f = open(path, mode, *a, **kw)  # noqa: SIM115 - closed through the wrapper
                    return FullFile(f, full) if "w" in mode else f

                mp.setattr(writer_mod, "open", fake_open, raising=False)
            with pytest.raises(DiskFullError) as info:
                lg.gc(grace=0)
        assert isinstance(info.value, LedgerError) and "disk is full" in str(info.value)
        assert where == "fsync" or calls[0] >= 1
        # Nothing was deleted, nothing half-written is left, no ref moved.
        assert pack_ids(ledger_dir) == names_before
        assert list((ledger_dir / "objects" / "tmp").iterdir()) == []
        assert lg.refs.state() == refs_before
        assert lg.verify(full=True).ok
        assert check_branch(lg, "main") == (3, 5)  # m0, m3, m7 kept
        # With space again gc finishes the job, and the ledger goes on.
        report = lg.gc(grace=0)
        assert report.expired == [] and report.bytes_freed > 0
        assert set(lg.store.ids("chunk")) == kept_chunks(lg)
        nxt = commit(lg, 3, 0)
        assert restores(lg, nxt.id) and restores(lg, made["m7"].id)
        assert lg.verify(full=True).ok


def test_full_disk_while_recording_expiry(small: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    busy_ledger(small)
    age_packs(small.root, 3600)
    before = tree_bytes(small.root)
    with monkeypatch.context() as mp:
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            if fd_path(fd).endswith("events.log"):
                raise enospc()
            return real_pwrite(fd, data, offset)

        mp.setattr(os, "pwrite", pwrite)
        with pytest.raises(DiskFullError):
            small.gc(grace=0)
    # No expiry recorded and nothing deleted (gc stops before the sweep).
    assert tree_bytes(small.root) == before
    assert len([e for e in small.refs.log.read_from(0).events if isinstance(e, Expire)]) == 1
    report = small.gc(grace=0)
    assert len(report.expired) == 4 and report.bytes_freed > 0
    assert small.verify(full=True).ok


# -- concurrency ------------------------------------------------------------------------------


def test_two_committers_and_a_gc_loop(ledger_dir: Path, tmp_path: Path) -> None:
    count = 14
    with Ledger.open(ledger_dir, create=True, fsync=False, chunk_size=4096) as lg:
        base = commit(lg, 0, 0)
        lg.set_retention(KeepLast(3), KeepEvery(5))
        lg.set_retention(KeepLast(4), branch="b")
    go, stop = tmp_path / "go", tmp_path / "stop"
    gc = start_ready(SCRIPTS / "gc_loop.py", ledger_dir, "0", "--stop", stop, "--pause", "0.005")
    writers = {
        branch: start_ready(
            SCRIPTS / "gc_commit.py",
            str(ledger_dir),
            str(run),
            branch,
            str(count),
            "--go",
            str(go),
            "--pause",
            "0.03",
        )
        for run, branch in ((1, "a"), (2, "b"))
    }
    go.touch()
    reported = {
        b: [w.split()[1] for w in finish(p).splitlines() if w.startswith("commit")]
        for b, p in writers.items()
    }
    stop.touch()
    gc_lines = finish(gc).splitlines()
    gcs = [line for line in gc_lines if line.startswith("gc done")]
    assert len(gcs) >= 2, gc_lines
    assert sum(int(line.split()[2]) for line in gcs) > 0, "gc never expired anything"

    with Ledger.open(ledger_dir, fsync=False) as lg:
        expired = lg.refs.state().expired
        for branch, keep_last in (("a", 3), ("b", 4)):
            ids = reported[branch]
            assert len(ids) == count
            history = [c.id for c in lg.log(branch)]
            assert history == [*reversed(ids), base.id], f"branch {branch} lost a commit"
            kept, gone = check_branch(lg, branch)
            assert kept + gone == count + 1
            # What retention promised is still there: the newest N and every 5th step.
            promised = set(ids[-keep_last:]) | {ids[i] for i in range(0, count, 5)} | {base.id}
            assert not promised & set(expired), f"branch {branch}: a kept commit was expired"
        check = lg.verify(full=True)
        assert check.ok, check.problems
        # A last gc leaves exactly what the kept commits need.
        lg.gc(grace=0)
        assert set(lg.store.ids("chunk")) == kept_chunks(lg)
        for branch in ("a", "b"):
            check_branch(lg, branch)


def test_a_race_on_one_branch_gives_one_writer_a_conflict(
    small: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = commit(small, 0, 0)
    with Ledger.open(small.root, fsync=False) as other:
        won: list[Commit] = []
        real_update = small.refs.update

        def racing_update(*args: Any, **kw: Any) -> None:
            # The other writer commits between this commit's objects and its ref move.
            if not won:
                won.append(commit(other, 2, 1))
            real_update(*args, **kw)

        monkeypatch.setattr(small.refs, "update", racing_update)
        with pytest.raises(RefConflictError) as info:
            commit(small, 1, 1)
        assert "branch 'main'" in str(info.value) and "nothing was changed" in str(info.value)
        assert [c.id for c in small.log()] == [won[0].id, base.id]
        # The loser retries on top of the winner; nothing is lost.
        again = commit(small, 1, 1)
        assert again.parents == [won[0].id]
        assert [c.id for c in other.log()] == [again.id, won[0].id, base.id]
        for cid in (base.id, won[0].id, again.id):
            assert restores(other, cid)
        assert small.verify(full=True).ok


def test_racing_processes_on_one_branch_lose_no_commit(ledger_dir: Path, tmp_path: Path) -> None:
    count = 12
    with Ledger.open(ledger_dir, create=True, fsync=False, chunk_size=4096) as lg:
        base = commit(lg, 0, 0)
    go = tmp_path / "go"
    procs = [
        start_ready(
            SCRIPTS / "gc_commit.py",
            str(ledger_dir),
            str(run),
            "main",
            str(count),
            "--retry",
            "--go",
            str(go),
        )
        for run in (1, 2)
    ]
    go.touch()
    outs = [finish(p).splitlines() for p in procs]
    reported = [[w.split()[1] for w in out if w.startswith("commit")] for out in outs]
    conflicts = sum(1 for out in outs for w in out if w.startswith("conflict"))
    print(f"{conflicts} conflicts")
    with Ledger.open(ledger_dir, fsync=False) as lg:
        history = [c.id for c in lg.log()]
        assert len(history) == 2 * count + 1 and history[-1] == base.id
        for ids in reported:
            assert len(ids) == count
            # Each writer's commits are on main, in its order.
            positions = [history.index(cid) for cid in ids]
            assert positions == sorted(positions, reverse=True)
        assert check_branch(lg, "main") == (2 * count + 1, 0)
        assert lg.verify(full=True).ok


def reuse_setup(lg: Ledger) -> Commit:
    """A commit on a force-deleted branch, its packs older than any grace: its chunks are garbage."""
    commit(lg, 0, 0)
    doomed = commit(lg, 5, 1, branch="doomed")
    lg.delete_branch("doomed", force=True)
    age_packs(lg.root, 3600)
    return doomed


def test_gc_waits_for_a_commit_that_reuses_an_old_unreferenced_chunk(
    small: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed = reuse_setup(small)
    with Ledger.open(small.root, fsync=False) as collector:
        would = collector.gc(dry_run=True, grace=60)
        assert would.objects_freed >= 8, "the deleted branch's chunks should be garbage"

        paused, release = threading.Event(), threading.Event()
        real_update = small.refs.update

        def slow_update(*args: Any, **kw: Any) -> None:
            paused.set()  # every dedup decision is made; the ref has not moved yet
            assert release.wait(30)
            real_update(*args, **kw)

        monkeypatch.setattr(small.refs, "update", slow_update)
        made: list[Commit] = []
        reports: list[Any] = []
        committer = threading.Thread(target=lambda: made.append(commit(small, 5, 1)))
        committer.start()
        assert paused.wait(30)
        collecting = threading.Thread(target=lambda: reports.append(collector.gc(grace=60)))
        collecting.start()
        collecting.join(0.5)
        assert collecting.is_alive() and not reports, "gc ran while a commit held the gc lock"
        release.set()
        committer.join(30)
        collecting.join(30)
        assert not committer.is_alive() and not collecting.is_alive()

    (c,) = made
    assert c.stats.chunks_written == 0, "the commit should have reused every old chunk"
    assert c.id != doomed.id
    assert restores(small, c.id)
    # gc ran after the ref moved: the reused chunks were live, only the old commit went.
    assert reports[0].objects_freed < would.objects_freed
    assert small.verify(full=True).ok
    assert set(small.store.ids("chunk")) == kept_chunks(small)


def test_a_commit_waits_for_gc_and_writes_the_swept_chunk_anew(
    small: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    reuse_setup(small)
    with Ledger.open(small.root, fsync=False) as collector:
        paused, release = threading.Event(), threading.Event()
        real_remove = collector.store.remove_packs

        def slow_remove(names: Any) -> None:
            paused.set()  # gc decided what dies and holds the gc lock exclusively
            assert release.wait(30)
            real_remove(names)

        monkeypatch.setattr(collector.store, "remove_packs", slow_remove)
        reports: list[Any] = []
        made: list[Commit] = []
        collecting = threading.Thread(target=lambda: reports.append(collector.gc(grace=60)))
        collecting.start()
        assert paused.wait(30)
        committer = threading.Thread(target=lambda: made.append(commit(small, 5, 1)))
        committer.start()
        committer.join(0.5)
        assert committer.is_alive() and not made, "a commit ran while gc held the gc lock"
        release.set()
        collecting.join(30)
        committer.join(30)
    (c,) = made
    # The chunks it wanted were swept under it, so it wrote them again.
    assert c.stats.chunks_written >= 4
    assert restores(small, c.id)
    assert small.verify(full=True).ok


def test_reuse_race_randomized(small: Ledger) -> None:
    """A committer keeps re-committing the state of a just-deleted branch while gc loops."""
    stop = threading.Event()
    errors: list[BaseException] = []
    gcs = [0]

    def collect() -> None:
        try:
            with Ledger.open(small.root, fsync=False) as collector:
                while not stop.is_set():
                    collector.gc(grace=0)
                    gcs[0] += 1
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    base = commit(small, 0, 0)
    collecting = threading.Thread(target=collect)
    collecting.start()
    made: list[Commit] = []
    try:
        deadline = time.monotonic() + 2.0
        k = 0
        while time.monotonic() < deadline or k < 10:
            commit(small, 100 + k, k, branch=f"tmp{k}")
            small.delete_branch(f"tmp{k}", force=True)
            made.append(commit(small, 100 + k, k))  # the same state: reuses the garbage
            k += 1
    finally:
        stop.set()
        collecting.join(60)
    assert not errors, errors
    reused = sum(1 for c in made if c.stats.chunks_written == 0)
    print(f"{len(made)} commits, {reused} reused every chunk, {gcs[0]} gcs")
    assert gcs[0] > 0
    assert [c.id for c in small.log()] == [*(c.id for c in reversed(made)), base.id]
    assert check_branch(small, "main") == (len(made) + 1, 0)
    assert small.verify(full=True).ok
    small.gc(grace=0)
    assert set(small.store.ids("chunk")) == kept_chunks(small)


@pytest.mark.parametrize("op", ["branch", "tag", "switch"])
def test_a_ref_made_during_gc_onto_an_unreachable_commit_survives(
    small: Ledger, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    """Reviving a commit that lost its last ref (by id) while a gc is sweeping it.

    gc marks from the refs it read at its start; a ref created afterwards, onto
    a commit older than the grace period, is not seen. Commits avoid this by
    holding the gc lock shared until their ref moved; ``branch``, ``tag`` and
    ``switch`` (detached) do the same, after re-reading the pack list and
    checking the commit object is still stored. Either outcome is fine -- the
    ref is made and the commit survives, or gc won and the operation says the
    commit is not found -- but never a ref to a swept commit.
    """
    old = reuse_setup(small)  # old: on a force-deleted branch, its packs an hour old
    with Ledger.open(small.root, fsync=False) as collector:
        paused, release = threading.Event(), threading.Event()
        real_remove = collector.store.remove_packs

        def slow_remove(names: Any) -> None:
            paused.set()  # gc decided what dies from the refs it read
            assert release.wait(30)
            real_remove(names)

        monkeypatch.setattr(collector.store, "remove_packs", slow_remove)
        collecting = threading.Thread(target=lambda: collector.gc(grace=60))
        collecting.start()
        assert paused.wait(30)
        outcome: list[object] = []

        def revive_it() -> None:
            try:
                {
                    "branch": lambda: small.branch("revived", at=old.id),
                    "tag": lambda: small.tag("revived", at=old.id),
                    "switch": lambda: small.switch(old.id),
                }[op]()
                outcome.append("made")
            except LedgerError as e:  # gc won: the commit is gone, and no ref points at it
                outcome.append(e)

        revive = threading.Thread(target=revive_it)
        revive.start()
        revive.join(0.3)
        release.set()
        collecting.join(30)
        revive.join(30)
    (result,) = outcome
    with Ledger.open(small.root, fsync=False) as lg:
        check = lg.verify()
        assert check.ok, check.problems  # no ref may point at a swept commit
        if result == "made":
            assert restores(lg, old.id)
        else:
            assert isinstance(result, RevisionNotFoundError), result
