"""A ledger written by an earlier version (tests/data/ledger-format1) still reads, bit-exactly."""

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


@pytest.fixture
def old_ledger(tmp_path: Path) -> Path:
    copy = tmp_path / "ledger-format1"
    shutil.copytree(DATA / "ledger-format1", copy)
    return copy


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
