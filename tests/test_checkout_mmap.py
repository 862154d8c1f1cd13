"""``checkout(mmap=True)``: tensors mapped copy-on-write from their packs, every byte hashed.

What must hold:

* the same values as the default checkout, for every dtype, odd sizes, tensors
  of many chunks, tied tensors and numpy arrays; chunks that are compressed or
  not back to back in one pack are read as usual;
* tensors whose bytes dedup to the same place in a pack (equal tensors, or one
  whose chunk is another's) are still separate tensors: writing to one never
  changes another, as with the default checkout;
* mapped tensors really are views of the pack file (no copy), and writing to
  them changes neither the pack nor a later checkout;
* a damaged chunk fails the checkout, naming the tensor, as the default does;
* a gc that deletes the pack, or repacks its live chunks elsewhere, leaves the
  mapped tensors intact.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import bits, flip_stored_byte

from ledger import Ledger
from ledger.errors import CorruptionError

CHUNK = 4096


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(
        tmp_path / "raw", create=True, fsync=False, chunk_size=CHUNK, compress=False
    ) as lg:
        yield lg


def state(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    tied = torch.randn(33, 17, generator=g)
    return {
        "model": {
            "big": torch.randn(3 * CHUNK + 5, generator=g),  # four chunks, a ragged tail
            "tied_a": tied,
            "tied_b": tied,  # stored once, an alias
            "f64": torch.randn(129, generator=g, dtype=torch.float64),
            "bf16": torch.randn(1001, generator=g).to(torch.bfloat16),
            "i8": torch.randint(-128, 127, (77,), generator=g, dtype=torch.int8),
            "f64_after_odd": torch.randn(9, generator=g, dtype=torch.float64),  # misaligned
            "bool": torch.rand(50, generator=g) > 0.5,
            "c64": torch.randn(40, generator=g, dtype=torch.complex64),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 4),
        },
        "arr": np.arange(1000, dtype=np.int16),
        "step": 7,
    }


def pack_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of ``.pack`` files (Linux)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".pack"):
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def mapped(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    return any(lo <= t.data_ptr() < hi for lo, hi in ranges)


def test_mapped_checkout_equals_the_default_for_every_kind_of_value(raw: Ledger) -> None:
    c = raw.commit(state(), rng=False)
    expected = bits(raw.checkout(c.id))
    got = raw.checkout(c.id, mmap=True)
    assert bits(got) == expected == bits(state())
    model = got["model"]
    assert model["tied_a"].data_ptr() == model["tied_b"].data_ptr()  # still one tensor
    for name, t in model.items():  # f64_after_odd lies at an odd offset: copied, aligned
        assert t.data_ptr() % t.element_size() == 0, name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_mapped_tensors_are_views_of_the_pack_and_writes_stay_private(raw: Ledger) -> None:
    c = raw.commit(state(), rng=False)
    (pack,) = (raw.root / "objects" / "packs").glob("*.pack")
    on_disk = pack.read_bytes()
    got = raw.checkout(c.id, mmap=True)
    ranges = pack_mappings()
    big = got["model"]["big"]
    assert mapped(big, ranges)
    assert not mapped(raw.checkout(c.id)["model"]["big"], ranges)  # the default copies
    big.add_(1.0)  # copy-on-write: only this process's pages change
    got["arr"][:] = 0
    assert pack.read_bytes() == on_disk
    assert bits(raw.checkout(c.id, mmap=True)) == bits(state())
    assert raw.verify(full=True).ok


def test_tensors_whose_bytes_dedup_to_one_place_stay_separate(raw: Ledger) -> None:
    g = torch.Generator().manual_seed(1)
    long = torch.randn(3 * CHUNK // 4, generator=g)  # three chunks
    s = {
        "a": torch.tensor(0.0),
        "b": torch.zeros(2, dtype=torch.int16),  # the same 4 bytes as "a"
        "long": long,
        "second": long[CHUNK // 4 : CHUNK // 2].clone(),  # long's second chunk, alone
        "copy": long.clone(),  # equal to long, not tied to it
    }
    c = raw.commit(s, rng=False)
    got = raw.checkout(c.id, mmap=True)
    assert bits(got) == bits(s)
    storages = {k: t.untyped_storage().data_ptr() for k, t in got.items()}
    assert len(set(storages.values())) == len(storages), storages
    for name in s:
        fresh = raw.checkout(c.id, mmap=True)
        fresh[name].reshape(-1).view(torch.uint8).fill_(0xFF)
        others = {k: v for k, v in fresh.items() if k != name}
        assert bits(others) == bits({k: v for k, v in s.items() if k != name}), name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_compressed_or_scattered_chunks_are_read_instead(tmp_path: Path) -> None:
    with Ledger.open(
        tmp_path / "z", create=True, fsync=False, chunk_size=CHUNK, compress=True
    ) as lg:
        s = {"zeros": torch.zeros(4 * CHUNK), "noise": torch.randn(4 * CHUNK)}
        c = lg.commit(s, rng=False)
        got = lg.checkout(c.id, mmap=True)
        assert bits(got) == bits(s)
        assert not mapped(got["zeros"], pack_mappings())  # zeros compress: decoded into memory
    with Ledger.open(
        tmp_path / "r", create=True, fsync=False, chunk_size=CHUNK, compress=False
    ) as lg:
        s = {"w": torch.randn(4 * CHUNK)}
        lg.commit(s, rng=False)
        s["w"][CHUNK : 2 * CHUNK] += 1  # one chunk in a new pack, three in the old one
        c = lg.commit(s, rng=False)
        got = lg.checkout(c.id, mmap=True)
        assert bits(got) == bits(s)
        assert not mapped(got["w"], pack_mappings())


def test_a_damaged_chunk_fails_the_mapped_checkout_naming_the_tensor(raw: Ledger) -> None:
    c = raw.commit(state(), rng=False)
    node = raw.manifest(c.id)[1].root
    model = node.values[node.keys.index("model")]
    big = model.values[model.keys.index("big")]
    flip_stored_byte(raw, big.chunks[2], at=100, mask=0x01)
    with pytest.raises(CorruptionError, match=r"model.*big.*fails its hash check"):
        raw.checkout(c.id, mmap=True)


def test_mapped_tensors_outlive_a_gc_that_deletes_their_pack(raw: Ledger) -> None:
    raw.commit({"keep": torch.ones(3)}, rng=False)
    side = raw.commit(state(1), rng=False, branch="side")
    packs = raw.root / "objects" / "packs"
    before = set(packs.glob("*.pack"))
    got = raw.checkout(side.id, mmap=True)
    raw.delete_branch("side", force=True)
    raw.gc(grace=0)
    assert set(packs.glob("*.pack")) < before  # the side commit's pack is gone
    assert bits(got) == bits(state(1))


def test_mapped_tensors_outlive_a_gc_that_repacks_their_pack(raw: Ledger) -> None:
    """gc copies the live chunks of a mostly dead pack into a new one; old mappings stay valid."""
    keep, drop = torch.randn(2 * CHUNK), torch.randn(64 * CHUNK)
    side = raw.commit({"keep": keep, "drop": drop}, rng=False, branch="side")
    packs = raw.root / "objects" / "packs"
    (old,) = packs.glob("*.pack")
    raw.commit({"keep": keep}, rng=False)  # main shares "keep"'s chunks with side
    before = raw.checkout(side.id, mmap=True)
    raw.delete_branch("side", force=True)
    raw.gc(grace=0)
    assert not old.exists()  # repacked: "keep" now lives in a new pack
    after = raw.checkout("HEAD", mmap=True)
    assert torch.equal(before["keep"], keep) and torch.equal(after["keep"], keep)
    assert torch.equal(before["drop"], drop)  # its chunks are gone from every pack now
    assert raw.verify(full=True).ok
