"""``verify --full`` checks every stored object; ``--repair --from``; SIGKILL in repair (issue 18).

* a flipped byte in the installed-packages blob, in an object no kept commit
  needs, or in a second copy of a needed object is found by ``verify(full=True)``;
* ``verify(repair=True, from_remote=...)`` refetches damaged objects from a
  remote that has them (the packs with the damaged copies move to
  ``objects/quarantine/``, kept), reports those the remote lacks, and a lost
  commit whose objects were damaged is then restored;
* a child that damages the last event and repairs it in a loop is SIGKILLed at
  random moments: the ledger always opens and reads, and no commit is lost
  (each one the child made is on main, or verify names it and repair restores it).
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from pathlib import Path

from helpers import SCRIPTS, bits, flip_byte, flip_stored_byte, random_state, run_cli, start_ready

from ledger import Ledger


def test_full_verify_checks_the_packages_blob(small: Ledger) -> None:
    c = small.commit(random_state(1), rng=False)
    packages = small.record(c.id).meta["env"]["packages"]
    flip_stored_byte(small, packages, mask=0x55)
    assert small.verify().ok  # only --full re-hashes
    check = small.verify(full=True)
    assert not check.ok
    assert any(packages[:12] in p and "packages" in p for p in check.problems), check.problems


def test_full_verify_checks_objects_no_kept_commit_needs(small: Ledger) -> None:
    small.commit(random_state(1), rng=False)
    gone = small.commit(random_state(2), rng=False, branch="gone")
    small.delete_branch("gone", force=True)
    manifest = small.record(gone.id).manifest
    flip_stored_byte(small, manifest, mask=0x55)
    assert not any(manifest[:12] in n for n in small.verify().notes)
    check = small.verify(full=True)
    assert check.ok, check.problems  # nothing kept needs it
    assert any(manifest[:12] in n and "gc removes it" in n for n in check.notes), check.notes


def test_full_verify_checks_a_second_copy_of_a_needed_object(small: Ledger) -> None:
    c = small.commit(random_state(1), rng=False)
    manifest = bytes.fromhex(small.record(c.id).manifest)
    located = small.store.locate(manifest)
    assert located is not None
    # a second copy of the manifest, in a pack of its own (as a gc rewrite makes)
    writer = small.store.writer(None, compress=False)
    writer.put_encoded(located[1], small.store.read_encoded(*located))
    writer.finish()
    small.store.sync()
    used = small.store.locate(manifest)
    assert used is not None
    other = next(n for n in small.store.pack_names() if n != used[0])
    entry = next(e for e in small.store.pack_entries(other) if e.id == manifest)
    with open(small.store.pack_path(other), "r+b") as f:
        f.seek(entry.offset + entry.length // 2)
        b = f.read(1)[0]
        f.seek(entry.offset + entry.length // 2)
        f.write(bytes([b ^ 0x55]))
    assert small.verify().ok
    check = small.verify(full=True)
    assert not check.ok
    assert any("second copy" in p and manifest.hex()[:12] in p for p in check.problems)


def test_repair_from_a_remote_refetches_damaged_objects(small: Ledger, tmp_path: Path) -> None:
    a = small.commit(random_state(1), rng=False)
    small.remote_add("origin", str(tmp_path / "remote"))
    small.push("origin")
    flip_stored_byte(small, a.manifest, mask=0x55)
    located = small.store.locate(bytes.fromhex(a.manifest))
    assert located is not None
    check = small.verify(full=True)
    assert not check.ok and a.manifest in check.damaged
    out = run_cli("--dir", str(small.root), "verify")
    assert out.exit_code == 3 and "--from REMOTE" in out.stdout
    fixed = small.verify(repair=True, from_remote="origin")
    assert fixed.ok, fixed.problems
    assert any("refetched" in r and "origin" in r for r in fixed.repaired)
    assert (small.root / "objects" / "quarantine" / f"{located[0]}.pack").exists()
    assert bits(small.checkout("main")) == bits(random_state(1))
    assert small.verify(full=True).ok


def test_repair_from_a_remote_reports_what_it_lacks(small: Ledger, tmp_path: Path) -> None:
    small.commit(random_state(1), rng=False)
    small.remote_add("origin", str(tmp_path / "remote"))
    small.push("origin")
    b = small.commit(random_state(2), rng=False)  # never pushed
    flip_stored_byte(small, b.manifest, mask=0x55)
    check = small.verify(repair=True, from_remote="origin")
    assert not check.ok
    assert any(b.manifest[:12] in p for p in check.problems), check.problems
    assert any("lacks 1" in r for r in check.repaired)
    out = run_cli("--dir", str(small.root), "verify", "--from", "origin")
    assert out.exit_code != 0 and "--repair" in out.output


def test_a_lost_and_damaged_commit_is_refetched_then_restored(
    small: Ledger, tmp_path: Path
) -> None:
    a = small.commit(random_state(1), rng=False)
    b = small.commit(random_state(2), rng=False)
    # a copy pushes b; this ledger's last event stays the one that moved main to b
    other = tmp_path / "other"
    shutil.copytree(small.root, other)
    with Ledger.open(other, fsync=False) as copy:
        copy.remote_add("origin", str(tmp_path / "remote"))
        copy.push("origin")
    log = small.root / "events.log"
    size = log.stat().st_size
    small.remote_add("origin", str(tmp_path / "remote"))
    assert log.stat().st_size == size, "adding a remote appends no event"
    flip_byte(log, size - 1, 0x01)
    flip_stored_byte(small, b.manifest, mask=0x55)
    check = small.verify(repair=True)
    assert not check.ok and small.resolve("main") == a.id
    assert any(b.id[:12] in p and "--from" in p for p in check.problems), check.problems
    fixed = small.verify(repair=True, from_remote="origin")
    assert fixed.ok, fixed.problems
    assert any("restored refs/heads/main" in r for r in fixed.repaired), fixed.repaired
    assert small.resolve("main") == b.id
    assert bits(small.checkout("main")) == bits(random_state(2))


def test_sigkill_during_repair_loses_no_commit(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=True) as lg:
        lg.commit(random_state(1), rng=False)
        tip = lg.commit(random_state(2), rng=False).id
    rng = random.Random(18)
    repairs = 0
    for _ in range(4):
        proc = start_ready(SCRIPTS / "repair_loop.py", ledger_dir)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        assert "Traceback" not in out, out
        repairs += out.count("repaired")
        with Ledger.open(ledger_dir, fsync=True) as lg:
            # Readable whatever the moment of the kill, and the tip is never lost:
            # main holds it, or verify names it as lost and intact.
            assert lg.refs.snapshot() == lg.refs.replay()
            check = lg.verify()
            if lg.resolve("main") != tip:
                assert any(tip[:12] in p and "intact" in p for p in check.problems), check
            # One repair in this process finishes whatever the kill interrupted.
            assert lg.verify(repair=True).ok
            assert lg.resolve("main") == tip
            assert bits(lg.checkout("main")) == bits(random_state(2))
    assert repairs > 0, "the child never finished a repair"
