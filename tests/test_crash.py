"""Crash safety and durability: design invariant 2 and DiskFullError.

* a child process committing with ``fsync=True`` is SIGKILLed at random moments;
  every commit it reported as returned must survive bit-exactly, and the
  ledger must open, resolve, restore and commit again;
* damaged packs: an unreferenced one never blocks the ledger, a referenced one
  is a ``CorruptionError`` naming what is missing;
* a full disk at any write of a commit is a ``DiskFullError`` that leaves no
  ref moved and nothing partial visible;
* write order: the commit's pack is fsync'd and renamed into ``objects/packs``
  before the event is appended; the event is fsync'd before the ref view is
  replaced.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import (
    SCRIPTS,
    FullFile,
    bits,
    commit_in_new_pack,
    enospc,
    fd_path,
    load_script,
    pack_ids,
    random_state,
    start_ready,
)

import ledger.objects.durable as durable_mod
import ledger.objects.writer as writer_mod
from ledger import Ledger, LedgerError
from ledger.errors import CorruptionError, DiskFullError, ObjectMissingError
from ledger.history.eventlog import EventLog
from ledger.objects import direct
from ledger.objects.packs import read_pack_index

CHUNK = 64 * 1024


child = load_script("crash_commit")  # for ``make_state`` and ``digest``


def tmp_files(root: Path) -> set[str]:
    """Names of the files in ``objects/tmp``."""
    return {p.name for p in (root / "objects" / "tmp").iterdir()}


def log_is_clean(root: Path) -> bool:
    """Whether ``events.log`` ends exactly at a frame boundary (no torn tail)."""
    read = EventLog(root / "events.log", fsync=False).read_from(0)
    return read.torn_bytes == 0 and read.end == (root / "events.log").stat().st_size


# -- (a) SIGKILL at random moments -------------------------------------------------------


def parse_message(message: str | None) -> tuple[int, int]:
    """(run, i) from a child's commit message ``run R commit I``."""
    assert message is not None
    words = message.split()
    assert words[0] == "run" and words[2] == "commit", message
    return int(words[1]), int(words[3])


def verify_after_crash(
    root: Path, reported: dict[str, str], order: list[str], check: set[str], fresh_run: int
) -> None:
    """Everything invariant 2 promises after a crash, then one more commit."""
    with Ledger.open(root, fsync=True) as lg:
        assert lg.store.damaged == {}, "a crash left a partial pack visible in objects/packs"
        for pack in pack_ids(root):
            read_pack_index(lg.store.pack_path(pack))
        assert lg.current_branch == "main"
        head = lg.head
        if head is None:  # killed before the very first commit finished
            assert not order
            c = lg.commit(child.make_state(fresh_run, 0), message=f"run {fresh_run} commit 0")
            assert lg.resolve("HEAD") == c.id
            return
        history = [c.id for c in lg.log("main")]
        assert head.id == history[0]
        # No reported commit is lost, and they sit on main in the order they were made.
        missing = [cid for cid in order if cid not in history]
        assert not missing, f"{len(missing)} reported commits are not on main"
        positions = [history.index(cid) for cid in order]
        assert positions == sorted(positions, reverse=True)
        # Every checked commit restores bit-exactly (reported digest and recomputed state).
        for cid in check | {history[0]}:
            commit = lg.get(cid)
            run, i = parse_message(commit.message)
            got = child.digest(lg.checkout(cid))
            assert got == child.digest(child.make_state(run, i)), f"commit {cid[:12]} differs"
            if cid in reported:
                assert got == reported[cid]
        # HEAD's commit restores in place into live objects.
        run, i = parse_message(head.message)
        live = child.make_state(run, i)
        for value in (live["fixed"], live["moving"], live["small"], live["nested"][0]):
            value.zero_()
        lg.restore(live, "HEAD", rng=False)
        assert child.digest(live) == child.digest(child.make_state(run, i))
        assert lg.refs.replay() == lg.refs.snapshot()
        # The next commit works (and cuts any torn event-log tail off).
        c = lg.commit(child.make_state(fresh_run, 0), message=f"run {fresh_run} commit 0")
        assert c.parents == [head.id]
        assert lg.resolve("HEAD") == c.id
    assert log_is_clean(root)


def crash_loop(root: Path, kills: int, seed: int, check_all: bool) -> dict[str, int]:
    """Start, kill and verify ``kills`` children; return counts for the assertions."""
    rng = random.Random(seed)
    Ledger.open(root, create=True, fsync=True, chunk_size=CHUNK).close()
    # A stale partial pack from some earlier crash must not matter either.
    (root / "objects" / "tmp" / ".1-deadbeef.pack").write_bytes(b"LGPK\x01\0\0\0partial")
    reported: dict[str, str] = {}
    order: list[str] = []
    stats = {"reported": 0, "torn_tails": 0, "tmp_leftovers": 0, "empty_runs": 0}
    for run in range(kills):
        tmp_before = tmp_files(root)
        proc = start_ready(SCRIPTS / "crash_commit.py", root, run)
        try:
            assert proc.stdout is not None
            # Let 0-3 commits finish, then kill somewhere within about one more commit.
            early = [proc.stdout.readline() for _ in range(rng.randint(0, 3))]
            time.sleep(rng.uniform(0.0, 0.08))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
            out = "".join(early) + out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"seed {seed} run {run}: {out[-2000:]}"
        lines = out.split("\n")[:-1]  # the last piece may be partial
        new = []
        for line in lines:
            cid, dig = line.split()
            reported[cid] = dig
            new.append(cid)
        order += new
        stats["reported"] += len(new)
        stats["empty_runs"] += not new
        stats["torn_tails"] += not log_is_clean(root)
        stats["tmp_leftovers"] += bool(tmp_files(root) - tmp_before)  # killed mid-write
        if check_all:
            check = set(order)
        else:
            check = set(new) | set(rng.sample(order, min(10, len(order))))
        verify_after_crash(root, reported, order, check, fresh_run=1000 + run)
    return stats


def test_sigkill_during_commits_loses_nothing_reported(ledger_dir: Path) -> None:
    stats = crash_loop(ledger_dir, kills=5, seed=20240611, check_all=True)
    assert stats["reported"] > 0, "the child never got a commit out; the test proved nothing"
    assert ".1-deadbeef.pack" in tmp_files(ledger_dir)


@pytest.mark.slow
def test_sigkill_many_times(ledger_dir: Path) -> None:
    seed = random.randrange(1 << 30)
    stats = crash_loop(ledger_dir, kills=50, seed=seed, check_all=False)
    print(f"seed {seed}: {stats}")
    assert stats["reported"] > 50, stats
    # Fifty random kills should land mid-write at least once.
    assert stats["tmp_leftovers"] + stats["torn_tails"] > 0, stats


# -- (b) damaged packs ---------------------------------------------------------------------


def state(seed: int) -> dict[str, Any]:
    """A state of random tensors, distinct per ``seed``, 200 KB of them."""
    return random_state(seed, 50_000)


def truncate(path: Path, fraction: float) -> None:
    """Cut a file to ``fraction`` of its size (a torn write)."""
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.999])
def test_torn_unreferenced_pack_does_not_block_the_ledger(
    ledger_dir: Path, fraction: float
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        a, _ = commit_in_new_pack(lg, state(1))
        # Objects written but never referenced (a commit that crashed before its event).
        writer = lg.store.writer(lg.pool)
        writer.put("blob", os.urandom(100_000))
        writer.put("chunk", os.urandom(5_000))
        (orphan,) = writer.finish()
    truncate(ledger_dir / "objects" / "packs" / f"{orphan}.pack", fraction)
    (ledger_dir / "objects" / "tmp" / ".9-torn.pack").write_bytes(os.urandom(3000))

    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert orphan in lg.store.damaged
        assert bits(lg.checkout(a)) == bits(state(1))
        b = lg.commit(state(2), rng=False)
        assert bits(lg.checkout("HEAD")) == bits(state(2))
        assert [c.id for c in lg.log()] == [b.id, a]


@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.999])
def test_torn_referenced_pack_names_what_is_missing(ledger_dir: Path, fraction: float) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        a, _ = commit_in_new_pack(lg, state(1))
        b, b_pack = commit_in_new_pack(lg, state(2))
    truncate(ledger_dir / "objects" / "packs" / f"{b_pack}.pack", fraction)

    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert b_pack in lg.store.damaged
        assert lg.resolve("main") == b, "refs come from the event log, not from packs"
        with pytest.raises(ObjectMissingError) as info:
            lg.checkout("main")
        assert isinstance(info.value, CorruptionError) and isinstance(info.value, LedgerError)
        assert b[:12] in str(info.value) and "missing" in str(info.value)
        with pytest.raises(CorruptionError):
            list(lg.log("main"))
        # The other commit (its own pack) is untouched.
        assert bits(lg.checkout(a)) == bits(state(1))
        # Committing the same state again stores its chunks anew instead of
        # deduplicating against the damaged pack, so the new commit is whole.
        c = lg.commit(state(2), rng=False, branch="repair")
        assert c.stats.chunks_written == c.stats.chunks_total
        assert bits(lg.checkout(c.id)) == bits(state(2))


def test_missing_chunk_error_names_the_tensor_and_commit(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        _, base_pack = commit_in_new_pack(lg, state(1))
        s = state(1)
        s["extra"] = torch.arange(10.0)
        top, _ = commit_in_new_pack(lg, s)  # reuses the chunks of "w" from base_pack
    (ledger_dir / "objects" / "packs" / f"{base_pack}.pack").unlink()
    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert torch.equal(lg.checkout(top, paths=["extra"])["extra"], torch.arange(10.0))
        with pytest.raises(ObjectMissingError) as info:
            lg.checkout(top)
        msg = str(info.value)
        assert top in msg or top[:12] in msg
        assert "'w'" in msg or "'b'" in msg, msg


# -- (c) a full disk -------------------------------------------------------------------------


def full_after(budget: int) -> Callable[[Any], bool]:
    """For :class:`FullFile`: the disk fills once ``budget`` bytes are written (all files)."""
    left = [budget]

    def full(data: Any) -> bool:
        n = memoryview(data).nbytes
        if n > left[0]:
            return True
        left[0] -= n
        return False

    return full


@pytest.fixture
def durable_ledger(ledger_dir: Path) -> Iterator[Ledger]:
    """A ledger that fsyncs (so the fsync paths run) with small chunks."""
    with Ledger.open(ledger_dir, create=True, fsync=True, chunk_size=CHUNK) as opened:
        yield opened


def inject_pack_write(budget: int) -> Callable[[pytest.MonkeyPatch], None]:
    def inject(mp: pytest.MonkeyPatch) -> None:
        full = full_after(budget)

        def fake_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            f = open(path, mode, *a, **kw)  # noqa: SIM115 - wrapped and closed by the caller
            return FullFile(f, full) if "w" in mode else f

        mp.setattr(writer_mod, "open", fake_open, raising=False)

    return inject


def inject_fsync(suffix: str) -> Callable[[pytest.MonkeyPatch], None]:
    def inject(mp: pytest.MonkeyPatch) -> None:
        real = os.fsync

        def fsync(fd: int) -> None:
            if fd_path(fd).endswith(suffix):
                raise enospc()
            real(fd)

        mp.setattr(os, "fsync", fsync)

    return inject


def inject_pwrite(short: bool) -> Callable[[pytest.MonkeyPatch], None]:
    def inject(mp: pytest.MonkeyPatch) -> None:
        real = os.pwrite

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            if not fd_path(fd).endswith("events.log"):
                return real(fd, data, offset)
            if short:  # the disk filled up part-way: the kernel wrote only some bytes
                return real(fd, data[: len(data) // 2], offset)
            raise enospc()

        mp.setattr(os, "pwrite", pwrite)

    return inject


FULL_DISK = {
    "pack-header": inject_pack_write(0),
    "pack-first-chunk": inject_pack_write(8),
    "pack-mid-chunks": inject_pack_write(300_000),
    "pack-fsync": inject_fsync(".pack"),
    "event-append": inject_pwrite(short=False),
    "event-short-write": inject_pwrite(short=True),
    "event-fsync": inject_fsync("events.log"),
}


@pytest.mark.parametrize("io", ["direct", "buffered"])
@pytest.mark.parametrize("where", list(FULL_DISK))
def test_full_disk_mid_commit_is_disk_full_error_and_moves_nothing(
    durable_ledger: Ledger, monkeypatch: pytest.MonkeyPatch, where: str, io: str
) -> None:
    if io == "buffered":  # packs through the page cache (no O_DIRECT, or LEDGER_DIRECT_IO=0)
        monkeypatch.setenv("LEDGER_DIRECT_IO", "0")
    else:  # 64 KiB per direct write, so a budget can run out part-way through a pack
        monkeypatch.setattr(direct, "BUFFER", 64 << 10)
    lg = durable_ledger
    root = lg.root
    first = lg.commit(random_state(1, 200_000), rng=False)
    refs_before = lg.refs.snapshot()
    log_before = (root / "events.log").read_bytes()
    packs_before, tmp_before = pack_ids(root), tmp_files(root)

    with monkeypatch.context() as mp:
        FULL_DISK[where](mp)
        with pytest.raises(DiskFullError) as info:
            lg.commit(random_state(2, 200_000), rng=False)
    assert isinstance(info.value, LedgerError)
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert "disk is full" in str(info.value)
    # No ref moved, the log is byte-for-byte what it was, nothing half-written is left.
    assert lg.refs.snapshot() == refs_before
    assert (root / "events.log").read_bytes() == log_before
    assert tmp_files(root) == tmp_before
    if where.startswith("pack"):
        assert pack_ids(root) == packs_before, "a partial pack became visible"
    for pack in pack_ids(root):  # any pack that is visible is whole
        read_pack_index(lg.store.pack_path(pack))
    # With space again, the ledger commits and restores as if nothing happened.
    with Ledger.open(root, fsync=True) as again:
        assert again.refs.snapshot() == refs_before
        c = again.commit(random_state(2, 200_000), rng=False)
        assert c.parents == [first.id]
        assert bits(again.checkout("HEAD")) == bits(random_state(2, 200_000))
        assert bits(again.checkout(first.id)) == bits(random_state(1, 200_000))
    c2 = lg.commit(state(3), rng=False)
    assert c2.parents == [c.id]


def test_full_disk_while_writing_the_ref_view_keeps_the_commit(
    durable_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The view is a cache: once the event is durable the commit has happened."""
    lg = durable_ledger
    first = lg.commit(state(1), rng=False)
    view_before = (lg.root / "refs").read_bytes()
    with monkeypatch.context() as mp:
        real_open = open

        def fake_open(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
            f = real_open(path, mode, *a, **kw)
            return FullFile(f, full_after(0)) if "w" in mode else f

        mp.setattr(durable_mod, "open", fake_open, raising=False)
        second = lg.commit(state(2), rng=False)
    assert second.parents == [first.id]
    assert (lg.root / "refs").read_bytes() == view_before, "the view write should have failed"
    assert lg.resolve("main") == second.id
    assert tmp_files(lg.root) == set()
    with Ledger.open(lg.root) as again:
        assert again.resolve("main") == second.id
        assert again.refs.snapshot() == again.refs.replay()
        assert bits(again.checkout("HEAD")) == bits(state(2))


# -- (d) write order -------------------------------------------------------------------------


class Recorder:
    """Logs fsync / replace / pwrite / ftruncate calls with the paths they touch."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []
        real_fsync, real_replace, real_pwrite = os.fsync, os.replace, os.pwrite
        real_ftruncate = os.ftruncate

        def fsync(fd: int) -> None:
            self.calls.append(("fsync", self.rel(fd_path(fd))))
            real_fsync(fd)

        def replace(src: Any, dst: Any, **kw: Any) -> None:
            self.calls.append(("replace", f"{self.rel(src)} -> {self.rel(dst)}"))
            real_replace(src, dst, **kw)

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            self.calls.append(("pwrite", self.rel(fd_path(fd))))
            return real_pwrite(fd, data, offset)

        def ftruncate(fd: int, length: int) -> None:
            self.calls.append(("ftruncate", self.rel(fd_path(fd))))
            real_ftruncate(fd, length)

        mp.setattr(os, "fsync", fsync)
        mp.setattr(os, "replace", replace)
        mp.setattr(os, "pwrite", pwrite)
        mp.setattr(os, "ftruncate", ftruncate)

    def rel(self, path: Any) -> str:
        p = Path(os.fspath(path)).resolve()
        try:
            return str(p.relative_to(self.root.resolve())) or "."
        except ValueError:
            return str(p)

    def index(self, pred: Callable[[str, str], bool], what: str) -> int:
        found = [i for i, (op, arg) in enumerate(self.calls) if pred(op, arg)]
        assert len(found) == 1, f"expected exactly one {what}, got {found} in {self.calls}"
        return found[0]


def test_commit_write_order(durable_ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    lg = durable_ledger
    lg.commit(state(1), rng=False)
    rec = Recorder(monkeypatch, lg.root)
    c = lg.commit(state(2), rng=False)
    monkeypatch.undo()

    (pack,) = [
        arg.split(" -> ")[1]
        for op, arg in rec.calls
        if op == "replace" and arg.split(" -> ")[1].startswith("objects/packs/")
    ]
    # The pack that was renamed into place holds the commit, its manifest and its new chunks,
    # in that order of writing: chunks, then manifest, then the commit object.
    entries = read_pack_index(lg.root / pack)
    kinds = {e.id.hex(): e for e in entries}
    assert c.id in kinds and c.manifest in kinds
    assert kinds[c.id].kind == "commit" and kinds[c.manifest].kind == "manifest"
    chunk_offsets = [e.offset for e in entries if e.kind == "chunk"]
    assert chunk_offsets and max(chunk_offsets) < kinds[c.manifest].offset < kinds[c.id].offset

    tmp_pack = rec.index(lambda op, a: op == "replace" and a.endswith(f" -> {pack}"), "pack rename")
    src = rec.calls[tmp_pack][1].split(" -> ")[0]
    assert src.startswith("objects/tmp/"), "packs must be written under a temporary name"
    pack_fsync = rec.index(lambda op, a: op == "fsync" and a == src, "pack fsync")
    dir_fsync = rec.index(lambda op, a: op == "fsync" and a == "objects/packs", "packs dir fsync")
    append = rec.index(lambda op, a: op == "pwrite" and a == "events.log", "event append")
    log_fsync = rec.index(lambda op, a: op == "fsync" and a == "events.log", "event fsync")
    view = rec.index(lambda op, a: op == "replace" and a.endswith(" -> refs"), "view replace")
    assert pack_fsync < tmp_pack < dir_fsync < append < log_fsync < view, rec.calls
    # Nothing touches the event log before the pack is durable.
    first_log_touch = min(i for i, (_, a) in enumerate(rec.calls) if a == "events.log")
    assert first_log_touch > dir_fsync
    # And nothing is renamed into objects/packs after the event is written.
    assert not any(op == "replace" and "-> objects/packs/" in a for op, a in rec.calls[append:]), (
        rec.calls
    )


def test_ref_only_update_write_order(
    durable_ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Branch, tag and switch also make their event durable before replacing the view."""
    lg = durable_ledger
    lg.commit(state(1), rng=False)
    for op in (lambda: lg.branch("b"), lambda: lg.tag("t"), lambda: lg.switch("b")):
        with monkeypatch.context() as mp:
            rec = Recorder(mp, lg.root)
            op()
        append = rec.index(lambda o, a: o == "pwrite" and a == "events.log", "event append")
        log_fsync = rec.index(lambda o, a: o == "fsync" and a == "events.log", "event fsync")
        view = rec.index(lambda o, a: o == "replace" and a.endswith(" -> refs"), "view replace")
        assert append < log_fsync < view, rec.calls
        assert not any(a.startswith("objects/packs/") for _, a in rec.calls)


def test_fsync_false_never_fsyncs(ledger_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync=False switch is real (so the durable tests above measure something)."""
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        rec = Recorder(monkeypatch, lg.root)
        lg.commit(state(1), rng=False)
        monkeypatch.undo()
    assert not [c for c in rec.calls if c[0] == "fsync"], rec.calls
