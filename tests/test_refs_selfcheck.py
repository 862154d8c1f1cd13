"""The ref view checks itself against the log it was built from (issue 18, format 3).

A ``refs`` file that decodes but disagrees with the event log (a swapped id,
a shifted byte, an offset moved to another frame boundary) must not move a
ref for readers: the view carries the log offset and a blake3 digest of the
log prefix and of its own content; a mismatch means a replay of the whole log,
in memory only (readers never write, so a read-only ledger still reads right).
Views of format 2 (no digest) still decode and are replayed past.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
from helpers import tiny_state
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import Ledger
from ledger.history.records import RefView, msgpack_encoder, refview_decoder

DATA = Path(__file__).parent / "data"


def three_commits(root: Path) -> dict[str, str]:
    with Ledger.open(root, create=True, fsync=False) as lg:
        a = lg.commit(tiny_state(1), rng=False).id
        lg.branch("exp")
        lg.commit(tiny_state(2), rng=False)
        lg.tag("v1", a)
        return lg.refs.replay()


def read_view(root: Path) -> RefView:
    return refview_decoder.decode((root / "refs").read_bytes())


def test_the_view_carries_offset_and_digest(ledger_dir: Path) -> None:
    three_commits(ledger_dir)
    view = read_view(ledger_dir)
    assert view.offset == (ledger_dir / "events.log").stat().st_size
    assert len(view.digest) == 32


@pytest.mark.parametrize("lie", ["swap-main-and-exp", "main-to-tag", "drop-tag", "old-offset"])
def test_a_view_that_decodes_but_disagrees_is_not_believed(ledger_dir: Path, lie: str) -> None:
    truth = three_commits(ledger_dir)
    view = read_view(ledger_dir)
    refs = dict(view.refs)
    if lie == "swap-main-and-exp":
        refs["refs/heads/main"], refs["refs/heads/exp"] = (
            refs["refs/heads/exp"],
            refs["refs/heads/main"],
        )
    elif lie == "main-to-tag":
        refs["refs/heads/main"] = refs["refs/tags/v1"]
    elif lie == "drop-tag":
        del refs["refs/tags/v1"]
    forged = msgspec.structs.replace(
        view, refs=refs, offset=view.offset - (1 if lie == "old-offset" else 0)
    )
    (ledger_dir / "refs").write_bytes(msgpack_encoder.encode(forged))
    with Ledger.open(ledger_dir, fsync=False) as lg:
        assert lg.refs.snapshot() == truth
        assert lg.refs.view_status == "mismatch"
        check = lg.verify()
        assert not check.ok and any("disagrees with the event log" in p for p in check.problems)
        assert lg.verify(repair=True).ok
        assert lg.refs.snapshot() == truth and lg.refs.view_status == "ok"


@settings(max_examples=15)
@given(at=st.integers(min_value=0), mask=st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_of_the_view_never_moves_a_ref(
    tmp_path_factory: pytest.TempPathFactory, at: int, mask: int
) -> None:
    root = tmp_path_factory.mktemp("sc") / "l"
    truth = three_commits(root)
    data = bytearray((root / "refs").read_bytes())
    data[at % len(data)] ^= mask
    (root / "refs").write_bytes(bytes(data))
    with Ledger.open(root, fsync=False) as lg:
        assert lg.refs.snapshot() == truth


def test_readers_rebuild_the_view_in_memory_and_never_write(ledger_dir: Path) -> None:
    """What a read-only file system needs: a bad view costs a replay, never a write."""
    truth = three_commits(ledger_dir)
    view = read_view(ledger_dir)
    refs = {**view.refs, "refs/heads/main": view.refs["refs/tags/v1"]}
    forged = msgpack_encoder.encode(msgspec.structs.replace(view, refs=refs))
    (ledger_dir / "refs").write_bytes(forged)
    with Ledger.open(ledger_dir, fsync=False) as lg:
        for _ in range(3):
            assert lg.refs.snapshot() == truth
        assert next(iter(lg.log("main"))).id == truth["refs/heads/main"]
    assert (ledger_dir / "refs").read_bytes() == forged, "readers never write"


@pytest.mark.parametrize("fixture", ["ledger-format1", "ledger-format2"])
def test_old_views_without_a_digest_still_read_and_get_one_at_the_next_write(
    tmp_path: Path, fixture: str
) -> None:
    root = tmp_path / fixture
    shutil.copytree(DATA / fixture, root)
    assert read_view(root).digest == b""
    with Ledger.open(root, fsync=False) as lg:
        truth = lg.refs.replay()
        assert lg.refs.snapshot() == truth and lg.refs.view_status == "unchecked"
        assert lg.verify().ok
        lg.tag("after", "main")
    view = read_view(root)
    assert len(view.digest) == 32
    with Ledger.open(root, fsync=False) as lg:
        assert lg.refs.snapshot() == {**truth, "refs/tags/after": truth["refs/heads/main"]}
        assert lg.refs.view_status == "ok"
