"""A damaged frame inside the event log (intact frames after it): readers refuse it with an
error that names the fix, and ``verify --repair`` sets it aside, keeps every intact frame and
restores what the frame moved from the evidence the commits and the ref view hold.

One flipped byte must not cost a commit (issue 18): before the repair existed the ledger could
not be opened at all and repair answered "restore the log from a copy".
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
import torch

from ledger import Ledger
from ledger.errors import CorruptionError
from ledger.history.eventlog import FRAME, LOG_HEADER

N_COMMITS = 6


def _frames(log: bytes) -> list[tuple[int, int]]:
    """(start, end) of every frame of an intact log."""
    out, cur = [], len(LOG_HEADER)
    while cur < len(log):
        _, length, _ = FRAME.unpack_from(log, cur)
        out.append((cur, cur + FRAME.size + length))
        cur += FRAME.size + length
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict[str, bytes]]:
    root = tmp_path_factory.mktemp("mid") / "ckpt"
    lg = Ledger.open(root, create=True, fsync=False)
    saved: dict[str, bytes] = {}
    for i in range(N_COMMITS):
        c = lg.commit({"w": torch.arange(64, dtype=torch.float32) + i}, step=i)
        saved[c.id] = (torch.arange(64, dtype=torch.float32) + i).numpy().tobytes()
        if i == 2:
            lg.branch("exp", c.id)  # a branch created mid-history, never moved again
    refs = dict(lg.refs.snapshot())
    lg.close()
    return root, refs, saved


def _damaged_copy(base: Path, dest: Path, frame: int) -> tuple[Path, bytes]:
    shutil.copytree(base, dest)
    path = dest / "events.log"
    log = bytearray(path.read_bytes())
    start, end = _frames(bytes(log))[frame]
    log[start + FRAME.size + (end - start - FRAME.size) // 2] ^= 0x20  # inside the payload
    path.write_bytes(bytes(log))
    return dest, bytes(log)


def test_the_log_has_frames_enough_for_the_cases(base: tuple[Path, dict, dict]) -> None:
    frames = _frames((base[0] / "events.log").read_bytes())
    assert len(frames) >= N_COMMITS + 1  # every commit, the branch, the init


@pytest.mark.parametrize("frame", range(N_COMMITS))  # every frame but the last few
def test_repair_sets_a_damaged_inner_frame_aside_and_loses_no_commit_or_ref(
    base: tuple[Path, dict[str, str], dict[str, bytes]], tmp_path: Path, frame: int
) -> None:
    root, refs, saved = base
    frames = _frames((root / "events.log").read_bytes())
    assert frame < len(frames) - 1
    d, damaged = _damaged_copy(root, tmp_path / "ckpt", frame)

    with pytest.raises(CorruptionError, match=r"verify --repair"):
        Ledger.open(d).refs.replay_state()

    lg = Ledger.open(d)
    before = lg.verify()
    assert not before.ok and before.repairable
    assert any("damaged but later events are intact" in p for p in before.problems)

    report = lg.verify(repair=True)
    assert report.ok, report.problems
    assert any("set the damaged event-log frame" in r for r in report.repaired)
    lg.close()

    # Nothing of the old log is gone: the new log and the side file hold every byte.
    sides = sorted(d.glob("events.log.*.aside*"))
    assert len(sides) == 1
    start, end = frames[frame]
    assert sides[0].read_bytes() == damaged[start:end]
    # (a repair may append its own frames after them: HEAD restored, say)
    assert (d / "events.log").read_bytes().startswith(damaged[:start] + damaged[end:])

    lg = Ledger.open(d)
    assert lg.refs.snapshot() == refs  # every ref where it was, the mid-history branch too
    for cid, raw in saved.items():
        assert lg.checkout(cid)["w"].numpy().tobytes() == raw
    assert lg.verify(full=True).ok
    assert lg.commit({"w": torch.zeros(3)}, step=99).parents  # the repaired ledger takes commits


def test_without_repair_nothing_is_written(
    base: tuple[Path, dict[str, str], dict[str, bytes]], tmp_path: Path
) -> None:
    d, damaged = _damaged_copy(base[0], tmp_path / "ckpt", 1)
    files = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != "lock"}
    assert not Ledger.open(d).verify().ok
    after = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != "lock"}
    assert after == files
    assert struct.unpack_from("<4s", damaged, len(LOG_HEADER))[0] == b"LGEV"


def test_repair_rewrites_a_damaged_header_and_keeps_its_bytes(
    base: tuple[Path, dict[str, str], dict[str, bytes]], tmp_path: Path
) -> None:
    root, refs, _ = base
    d = tmp_path / "ckpt"
    shutil.copytree(root, d)
    log = bytearray((d / "events.log").read_bytes())
    log[3] ^= 0x01
    (d / "events.log").write_bytes(bytes(log))
    with pytest.raises(CorruptionError, match="verify --repair"):
        Ledger.open(d).refs.replay_state()
    lg = Ledger.open(d)
    report = lg.verify(repair=True)
    assert report.ok, report.problems
    assert any("damaged event-log header" in r for r in report.repaired)
    lg.close()
    assert (d / "events.log").read_bytes().startswith(LOG_HEADER + bytes(log[len(LOG_HEADER) :]))
    assert [p.read_bytes() for p in d.glob("events.log.0.aside*")] == [bytes(log[:8])]
    assert Ledger.open(d).refs.snapshot() == refs


def test_a_file_that_is_no_log_at_all_is_not_rewritten(tmp_path: Path) -> None:
    lg = Ledger.open(tmp_path / "ckpt", create=True, fsync=False)
    lg.commit({"w": torch.zeros(4)}, step=0)
    lg.close()
    junk = b"not a log, and no frame follows" * 4
    (tmp_path / "ckpt" / "events.log").write_bytes(junk)
    report = Ledger.open(tmp_path / "ckpt").verify(repair=True)
    assert not report.ok and (tmp_path / "ckpt" / "events.log").read_bytes() == junk
