"""A damaged last event-log frame costs no commit (issue 18, "One bad byte must not cost a commit").

* readers ignore a bad last frame (full length, failing its checksum) and the ledger opens;
* the next writer sets the frame aside in ``events.log.<offset>.aside``: never thrown away;
* verify reports a problem naming the intact commit the lost event moved a ref to;
* gc keeps that commit until repair; ``verify --repair`` restores the ref from the
  commit objects (they name their parents and branch) and says so;
* a commit the frame named that is damaged is reported, never restored;
* a bad frame anywhere else is corruption naming its byte offset;
* hypothesis: any flipped byte or cut in the last frame, same outcome.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from helpers import bits, flip_byte, flip_stored_byte, random_state
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger
from ledger.errors import CorruptionError
from ledger.history.eventlog import FRAME, LOG_HEADER

FRAME_HEAD = struct.Struct("<4sII")


def frames(log: Path) -> list[tuple[int, int]]:
    """(start, end) of every intact frame of ``log``."""
    data = log.read_bytes()
    pos, out = len(LOG_HEADER), []
    while pos + FRAME.size <= len(data):
        magic, length, crc = FRAME_HEAD.unpack_from(data, pos)
        end = pos + FRAME.size + length
        if magic != b"LGEV" or end > len(data) or zlib.crc32(data[pos + FRAME.size : end]) != crc:
            break
        out.append((pos, end))
        pos = end
    return out


def two_commits(lg: Ledger) -> tuple[str, str]:
    a = lg.commit(random_state(1), rng=False).id
    b = lg.commit(random_state(2), rng=False).id
    return a, b


def flip_last_frame(root: Path, at: int = -1) -> tuple[int, bytes]:
    """Flip one bit in the payload of the last frame; return its offset and damaged bytes."""
    log = root / "events.log"
    start, end = frames(log)[-1]
    flip_byte(log, end + at if at < 0 else start + at, 0x01)
    return start, log.read_bytes()[start:]


@pytest.mark.parametrize("where", ["payload-last", "payload-first", "crc"])
def test_bad_last_frame_loses_no_commit(small: Ledger, where: str) -> None:
    a, b = two_commits(small)
    at = {"payload-last": -1, "payload-first": FRAME.size, "crc": 9}[where]
    offset, damaged = flip_last_frame(small.root, at)

    with Ledger.open(small.root, fsync=False) as lg:
        # Readers ignore the frame: the ledger opens, main is where the intact log left it.
        assert lg.resolve("main") == a
        check = lg.verify()
        assert not check.ok and check.repairable
        lost = [p for p in check.problems if b[:12] in p and "refs/heads/main" in p]
        assert lost and "intact" in lost[0], check.problems
        # gc keeps the lost commit (it would have deleted it before the fix).
        lg.gc(grace=0)
        assert lg.verify(full=True).problems == check.problems
        # The next writer sets the frame aside, never throws it away.
        lg.tag("t", a)
        side = lg.root / f"events.log.{offset}.aside"
        assert side.read_bytes() == damaged
        assert frames(lg.root / "events.log")[-1][1] == (lg.root / "events.log").stat().st_size
        # Repair restores main from the commit objects and says what it did.
        fixed = lg.verify(repair=True)
        assert fixed.ok, fixed.problems
        assert any("restored refs/heads/main" in r and b[:12] in r for r in fixed.repaired)
        assert lg.resolve("main") == b
        assert bits(lg.checkout("main")) == bits(random_state(2))
        after = lg.verify(full=True)
        assert after.ok and after.notes == [], after
        # The side file is kept (renamed once dealt with), never deleted.
        assert (lg.root / f"events.log.{offset}.aside.kept").read_bytes() == damaged


def test_repair_of_a_tail_still_in_the_log_sets_it_aside(small: Ledger) -> None:
    _, b = two_commits(small)
    offset, damaged = flip_last_frame(small.root)
    check = small.verify(repair=True)
    assert check.ok, check.problems
    assert any("torn" in r and f"events.log.{offset}.aside" in r for r in check.repaired)
    assert small.resolve("main") == b
    assert (small.root / f"events.log.{offset}.aside.kept").read_bytes() == damaged


def test_a_lost_branch_creation_is_restored(small: Ledger) -> None:
    a = small.commit(random_state(1), rng=False).id
    c = small.commit(random_state(3), rng=False, branch="exp").id
    flip_last_frame(small.root)
    with Ledger.open(small.root, fsync=False) as lg:
        assert "exp" not in lg.branches()
        check = lg.verify()
        assert any("refs/heads/exp" in p and c[:12] in p for p in check.problems), check.problems
        assert lg.verify(repair=True).ok
        assert lg.resolve("exp") == c and lg.resolve("main") == a


def test_a_damaged_lost_commit_is_reported_not_restored(small: Ledger) -> None:
    a, b = two_commits(small)
    chunk = small.record(b).manifest
    flip_last_frame(small.root)
    flip_stored_byte(small, chunk, mask=0x55)  # b's manifest: b is not intact
    check = small.verify(repair=True)
    assert not check.ok
    assert any(b[:12] in p and "damaged" in p and "--from" in p for p in check.problems), check
    assert small.resolve("main") == a, "a ref is never moved onto damage"
    assert list(small.root.glob("events.log.*.aside")), "kept as evidence until resolved"


def test_a_torn_tail_that_cost_nothing_is_a_note(small: Ledger) -> None:
    a, _ = two_commits(small)
    small.tag("v1", a)
    flip_last_frame(small.root)  # the tag's event: the tag points at a reachable commit
    check = small.verify()
    assert check.ok, check.problems
    assert any("torn tail" in n for n in check.notes)


def test_a_bad_middle_frame_is_corruption_naming_the_offset(small: Ledger) -> None:
    two_commits(small)
    log = small.root / "events.log"
    start, _ = frames(log)[1]
    flip_byte(log, start + FRAME.size + 1, 0x01)
    (small.root / "refs").unlink()
    with pytest.raises(CorruptionError, match=rf"byte {start}\b"):
        small.resolve("main")
    check = small.verify()
    assert not check.ok and any(f"byte {start}" in p for p in check.problems)


@settings(max_examples=15)
@given(data=st.data())
def test_any_damage_to_the_last_frame_loses_no_commit(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    """Flip any byte of the last frame, or cut it anywhere: opens, and repair restores main."""
    root = tmp_path_factory.mktemp("tail") / "l"
    with Ledger.open(root, create=True, fsync=False, chunk_size=4096) as lg:
        a, b = two_commits(lg)
    log = root / "events.log"
    start, end = frames(log)[-1]
    if data.draw(st.booleans(), label="cut"):
        cut = data.draw(st.integers(start + 1, end - 1), label="at")
        with open(log, "r+b") as f:
            f.truncate(cut)
    else:
        at = data.draw(st.integers(start, end - 1), label="at")
        flip_byte(log, at, data.draw(st.integers(1, 255), label="mask"))
    with Ledger.open(root, fsync=False) as lg:
        assert lg.resolve("main") == a
        check = lg.verify()
        assert any(b[:12] in p for p in check.problems), check.problems
        assert lg.verify(repair=True).ok
        assert lg.resolve("main") == b
