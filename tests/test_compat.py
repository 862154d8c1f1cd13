"""Ledgers written by earlier versions (tests/data/ledger-format1, -2, -3) still read, bit-exactly."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ledger import Ledger

DATA = Path(__file__).parent / "data"
sys.path.insert(0, str(DATA))
from make_format1 import fixture_state  # noqa: E402
from make_format2 import fixture_files  # noqa: E402
from make_format2 import fixture_state as format2_state  # noqa: E402
from make_format3 import HISTORY as FORMAT3_HISTORY  # noqa: E402

from ledger import File  # noqa: E402
from ledger.history.records import FORMAT_VERSION  # noqa: E402


def _copy(tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name
    shutil.copytree(DATA / name, copy)
    return copy


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    return _copy(tmp_path, "ledger-format1")


@pytest.fixture
def format2_ledger(tmp_path: Path) -> Path:
    return _copy(tmp_path, "ledger-format2")


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))
    )


def test_the_format1_fixture_reads_back_bit_exactly(old_ledger: Path) -> None:
    with Ledger.open(old_ledger) as lg:
        assert lg.verify(full=True).ok
        assert [c.message for c in lg.log("main")] == ["two", "one"]
        assert lg.tags() == {"v1": lg.resolve("main")}
        assert lg.get("exp").parents == [lg.resolve("v1")]
        for rev, step in (("main~1", 1), ("v1", 2), ("exp", 3)):
            tree = lg.checkout(rev)
            want = fixture_state(step)
            for key, value in want["model"].items():
                assert _same_bytes(tree["model"][key], value), key
            model = tree["model"]
            assert (
                model["embed.weight"].untyped_storage().data_ptr()
                == model["head.weight"].untyped_storage().data_ptr()
            )
            np.testing.assert_array_equal(tree["np"], want["np"])
            assert tree["meta"] == want["meta"]
            assert lg.get(rev).step == step


def test_new_code_commits_on_top_of_an_old_ledger(old_ledger: Path) -> None:
    with Ledger.open(old_ledger, fsync=False) as lg:
        c = lg.commit(fixture_state(2), step=4, rng=False)
        assert c.stats.chunks_written == 0  # every chunk already in the old packs
        assert lg.gc(grace=0).objects_freed == 0
        assert lg.verify(full=True).ok


def test_the_format2_fixture_reads_back_bit_exactly_with_its_files(format2_ledger: Path) -> None:
    with Ledger.open(format2_ledger) as lg:
        assert lg.verify(full=True).ok
        assert [c.message for c in lg.log("exp")] == ["three", "two", "one"]
        for rev, step in (("main~1", 1), ("v1", 2), ("exp", 3)):
            tree = lg.checkout(rev)
            for key, value in fixture_state(step)["model"].items():
                assert _same_bytes(tree["model"][key], value), key
            assert tree["meta"] == fixture_state(step)["meta"]
            assert tree["files"] == fixture_files(step)
            assert all(isinstance(f, File) for f in tree["files"].values())


def test_format1_and_format2_ledgers_both_take_new_commits_with_files(
    old_ledger: Path, format2_ledger: Path
) -> None:
    for path in (old_ledger, format2_ledger):
        with Ledger.open(path, fsync=False) as lg:
            before = lg.get("HEAD")
            c = lg.commit({**fixture_state(2), "files": fixture_files(2)}, step=4, rng=False)
            assert lg.record(c.id).format == FORMAT_VERSION == 4
            assert lg.record(before.id).format in (1, 2)
            assert lg.checkout(c.id)["files"] == fixture_files(2)
            assert lg.gc(grace=0).objects_freed == 0
            assert lg.verify(full=True).ok


def test_a_format1_reader_reads_old_commits_and_refuses_format2_ones_saying_to_upgrade(
    old_ledger: Path, format2_ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ledger.errors import FormatVersionError

    with Ledger.open(old_ledger, fsync=False) as lg:
        old = lg.resolve("v1")
        new = lg.commit({"files": fixture_files(1)}, rng=False).id
    for module in ("ledger.api.core", "ledger.api.inputs"):
        monkeypatch.setattr(f"{module}.FORMAT_VERSION", 1)  # what a format-1 reader checks
    with pytest.raises(FormatVersionError, match="upgrade"):
        Ledger.open(format2_ledger)  # a ledger created by format 2
    with Ledger.open(old_ledger) as lg:  # created by format 1, with a format-2 commit on top
        assert lg.checkout(old)["meta"] == fixture_state(2)["meta"]
        with pytest.raises(FormatVersionError, match="upgrade training-ledger"):
            lg.checkout(new)


@pytest.fixture
def format3_ledger(tmp_path: Path) -> Path:
    return _copy(tmp_path, "ledger-format3")


def test_the_format3_fixture_opens_reads_and_verifies_with_one_pack_per_commit(
    format3_ledger: Path,
) -> None:
    with Ledger.open(format3_ledger) as lg:
        assert lg.verify(full=True).ok
        assert len(lg.store.pack_names()) == len(FORMAT3_HISTORY)
        assert [c.message for c in lg.log("main")] == ["five", "four", "two", "one"]
        assert lg.get("exp").parents == [lg.resolve("v1")]
        for step, branch, message in FORMAT3_HISTORY:
            cid = next(c.id for c in lg.log(branch) if c.message == message)
            assert lg.resolve(cid[:8]) == cid
            tree = lg.checkout(cid)
            for key, value in format2_state(step)["model"].items():
                assert _same_bytes(tree["model"][key], value), key
            assert tree["files"] == fixture_files(step)
        assert len(lg.table()) == len(FORMAT3_HISTORY)


def test_a_format3_ledger_takes_commits_and_compacts_into_a_merged_index(
    format3_ledger: Path,
) -> None:
    with Ledger.open(format3_ledger, fsync=False) as lg:
        assert not lg.store.midx_path.exists()
        old = {c.id: c.step for c in lg.log("main")}
        for step in range(6, 10):
            lg.commit(format2_state(step), step=step, rng=False)
        report = lg.compact()
        assert report.packs_after == 1 and lg.store.midx_path.exists()
        assert lg.verify(full=True).ok
    with Ledger.open(format3_ledger) as lg:
        assert lg.store.pack_names() == sorted(lg.store.covered_packs())
        assert {c.id: c.step for c in lg.log("main")}.items() >= old.items()
        for cid, step in old.items():
            assert lg.checkout(cid)["files"] == fixture_files(step)
        assert lg.verify(full=True).ok
