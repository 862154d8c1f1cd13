"""Crashes during gc, and power loss during commits and gc (design invariants 2 and 4).

* SIGKILL: a child (tests/scripts/gc_loop.py) commits and runs gc(grace=0) in
  a loop on a ledger with retention policies and many prunable commits; it is
  killed at random moments, mostly inside a gc. After each kill
  ``verify(full=True)`` is ok, no commit the child reported is lost, every
  reachable commit that is not expired restores bit-exactly, and nothing the
  policies promised to keep was expired.
* Power loss: SIGKILL leaves the page cache, so it cannot lose a write that
  was never fsync'd. :class:`PowerLossJournal` runs commits, expiry and gc in
  this process with ``fsync=True`` and records, at every ``os.fsync``, what
  that call made durable; it then rebuilds the directory a power cut after
  each fsync would leave and checks it like the SIGKILL test does: every
  commit that had returned survives and restores bit-exactly.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import SCRIPTS, load_script, start_ready

from ledger import Ledger
from ledger.errors import CommitExpiredError
from ledger.history.needs import reachable_commits
from ledger.retention import KeepEvery, KeepLast

gs = load_script("gc_state")
CHUNK = 4096
# The policies of every ledger here; ``promised`` below mirrors them.
WIDE = (KeepLast(2), KeepEvery(4))
SIDE = (KeepLast(3),)
BY_HAND = "expired by hand"  # Ledger.expire's default reason: overrides every policy


def promised(lg: Ledger) -> set[str]:
    """Commits the policies must keep whenever gc ran: each branch's newest N, steps % 4 == 0, tags.

    (A commit among a branch's newest N now was among its newest N at every
    earlier gc too, since branches only grow at the tip.)
    """
    out = set(lg.tags().values())
    for branch, tip in lg.branches().items():
        history = list(lg.log(tip))
        keep_last = 3 if branch == "side" else 2
        out |= {c.id for c in history[:keep_last]}
        out |= {c.id for c in history if c.step is not None and c.step % 4 == 0}
    return out


def check_ledger(root: Path, must_exist: dict[str, str]) -> tuple[int, int]:
    """Everything a crash must leave: verify ok, no listed commit lost, state bit-exact.

    ``must_exist`` maps commit id -> branch it was committed to (the commit must
    still be in that branch's log, if the branch still exists). Returns
    (commits restored, commits expired).
    """
    with Ledger.open(root, fsync=False) as lg:
        check = lg.verify(full=True)
        assert check.ok, check.problems
        state = lg.refs.state()
        branches = lg.branches()
        logs = {b: {c.id for c in lg.log(tip)} for b, tip in branches.items()}
        for cid, branch in must_exist.items():
            if branch in branches:
                assert cid in logs[branch], f"commit {cid[:12]} is no longer on {branch}"
        by_policy = {c for c, e in state.expired.items() if not e.reason.startswith(BY_HAND)}
        lost = promised(lg) & by_policy
        assert not lost, f"retention promised to keep {sorted(c[:12] for c in lost)}"
        restored = expired = 0
        for cid in reachable_commits(lg, state.refs):
            commit = lg.get(cid)
            if cid in state.expired:
                with pytest.raises(CommitExpiredError):
                    lg.checkout(cid)
                expired += 1
                continue
            run, i = gs.parse(commit.message)
            got = gs.digest(lg.checkout(cid))
            assert got == gs.digest(gs.make_state(run, i)), f"commit {cid[:12]} differs"
            restored += 1
        return restored, expired


def prunable_ledger(root: Path, *, fsync: bool) -> dict[str, str]:
    """A ledger with retention set and many commits the policies drop; id -> branch."""
    made: dict[str, str] = {}
    with Ledger.open(root, create=True, fsync=fsync, chunk_size=CHUNK) as lg:
        for i in range(12):
            made[commit(lg, 0, i, "main")] = "main"
        lg.tag("pinned", at="main~9")
        for i in range(12, 18):
            made[commit(lg, 0, i, "side")] = "side"
        lg.set_retention(*WIDE)
        lg.set_retention(*SIDE, branch="side")
    return made


def commit(lg: Ledger, run: int, i: int, branch: str) -> str:
    return gs.commit_state(lg, run, i, branch=branch).id


# -- SIGKILL during gc ------------------------------------------------------------------------


CHILD_ARGS = ("--commit-every", "2", "--branches", "main,side", "--fsync")


def gc_crash_loop(root: Path, kills: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    made = prunable_ledger(root, fsync=True)
    stats = {"kills_in_gc": 0, "gcs_done": 0, "commits": 0, "expired": 0, "tmp_leftovers": 0}
    for run in range(1, kills + 1):
        # Every other child sleeps inside gc, so kills land mid-gc more often.
        slow = ["--slow-gc", "0.03"] if run % 2 else []
        proc = start_ready(SCRIPTS / "gc_loop.py", root, run, *CHILD_ARGS, *slow)
        try:
            assert proc.stdout is not None
            # Let 0-2 gcs finish, then kill a few ms into the next one.
            seen: list[str] = []
            starts = rng.randint(1, 3)
            while starts:
                line = proc.stdout.readline()
                assert line, "".join(seen)
                seen.append(line)
                starts -= line == "gc start\n"
            time.sleep(rng.uniform(0.0, 0.08 if run % 2 else 0.02))
            proc.send_signal(signal.SIGKILL)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: {out[-2000:]}"
        lines = [x.strip() for x in (*seen, *out.split("\n")[:-1])]
        for line in lines:
            words = line.split()
            if words[0] == "commit":
                made[words[2]] = words[1]
                stats["commits"] += 1
            stats["gcs_done"] += line.startswith("gc done")
        stats["kills_in_gc"] += lines[-1] == "gc start"
        stats["tmp_leftovers"] += any((root / "objects" / "tmp").iterdir())
        _, expired = check_ledger(root, made)
        stats["expired"] = expired
    return stats


def test_sigkill_during_gc(ledger_dir: Path) -> None:
    stats = gc_crash_loop(ledger_dir, kills=5, seed=20240612)
    print(stats)
    assert stats["gcs_done"] >= 2 and stats["expired"] > 10, stats
    assert stats["kills_in_gc"] >= 1, stats


@pytest.mark.slow
def test_sigkill_during_gc_many_times(ledger_dir: Path) -> None:
    seed = random.randrange(1 << 30)
    stats = gc_crash_loop(ledger_dir, kills=50, seed=seed)
    print(f"seed {seed}: {stats}")
    assert stats["kills_in_gc"] >= 20, stats


# -- power loss ---------------------------------------------------------------------------------


class PowerLossJournal:
    """What a power cut after each ``os.fsync`` would leave of a ledger directory.

    The model of durability (Linux, ordered metadata, no magic):

    * the directory as it was when recording starts is durable (a clean start);
    * a file's *contents* are durable as of its last ``fsync``: everything
      written after it (or never fsync'd at all) is lost. A file that exists
      in a durable directory entry but whose data was never fsync'd reads as
      empty (its size and data never reached the disk);
    * a directory's *entries* (files created, renamed in or out, unlinked) are
      durable as of the last ``fsync`` of that directory; until then the
      directory keeps its previous durable entries -- so an unlinked file can
      come back, and a renamed one can sit under its old name too.

    Every ``os.fsync`` in this process is replaced by a recorder (no real
    fsync happens: the test is about the model). A file fsync records the
    file's whole content by inode; a directory fsync records its listing
    (name -> inode). Every inode seen is kept open, so the kernel cannot reuse
    its number for another file while the journal runs. ``image(k, dest)``
    builds the directory as of right after the k-th fsync (``k = 0``: before
    the first). A crash between two fsyncs leaves exactly one of these
    images, since nothing else becomes durable in between.
    """

    def __init__(self, root: Path, mp: pytest.MonkeyPatch) -> None:
        self.root = root.resolve()
        self._held: dict[int, int] = {}
        self.base_entries: dict[str, dict[str, int]] = {}
        self.base_content: dict[int, bytes] = {}
        for d in [self.root, *sorted(p for p in self.root.rglob("*") if p.is_dir())]:
            names = self._listing(d)
            self.base_entries[self._rel(d)] = names
            for name, ino in names.items():
                self.base_content.setdefault(ino, (d / name).read_bytes())
        self.entries: dict[str, dict[str, int]] = {}
        self.content: dict[int, bytes] = {}
        self.images: list[tuple[dict[str, dict[str, int]], dict[int, bytes]]] = [({}, {})]
        mp.setattr(os, "fsync", self.fsync)

    def _rel(self, path: Path) -> str:
        return str(path.resolve().relative_to(self.root))

    def _hold(self, fd: int) -> int:
        ino = os.fstat(fd).st_ino
        if ino in self._held:
            os.close(fd)
        else:
            self._held[ino] = fd
        return ino

    def _listing(self, d: Path) -> dict[str, int]:
        names = {}
        for p in d.iterdir():
            if p.is_file():
                names[p.name] = self._hold(os.open(p, os.O_RDONLY))
        return names

    def fsync(self, fd: int) -> None:
        """The recorder that replaces ``os.fsync``."""
        proc = f"/proc/self/fd/{fd}"
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            rel = self._rel(Path(os.readlink(proc)))
            assert rel in self.base_entries, f"fsync of a directory made after the start: {rel}"
            self.entries[rel] = self._listing(self.root / rel)
        else:
            with open(proc, "rb") as f:
                data = f.read()
            ino = self._hold(os.open(proc, os.O_RDONLY))
            self.content[ino] = data
        self.images.append((dict(self.entries), dict(self.content)))

    @property
    def fsyncs(self) -> int:
        """How many fsyncs happened so far."""
        return len(self.images) - 1

    def image(self, k: int, dest: Path) -> None:
        """Write the directory a power cut right after fsync ``k`` leaves into ``dest``."""
        entries, content = self.images[k]
        for rel, base in self.base_entries.items():
            d = dest / rel
            d.mkdir(parents=True, exist_ok=True)
            for name, ino in entries.get(rel, base).items():
                (d / name).write_bytes(content.get(ino, self.base_content.get(ino, b"")))

    def close(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


@dataclass
class Returned:
    """A commit that returned, and how many fsyncs had happened by then."""

    cid: str
    branch: str
    fsyncs: int


def run_workload(lg: Ledger, journal: PowerLossJournal) -> list[Returned]:
    """Commits on two branches, gc with expiry and pack rewrites, a deleted branch, expire."""
    done: list[Returned] = []

    def c(run: int, i: int, branch: str) -> None:
        done.append(Returned(commit(lg, run, i, branch), branch, journal.fsyncs))

    for i in range(3):
        c(1, i, "main")
        c(1, 10 + i, "side")
    lg.gc(grace=0)
    for i in range(3, 5):
        c(1, i, "main")
    lg.branch("tmp")
    c(1, 20, "tmp")
    lg.delete_branch("tmp", force=True)
    lg.expire("main~1")
    lg.gc(grace=0)
    c(1, 5, "main")
    c(1, 13, "side")
    lg.gc(grace=0)
    return done


def check_images(
    journal: PowerLossJournal, done: list[Returned], scratch: Path
) -> list[tuple[int, str]]:
    """Check every crash image; return (image, failure) for each one that breaks a promise."""
    failures: list[tuple[int, str]] = []
    for k in range(journal.fsyncs + 1):
        dest = scratch / f"image-{k}"
        journal.image(k, dest)
        must = {r.cid: r.branch for r in done if r.fsyncs <= k and r.branch != "tmp"}
        try:
            check_ledger(dest, must)
        except Exception as e:  # report every image that fails, not only the first
            failures.append((k, f"{type(e).__name__}: {e}"))
        shutil.rmtree(dest)
    return failures


def power_loss_run(
    root: Path, mp: pytest.MonkeyPatch, tweak: Callable[[Ledger], None] | None = None
) -> tuple[PowerLossJournal, list[Returned]]:
    made = prunable_ledger(root, fsync=True)
    assert made
    journal = PowerLossJournal(root, mp)
    with Ledger.open(root, fsync=True) as lg:
        if tweak is not None:
            tweak(lg)
        done = run_workload(lg, journal)
    mp.undo()
    return journal, done


def test_power_loss_keeps_every_returned_commit(
    ledger_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal, done = power_loss_run(ledger_dir, monkeypatch)
    try:
        assert journal.fsyncs > 40 and len(done) == 11
        failures = check_images(journal, done, tmp_path / "images")
        assert not failures, failures[:3]
        # The last image is the finished workload: everything, policies applied.
        restored, expired = check_ledger(ledger_dir, {r.cid: r.branch for r in done})
        assert restored > 5 and expired > 10
    finally:
        journal.close()


def test_power_loss_harness_catches_a_missing_fsync(
    ledger_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal has teeth: packs that are not fsync'd before the event lose commits."""

    def no_pack_fsync(lg: Ledger) -> None:
        lg.store.fsync = False  # the event log still fsyncs; packs and their directory do not

    journal, done = power_loss_run(ledger_dir, monkeypatch, no_pack_fsync)
    try:
        failures = check_images(journal, done, tmp_path / "images")
        assert failures, "a ledger that never fsyncs its packs survived every power cut"
    finally:
        journal.close()
