"""verify (issue 5, design invariants 1-2): damage is detected and named; crash leftovers are notes.

* a torn event-log tail (cut mid-record at several points) is a note, not a
  problem; refs are what the intact events say; the next writer cuts the tail,
  and so does ``verify(repair=True)``;
* a truncated pack that commits need: ``ok`` is False and the problems name
  the pack, the commit whose record is lost, and the tensor whose chunks are
  missing; commits in other packs still restore;
* a flipped byte in a chunk: ``verify(full=True)`` names the tensor path and
  the commit (a plain verify does not re-hash chunks, so it may miss it);
  every other tensor and commit still restores;
* a flipped byte in a manifest (or a commit record) is reported precisely,
  also by a plain verify;
* ``verify(repair=True)`` rebuilds a deleted, garbled or wrong ``refs`` view
  from the event log;
* orphan objects (a crashed commit's pack, expired or unreachable commits) and
  leftover ``objects/tmp`` files are notes: ``ok`` stays True.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import (
    bits,
    commit_in_new_pack,
    flip_byte,
    flip_stored_byte,
    random_state,
    run_cli,
)

from ledger import Ledger
from ledger.errors import CorruptionError, ObjectMissingError
from ledger.history.eventlog import FRAME, LOG_HEADER, EventLog
from ledger.history.records import RefView, msgpack_encoder, refview_decoder
from ledger.history.tree import tensor_table
from ledger.objects.packs import HEADER


def test_a_whole_ledger_verifies(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    small.commit(random_state(2), rng=False, branch="side")
    small.tag("v1", at=a.id)
    check = small.verify(full=True)
    assert check.ok and check.problems == [] and check.notes == [] and check.repaired == []
    assert check.commits_checked == 2
    assert check.chunks_checked == 2 * (8 + 1)  # w: 8 chunks of 4 KiB, b: 1
    assert check.bytes_checked == 2 * (8192 + 100) * 4


# -- the event log --------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["one-byte", "frame-header", "mid-payload", "all-but-one"])
def test_torn_event_log_tail(small: Ledger, cut: str) -> None:
    a = small.commit(random_state(1), rng=False)
    log = small.root / "events.log"
    before = log.stat().st_size
    small.tag("torn")  # the event a crash tears
    size = log.stat().st_size
    keep = {
        "one-byte": before + 1,
        "frame-header": before + 12,
        "mid-payload": (before + size) // 2,
        "all-but-one": size - 1,
    }[cut]
    small.close()
    with open(log, "r+b") as f:
        f.truncate(keep)

    with Ledger.open(small.root, fsync=False) as lg:
        check = lg.verify(full=True)
        assert check.ok, check.problems
        assert any("torn tail" in n and f"{keep - before} bytes" in n for n in check.notes)
        assert lg.tags() == {} and lg.resolve("main") == a.id
        assert bits(lg.checkout("main")) == bits(random_state(1))
        # The next writer cuts the tail before appending.
        lg.tag("after")
        read = EventLog(log, fsync=False).read_from(0)
        assert read.torn_bytes == 0 and read.end == log.stat().st_size
        assert lg.tags() == {"after": a.id}
        check = lg.verify()
        assert check.ok and not any("torn" in n for n in check.notes)


def test_repair_cuts_a_torn_tail(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    log = small.root / "events.log"
    good = log.stat().st_size
    with open(log, "ab") as f:
        f.write(b"LGEV\x40\0\0\0partial")
    check = small.verify(repair=True)
    assert check.ok
    assert any("cut" in r and "torn" in r for r in check.repaired)
    assert log.stat().st_size == good
    check = small.verify()
    assert check.ok and check.notes == []
    assert small.resolve("HEAD") == a.id


def test_damage_before_intact_events_is_a_problem(small: Ledger) -> None:
    """A flipped byte in an early event is corruption, not a torn tail."""
    small.commit(random_state(1), rng=False)
    small.tag("x")
    log = small.root / "events.log"
    flip_byte(log, len(LOG_HEADER) + FRAME.size + 2, 0x55)  # inside the first event
    check = small.verify()
    assert not check.ok
    assert any(
        p.startswith("event log:") and "damaged but later events are intact" in p
        for p in check.problems
    ), check.problems


# -- packs ----------------------------------------------------------------------------------------


def two_commits_sharing_a_pack(lg: Ledger) -> dict[str, str]:
    """main: A (pack PA: w, b), B (pack PB: new b; w from PA); side: O (own pack)."""
    a, pa = commit_in_new_pack(lg, random_state(1), message="A")
    b_state = {**random_state(1), "b": random_state(2)["b"], "seed": 2}
    b, pb = commit_in_new_pack(lg, b_state, message="B")
    o, po = commit_in_new_pack(lg, random_state(3), message="O", branch="side")
    return {"a": a, "pa": pa, "b": b, "pb": pb, "o": o, "po": po}


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.99])
def test_truncated_referenced_pack(small: Ledger, fraction: float) -> None:
    ids = two_commits_sharing_a_pack(small)
    path = small.store.pack_path(ids["pa"])
    small.close()
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))

    with Ledger.open(small.root, fsync=False) as lg:
        check = lg.verify(full=True)
        assert not check.ok
        text = "\n".join(check.problems)
        assert f"pack {ids['pa'][:12]} is damaged" in text, text
        # A's record is gone: named as B's missing parent.
        assert f"commit {ids['b'][:12]} parent {ids['a'][:12]}" in text, text
        # B's tensor "w" lived in that pack: its chunks are missing, named by path and commit.
        assert f"w chunk 0 in commit {ids['b'][:12]}" in text and "missing" in text, text
        assert "side" not in text and ids["o"][:12] not in text
        # Everything else still restores.
        assert bits(lg.checkout("side")) == bits(random_state(3))
        got = lg.checkout(ids["b"], paths=["b", "seed"])
        assert torch.equal(got["b"], random_state(2)["b"]) and got["seed"] == 2
        with pytest.raises(ObjectMissingError) as missing:
            lg.checkout(ids["b"])
        assert "'w'" in str(missing.value) and ids["b"][:12] in str(missing.value)


@pytest.mark.parametrize("compress", [False, True])
def test_flipped_byte_in_a_chunk(ledger_dir: Path, compress: bool) -> None:
    with Ledger.open(
        ledger_dir, create=True, fsync=False, chunk_size=4096, compress=compress
    ) as lg:
        a = lg.commit(random_state(1), rng=False)
        b = lg.commit(random_state(2), rng=False)
        node = tensor_table(lg.manifest(b.id)[1].root)["w"]
        chunk = node.chunks[3]
        flip_stored_byte(lg, chunk, mask=0x55)

        plain = lg.verify()
        assert plain.ok  # a plain verify checks presence, not content
        check = lg.verify(full=True)
        assert not check.ok
        assert len(check.problems) == 1, check.problems
        (problem,) = check.problems
        assert f"w chunk 3 in commit {b.id[:12]}" in problem, problem
        assert chunk[:12] in problem
        # Reading the damaged tensor fails naming it; everything else is whole.
        with pytest.raises(CorruptionError) as damaged:
            lg.checkout(b.id)
        assert "'w'" in str(damaged.value) and b.id[:12] in str(damaged.value)
        got = lg.checkout(b.id, paths=["b", "seed"])
        assert torch.equal(got["b"], random_state(2)["b"])
        assert bits(lg.checkout(a.id)) == bits(random_state(1))


def test_flipped_byte_in_a_manifest(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    b = small.commit(random_state(2), rng=False)
    c = small.commit(random_state(3), rng=False)
    flip_stored_byte(small, b.manifest, mask=0x55)
    for full in (False, True):
        check = small.verify(full=full)
        assert not check.ok
        assert len(check.problems) == 1, check.problems
        (problem,) = check.problems
        assert f"commit {b.id[:12]}" in problem and "manifest" in problem, problem
        assert b.manifest[:12] in problem
    # History is intact; the other commits restore; B's state is refused, not guessed.
    assert [x.id for x in small.log()] == [c.id, b.id, a.id]
    assert bits(small.checkout(a.id)) == bits(random_state(1)) and bits(
        small.checkout(c.id)
    ) == bits(random_state(3))
    with pytest.raises(CorruptionError):
        small.checkout(b.id)


def test_flipped_byte_in_a_commit_record(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    b = small.commit(random_state(2), rng=False)
    small.commit(random_state(3), rng=False, branch="side")
    flip_stored_byte(small, b.id, mask=0x55)
    with Ledger.open(small.root, fsync=False) as lg:  # no cached record
        check = lg.verify()
        assert not check.ok
        assert any(p.startswith(f"refs/heads/main -> {b.id[:12]}") for p in check.problems)
        assert bits(lg.checkout(a.id)) == bits(random_state(1))
        assert bits(lg.checkout("side")) == bits(random_state(3))


# -- the ref view ---------------------------------------------------------------------------------


def test_repair_rebuilds_a_deleted_view(small: Ledger) -> None:
    small.commit(random_state(1), rng=False)
    small.branch("x")
    view = small.root / "refs"
    good = view.read_bytes()
    view.unlink()
    assert small.verify().ok  # readers replay the log
    check = small.verify(repair=True)
    assert check.ok and any("rebuilt" in r for r in check.repaired)
    assert view.read_bytes() == good


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01garbage", os.urandom(300)])
def test_repair_rebuilds_a_garbled_view(small: Ledger, garbage: bytes) -> None:
    c = small.commit(random_state(1), rng=False)
    view = small.root / "refs"
    good = view.read_bytes()
    view.write_bytes(garbage)
    with Ledger.open(small.root, fsync=False) as lg:
        assert lg.resolve("main") == c.id
        check = lg.verify(repair=True)
        assert check.ok, check.problems
        assert view.read_bytes() == good
        assert bits(lg.checkout("main")) == bits(random_state(1))


def test_a_view_that_disagrees_with_the_log_is_a_problem_repair_fixes(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    b = small.commit(random_state(2), rng=False)
    state = refview_decoder.decode((small.root / "refs").read_bytes())
    lie = RefView(
        offset=state.offset,
        refs={**state.refs, "refs/heads/main": a.id},
        retention=state.retention,
        expired=state.expired,
        digest=state.digest,  # a swapped id under the digest of the true view
    )
    (small.root / "refs").write_bytes(msgpack_encoder.encode(lie))
    assert small.resolve("main") == b.id, "readers check the view against the log"
    check = small.verify()
    assert not check.ok and check.repairable
    assert any("disagrees with the event log" in p for p in check.problems)
    out = run_cli("--dir", str(small.root), "verify")
    assert out.exit_code == 3 and "hint: `ledger verify --repair`" in out.stdout
    check = small.verify(repair=True)
    assert check.ok and check.problems == [] and not check.repairable
    assert small.resolve("main") == b.id
    assert small.verify().ok


# -- crash leftovers ------------------------------------------------------------------------------


def test_orphans_and_tmp_leftovers_are_notes(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False)
    # A commit that crashed after its pack was renamed into place, before its event.
    writer = small.store.writer(small.pool)
    writer.put("chunk", os.urandom(5000))
    writer.put("commit", os.urandom(300))
    writer.finish()
    # A pack that was being written when the process died.
    (small.root / "objects" / "tmp" / ".123-dead.pack").write_bytes(
        HEADER.pack(b"LGPK", 1) + b"partial"
    )
    check = small.verify(full=True)
    assert check.ok and check.problems == []
    assert any("2 stored object(s)" in n and "gc removes them" in n for n in check.notes), (
        check.notes
    )
    assert any("1 temporary file(s)" in n for n in check.notes), check.notes
    assert bits(small.checkout(a.id)) == bits(random_state(1))
    # gc (grace=0) clears both; verify is then silent.
    small.gc(grace=0)
    check = small.verify(full=True)
    assert check.ok and check.notes == []


def test_expired_and_unreachable_objects_are_notes(small: Ledger) -> None:
    small.commit(random_state(1), rng=False)
    small.commit(random_state(2), rng=False, branch="gone")
    small.delete_branch("gone", force=True)
    small.commit(random_state(3), rng=False)
    small.expire("main~1")
    check = small.verify(full=True)
    assert check.ok
    assert any("stored object(s)" in n for n in check.notes)
    assert check.commits_checked == 2
