"""Refs are a view of the append-only event log, moved only by compare-and-swap.

Proves design invariants 2 (torn event-log tail detected, ignored by readers,
cut off by the next writer; a damaged middle frame is corruption) and 3 (ref
updates are compare-and-swap; the loser of a race gets a clear conflict
error, never a silent overwrite), and that ``<ledger>/refs`` is only a cache
that can always be rebuilt by replaying ``<ledger>/events.log``.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tempfile
import textwrap
import time
import zlib
from pathlib import Path
from typing import Any

import msgspec
import pytest
import torch
from helpers import tiny_state
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import Ledger
from ledger.errors import CorruptionError, RefConflictError
from ledger.history.records import (
    RefUpdate,
    RefView,
    events_decoder,
    msgpack_encoder,
    stored_view_body,
    utcnow,
    view_body,
)

HEADER = b"LGEVLOG1"
FRAME = struct.Struct("<4sII")


def frame_bounds(log: Path) -> list[tuple[int, int]]:
    """(start, end) of every frame in an intact log, parsed from the documented format."""
    data = log.read_bytes()
    assert data[: len(HEADER)] == HEADER
    out = []
    pos = len(HEADER)
    while pos < len(data):
        magic, length, crc = FRAME.unpack_from(data, pos)
        assert magic == b"LGEV"
        payload = data[pos + FRAME.size : pos + FRAME.size + length]
        assert zlib.crc32(payload) == crc
        out.append((pos, pos + FRAME.size + length))
        pos += FRAME.size + length
    assert pos == len(data), "the log does not end at a frame boundary"
    return out


def decode_events(log: Path) -> list[RefUpdate]:
    """Every event of an intact log, decoded by the test's own frame parser."""
    data = log.read_bytes()
    return [
        ev for s, e in frame_bounds(log) for ev in events_decoder.decode(data[s + FRAME.size : e])
    ]


def make_frame(event: RefUpdate) -> bytes:
    """One complete, valid frame for ``event``."""
    payload = msgpack_encoder.encode([event])
    return FRAME.pack(b"LGEV", len(payload), zlib.crc32(payload)) + payload


def everything(lg: Ledger) -> dict[str, Any]:
    """Everything a user can see of the refs: names, HEAD, resolutions, logs."""
    refs = lg.refs.snapshot()
    names = ["HEAD", "main", "main~1", *lg.branches(), *lg.tags()]
    return {
        "refs": refs,
        "branch": lg.current_branch,
        "head": None if lg.head is None else lg.head.id,
        "resolved": {n: lg.resolve(n) for n in names},
        "logs": {b: [c.id for c in lg.log(b)] for b in lg.branches()},
    }


def populated(lg: Ledger) -> list[str]:
    """A ledger with two branches, a tag and a detached HEAD."""
    ids = [lg.commit(tiny_state(i), rng=False).id for i in range(3)]
    lg.branch("exp", at="main~1")
    lg.switch("exp")
    ids.append(lg.commit(tiny_state(10), rng=False).id)
    lg.tag("v1", at="main")
    lg.switch("v1")
    return ids


# -- the view is a cache ------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    ["delete", "garble", "empty", "truncate", "future-offset", "mid-frame-offset", "zero-offset"],
)
def test_refs_view_can_be_lost_or_damaged(ledger_dir: Path, damage: str) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        populated(lg)
        expected = everything(lg)
        assert lg.refs.replay() == expected["refs"]
    view = ledger_dir / "refs"
    original = view.read_bytes()
    if damage == "delete":
        view.unlink()
    elif damage == "garble":
        view.write_bytes(random.Random(1).randbytes(len(original)))
    elif damage == "empty":
        view.write_bytes(b"")
    elif damage == "truncate":
        view.write_bytes(original[: len(original) // 2])
    else:  # well-formed views that do not match this log (e.g. copied from another ledger)
        offset = {"future-offset": 10**9, "mid-frame-offset": len(HEADER) + 1, "zero-offset": 0}
        bogus = RefView(offset=offset[damage], refs={"HEAD": "x" * 64, "refs/tags/bogus": "y" * 64})
        view.write_bytes(msgpack_encoder.encode(bogus))
    with Ledger.open(ledger_dir) as lg:
        assert everything(lg) == expected
        # The next write rebuilds the view, and the ledger keeps working.
        c = lg.commit(tiny_state(99), rng=False, branch="exp")
        assert lg.resolve("exp") == c.id
    assert view.read_bytes() != b""
    with Ledger.open(ledger_dir) as lg:
        assert lg.refs.snapshot() == lg.refs.replay()
        assert lg.resolve("exp~1") == expected["resolved"]["exp"]


def test_stale_view_catches_up_from_the_log(ledger_dir: Path) -> None:
    """A view written before later events is extended by replaying only what follows it."""
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit(tiny_state(0), rng=False)
        old_view = (ledger_dir / "refs").read_bytes()
        populated(lg)
        expected = everything(lg)
    (ledger_dir / "refs").write_bytes(old_view)
    with Ledger.open(ledger_dir) as lg:
        assert everything(lg) == expected


def test_every_ref_change_is_an_event(lg: Ledger) -> None:
    ids = populated(lg)
    events = decode_events(lg.root / "events.log")
    assert events[0].ref == "HEAD" and events[0].old is None
    assert events[0].new == "ref: refs/heads/main"
    # Replaying the decoded events by hand gives the refs.
    refs: dict[str, str] = {}
    for ev in events:
        assert refs.get(ev.ref) == ev.old, "an event's old value must be what the ref held"
        if ev.new is None:
            refs.pop(ev.ref, None)
        else:
            refs[ev.ref] = ev.new
    assert refs == lg.refs.snapshot()
    assert refs["refs/heads/exp"] == ids[3]
    assert all(ev.time.utcoffset() is not None for ev in events)


# -- replay == snapshot under random operations --------------------------------------


class RefsMachine(RuleBasedStateMachine):
    """Random ledger operations, checked against a model of the refs and against replay."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ledger-refs-"))
        self.root = self.dir / "ckpt"
        self.lg = Ledger.open(self.root, create=True, fsync=False)
        self.model: dict[str, str] = {"HEAD": "ref: refs/heads/main"}
        self.n = 0
        self.made: list[str] = []

    def teardown(self) -> None:
        self.lg.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def commits(self) -> list[str]:
        # Creation order, not id order: ids contain a timestamp, and hypothesis
        # needs the same draws to pick the same commits when it replays a case.
        return list(self.made)

    def head_branch(self) -> str | None:
        head = self.model["HEAD"]
        return head[len("ref: refs/heads/") :] if head.startswith("ref: ") else None

    def branches(self) -> list[str]:
        return sorted(k[len("refs/heads/") :] for k in self.model if k.startswith("refs/heads/"))

    @precondition(lambda self: self.head_branch() is not None)
    @rule()
    def commit_on_head(self) -> None:
        self.n += 1
        ref = f"refs/heads/{self.head_branch()}"
        c = self.lg.commit(tiny_state(self.n), rng=False)
        assert c.parents == ([self.model[ref]] if ref in self.model else [])
        self.model[ref] = c.id
        self.made.append(c.id)

    @precondition(lambda self: bool(self.branches()))
    @rule(data=st.data())
    def commit_to_existing_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.branches()))
        self.n += 1
        c = self.lg.commit(tiny_state(self.n), rng=False, branch=name)
        assert c.parents == [self.model["refs/heads/" + name]]
        self.model["refs/heads/" + name] = c.id
        self.made.append(c.id)

    @precondition(lambda self: bool(self.commits()))
    @rule(name=st.sampled_from(["a", "b", "exp/1", "c.d"]), data=st.data())
    def create_branch(self, name: str, data: st.DataObject) -> None:
        if "refs/heads/" + name in self.model:
            return
        at = data.draw(st.sampled_from(self.commits()))
        self.lg.branch(name, at=at)
        self.model["refs/heads/" + name] = at

    @precondition(lambda self: bool(self.commits()))
    @rule(name=st.sampled_from(["v1", "v2", "best"]), data=st.data())
    def create_tag(self, name: str, data: st.DataObject) -> None:
        if "refs/tags/" + name in self.model:
            return
        at = data.draw(st.sampled_from(self.commits()))
        self.lg.tag(name, at=at)
        self.model["refs/tags/" + name] = at

    @precondition(lambda self: bool(self.branches()))
    @rule(data=st.data())
    def switch_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(self.branches()))
        self.lg.switch(name)
        self.model["HEAD"] = "ref: refs/heads/" + name

    @precondition(lambda self: bool(self.commits()))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        cid = data.draw(st.sampled_from(self.commits()))
        self.lg.switch(cid)
        self.model["HEAD"] = cid

    @precondition(lambda self: len(self.branches()) > 1)
    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        candidates = [b for b in self.branches() if b != self.head_branch()]
        if not candidates:
            return
        name = data.draw(st.sampled_from(candidates))
        ref = "refs/heads/" + name
        self.lg.refs.update({ref: (self.model[ref], None)}, f"delete {name}")
        del self.model[ref]

    @rule(data=st.data())
    def stale_cas_fails(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(["refs/heads/main", "refs/heads/a", "refs/tags/v1"]))
        wrong = "0" * 64 if self.model.get(ref) != "0" * 64 else None
        with pytest.raises(RefConflictError):
            self.lg.refs.update({ref: (wrong, "1" * 64)}, "stale")

    @rule()
    def reopen(self) -> None:
        self.lg.close()
        self.lg = Ledger.open(self.root, fsync=False)

    @rule(garble=st.booleans())
    def lose_view(self, garble: bool) -> None:
        view = self.root / "refs"
        if garble:
            view.write_bytes(b"\xc1" * 17)
        else:
            view.unlink(missing_ok=True)

    @invariant()
    def view_matches_log_and_model(self) -> None:
        snap = self.lg.refs.snapshot()
        assert snap == self.model
        assert self.lg.refs.replay() == snap
        frame_bounds(self.root / "events.log")


TestRefsMachine = RefsMachine.TestCase
TestRefsMachine.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)


# -- compare-and-swap ---------------------------------------------------------------------


def test_stale_cas_raises_and_changes_nothing(lg: Ledger) -> None:
    a = lg.commit(tiny_state(1), rng=False).id
    b = lg.commit(tiny_state(2), rng=False).id
    log = lg.root / "events.log"
    before_log, before_refs = log.read_bytes(), lg.refs.snapshot()
    with pytest.raises(RefConflictError, match="branch 'main'") as info:
        lg.refs.update({"refs/heads/main": (a, "f" * 64)}, "stale")
    assert "re-read and retry" in str(info.value)
    # Creating a ref that exists, and a multi-ref update with one stale part: all or nothing.
    with pytest.raises(RefConflictError):
        lg.refs.update({"refs/heads/main": (None, a)}, "create")
    with pytest.raises(RefConflictError):
        lg.refs.update({"refs/tags/ok": (None, a), "refs/heads/main": (a, "f" * 64)}, "multi")
    assert log.read_bytes() == before_log, "a refused update wrote to the event log"
    assert lg.refs.snapshot() == before_refs
    assert lg.resolve("main") == b
    assert "ok" not in lg.tags()
    # The same update with the right expectation goes through.
    lg.refs.update({"refs/heads/main": (b, a)}, "reset")
    assert lg.resolve("main") == a


def test_second_instance_with_stale_tip_loses(ledger_dir: Path) -> None:
    with (
        Ledger.open(ledger_dir, create=True, fsync=False) as one,
        Ledger.open(ledger_dir, fsync=False) as two,
    ):
        base = one.commit(tiny_state(0), rng=False).id
        tip_seen_by_two = two.resolve("main")
        won = one.commit(tiny_state(1), rng=False)
        with pytest.raises(RefConflictError):
            two.refs.update({"refs/heads/main": (tip_seen_by_two, base)}, "stale writer")
        assert two.resolve("main") == won.id
        assert one.resolve("main") == won.id


def test_commit_race_in_one_process_loser_gets_conflict(
    ledger_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rival commits between this writer's read of the tip and its compare-and-swap."""
    with (
        Ledger.open(ledger_dir, create=True, fsync=False) as slow,
        Ledger.open(ledger_dir, fsync=False) as fast,
    ):
        base = slow.commit(tiny_state(0), rng=False).id
        commits_before = {oid.hex() for oid in slow.store.ids("commit")}
        real_update = slow.refs.update
        rival: list[str] = []

        def update_after_rival(changes: dict[str, Any], reason: str, *a: Any, **kw: Any) -> None:
            if not rival and "refs/heads/main" in changes:
                rival.append(fast.commit(tiny_state(50), rng=False).id)
            real_update(changes, reason, *a, **kw)

        monkeypatch.setattr(slow.refs, "update", update_after_rival)
        with pytest.raises(RefConflictError, match="branch 'main'"):
            slow.commit({"w": torch.arange(100.0)}, rng=False)
        monkeypatch.undo()
        (won,) = rival
        assert slow.resolve("main") == won
        assert slow.get(won).parents == [base]
        # The loser's objects were written (unreferenced), the winner's commit is on main.
        slow.store.refresh()
        new = {oid.hex() for oid in slow.store.ids("commit")} - commits_before
        assert len(new) == 2
        (lost,) = new - {won}
        assert slow.get(lost).parents == [base]
        assert lost not in {c.id for c in slow.log("main")}
        assert torch.equal(slow.checkout(lost)["w"], torch.arange(100.0))
        # A retry re-reads the tip and lands on top of the winner.
        retry = slow.commit({"w": torch.arange(100.0)}, rng=False)
        assert [c.id for c in slow.log()] == [retry.id, won, base]


RACER = textwrap.dedent(
    """
    import sys, time, pathlib, torch
    from ledger import Ledger
    from ledger.errors import RefConflictError

    root, me, sync = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])

    with Ledger.open(root, fsync=True) as lg:
        real_update = lg.refs.update

        def gated(changes, reason, *args, **kwargs):
            # This commit has read the tip and written its objects; hold its
            # compare-and-swap until the other process has got this far too.
            if "refs/heads/main" in changes:
                (sync / ("ready-" + me)).touch()
                deadline = time.monotonic() + 60
                while not (sync / "go").exists():
                    if time.monotonic() > deadline:
                        raise SystemExit("no go signal")
                    time.sleep(0.001)
            return real_update(changes, reason, *args, **kwargs)

        lg.refs.update = gated
        try:
            c = lg.commit({"w": torch.full((5000,), float(len(me)))}, rng=False)
        except RefConflictError as e:
            print("lost", e, flush=True)
        else:
            print("won", c.id, c.parents[0], flush=True)
    """
)


def test_two_processes_race_for_one_branch(ledger_dir: Path, tmp_path: Path, python: str) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=True) as lg:
        base = lg.commit(tiny_state(0), rng=False).id
    sync = tmp_path / "sync"
    sync.mkdir()
    procs = [
        subprocess.Popen(
            [python, "-c", RACER, str(ledger_dir), who, str(sync)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for who in ("a", "bb")
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((sync / f"ready-{w}").exists() for w in ("a", "bb")):
            assert time.monotonic() < deadline, "racers never read the tip"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.01)
        (sync / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), outs
    lines = sorted(out.strip() for out, _ in outs)
    assert [ln.split()[0] for ln in lines] == ["lost", "won"], lines
    _, winner, parent = lines[1].split()
    assert parent == base
    assert "branch 'main'" in lines[0]
    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert lg.resolve("main") == winner
        assert [c.id for c in lg.log()] == [winner, base]
        # The loser's commit exists but is unreferenced; every stored commit still reads back.
        all_commits = {oid.hex() for oid in lg.store.ids("commit")}
        (loser,) = all_commits - {winner, base}
        assert lg.get(loser).parents == [base]
        for cid in all_commits:
            assert lg.checkout(cid)["w"].numel() in (3, 5000)
        assert lg.refs.replay() == lg.refs.snapshot()
        frame_bounds(ledger_dir / "events.log")
        retry = lg.commit(tiny_state(7), rng=False)
        assert retry.parents == [winner]


# -- torn tail ------------------------------------------------------------------------


def torn_tails() -> dict[str, bytes]:
    """Byte strings a crash mid-append could leave after the last complete frame."""
    frame = make_frame(
        RefUpdate(ref="refs/heads/main", old=None, new="e" * 64, time=utcnow(), reason="torn")
    )
    bad_crc = bytearray(frame)
    bad_crc[-1] ^= 0xFF
    return {
        "garbage": random.Random(7).randbytes(37),
        "zeros": b"\0" * 4096,
        "magic-only": b"LGEV",
        "half-header": frame[:6],
        "header-only": frame[: FRAME.size],
        "half-frame": frame[: len(frame) // 2],
        "all-but-one-byte": frame[:-1],
        "bad-crc": bytes(bad_crc),
    }


@pytest.mark.parametrize("tail", list(torn_tails()))
@pytest.mark.parametrize("view", ["kept", "deleted"])
def test_torn_tail_is_ignored_then_cut_by_next_writer(
    ledger_dir: Path, tail: str, view: str
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=True) as lg:
        populated(lg)
        expected = everything(lg)
    log = ledger_dir / "events.log"
    valid = log.read_bytes()
    n_events = len(frame_bounds(log))
    with open(log, "ab") as f:
        f.write(torn_tails()[tail])
    if view == "deleted":
        (ledger_dir / "refs").unlink()

    with Ledger.open(ledger_dir, fsync=True) as lg:
        # Readers ignore the torn tail and change nothing on disk.
        assert everything(lg) == expected
        assert lg.refs.replay() == expected["refs"]
        assert lg.refs.torn_bytes == len(torn_tails()[tail])
        assert log.read_bytes().startswith(valid) and log.stat().st_size > len(valid)
        # The next writer cuts the tail off before appending.
        c = lg.commit(tiny_state(5), rng=False, branch="exp")
    data = log.read_bytes()
    assert data.startswith(valid)
    bounds = frame_bounds(log)  # asserts the file ends at a frame boundary
    assert len(bounds) == n_events + 1
    assert bounds[-1][0] == len(valid), "the new event must start where the valid log ended"
    last = decode_events(log)[-1]
    assert (last.ref, last.old, last.new) == (
        "refs/heads/exp",
        expected["refs"]["refs/heads/exp"],
        c.id,
    )
    with Ledger.open(ledger_dir) as lg:
        assert lg.refs.replay() == lg.refs.snapshot()
        assert lg.resolve("exp") == c.id
        assert lg.refs.torn_bytes == 0


@pytest.mark.parametrize("where", ["magic", "length", "crc", "payload-first", "payload-last"])
def test_damaged_middle_frame_is_corruption(ledger_dir: Path, where: str) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        populated(lg)
    log = ledger_dir / "events.log"
    bounds = frame_bounds(log)
    start, end = bounds[len(bounds) // 2]
    offset = {
        "magic": start + 1,
        "length": start + 4,
        "crc": start + 9,
        "payload-first": start + FRAME.size,
        "payload-last": end - 1,
    }[where]
    data = bytearray(log.read_bytes())
    data[offset] ^= 0x5A
    log.write_bytes(bytes(data))
    damaged = log.read_bytes()

    with Ledger.open(ledger_dir) as lg:
        with pytest.raises(CorruptionError, match=r"later events are intact|cannot be decoded"):
            lg.refs.replay()
        # With the cache gone, every read goes through the log and refuses.
        (ledger_dir / "refs").unlink()
        with pytest.raises(CorruptionError):
            lg.resolve("main")
        with pytest.raises(CorruptionError):
            _ = lg.head
        # A writer must not "repair" it by cutting the damaged frame and what follows.
        with pytest.raises(CorruptionError):
            lg.commit(tiny_state(3), rng=False)
        with pytest.raises(CorruptionError):
            lg.refs.update({"refs/tags/x": (None, "a" * 64)}, "x")
    assert log.read_bytes() == damaged


def test_damaged_header_is_corruption(lg: Ledger) -> None:
    lg.commit(tiny_state(0), rng=False)
    log = lg.root / "events.log"
    data = bytearray(log.read_bytes())
    data[0] ^= 1
    log.write_bytes(bytes(data))
    (lg.root / "refs").unlink()
    with pytest.raises(CorruptionError, match="bad header"):
        lg.refs.snapshot()


def test_readers_see_the_log_written_by_another_instance(ledger_dir: Path) -> None:
    """Refs are checked on disk on every call: a read is reused only while neither the log
    nor the view changed (every move appends to the log)."""
    with (
        Ledger.open(ledger_dir, create=True, fsync=False) as a,
        Ledger.open(ledger_dir, fsync=False) as b,
    ):
        c = a.commit(tiny_state(0), rng=False)
        assert b.resolve("main") == c.id
        b.branch("exp")
        b.switch("exp")
        assert a.current_branch == "exp"
        d = a.commit(tiny_state(1), rng=False)
        assert b.branches() == {"exp": d.id, "main": c.id}
        assert os.path.exists(ledger_dir / "lock")


def test_a_reused_read_of_the_refs_is_a_copy_and_a_damaged_view_is_still_caught(
    ledger_dir: Path,
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        c = lg.commit(tiny_state(0), rng=False)
        lg.branch("exp")
        mine = lg.refs.snapshot()
        mine["refs/heads/main"] = "0" * 64  # a caller's dict is its own
        assert lg.refs.snapshot()["refs/heads/main"] == c.id
        # another writer's view that lies (a swapped id, same size) is caught, not reused
        view = ledger_dir / "refs"
        data = view.read_bytes()
        (ledger_dir / "refs.tmp").write_bytes(data.replace(c.id.encode(), b"f" * 64))
        os.replace(ledger_dir / "refs.tmp", view)  # as a writer replaces it: a new file
        assert lg.refs.snapshot() == {
            "HEAD": "ref: refs/heads/main",
            "refs/heads/main": c.id,
            "refs/heads/exp": c.id,
        }
        assert lg.refs.view_status == "mismatch"


def test_a_view_written_in_another_key_order_is_still_trusted(ledger_dir: Path) -> None:
    """A view's digest is checked on its bytes as stored (written in key order), else on its
    content encoded again: a view an older writer wrote (insertion order) still checks."""
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        c = lg.commit(tiny_state(0), rng=False)
        for name in ("zeta", "alpha", "mid"):
            lg.branch(name)
    view_file = ledger_dir / "refs"
    view = msgspec.msgpack.decode(view_file.read_bytes(), type=RefView)
    shuffled = msgspec.structs.replace(view, refs=dict(reversed(list(view.refs.items()))))
    other_order = msgpack_encoder.encode(shuffled)
    assert other_order != view_file.read_bytes()  # the same view in other bytes,
    assert stored_view_body(other_order) != view_body(view)  # so the digest needs a re-encode
    view_file.write_bytes(other_order)
    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert lg.refs.snapshot()["refs/heads/alpha"] == c.id
        assert lg.refs.view_status == "ok"
