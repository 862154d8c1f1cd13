"""Reads run in pack order with the kernel asked to read ahead: bytes stay exact, damage is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import bits, flip_stored_byte

from ledger import Ledger
from ledger.errors import CorruptionError
from ledger.objects import readahead
from ledger.objects.handles import PackHandles
from ledger.objects.readahead import ReadAhead, in_pack_order


def mixed_state(seed: int) -> dict[str, torch.Tensor]:
    """Odd-sized tensors of several dtypes, some spanning chunks, some non-contiguous views."""
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(3 * 1024 + 7, generator=g)  # 4 KiB chunks: four of them, the last partial
    return {
        "f32": big,
        "bf16": torch.randn(2049, generator=g).to(torch.bfloat16),
        "f64_t": torch.randn(33, 65, generator=g, dtype=torch.float64).t(),
        "i8_step": torch.randint(-128, 127, (9001,), generator=g, dtype=torch.int8)[::3],
        "bool": torch.rand(5003, generator=g) > 0.5,
        "c64": torch.randn(1025, generator=g, dtype=torch.complex64),
        "u8_0d": torch.tensor(7, dtype=torch.uint8),
        "empty": torch.empty(0, 3),
    }


@pytest.fixture
def tiny_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read ahead by one 4 KiB chunk only, so the window slides many times in one read."""
    monkeypatch.setattr(readahead, "AHEAD_BYTES", 4096)


@pytest.mark.parametrize("compress", [False, True])
def test_checkout_and_restore_are_bit_exact_when_reads_run_in_pack_order(
    ledger_dir: Path, tiny_window: None, compress: bool
) -> None:
    with Ledger.open(
        ledger_dir, create=True, fsync=False, chunk_size=4096, compress=compress
    ) as lg:
        first = mixed_state(0)
        lg.commit(first, rng=False)
        second = dict(first)
        second["f32"] = first["f32"] + 1  # a later pack holds this tensor, the first the rest
        second["c64"] = first["c64"] * 2
        c = lg.commit(second, rng=False)
        assert len(lg.store.pack_names()) >= 2
        assert bits(lg.checkout(c.id)) == bits(second)
        live = {k: torch.zeros_like(v) for k, v in second.items()}
        lg.restore(live, c.id, rng=False)
        assert bits(live) == bits(second)


def test_a_damaged_chunk_is_refused_naming_its_tensor_and_object(
    small: Ledger, tiny_window: None
) -> None:
    state = mixed_state(1)
    c = small.commit(state, rng=False)
    node = small.manifest(c.id)[1].root
    chunks = node.values[node.keys.index("bf16")].chunks
    flip_stored_byte(small, chunks[1])
    with pytest.raises(CorruptionError) as err:
        small.checkout(c.id)
    assert "bf16" in str(err.value)
    assert chunks[1][:12] in str(err.value)
    with pytest.raises(CorruptionError, match="bf16"):
        small.restore({k: torch.zeros_like(v) for k, v in state.items()}, c.id, rng=False)


def test_pack_order_sorts_by_pack_then_offset_and_keeps_unplaced_last_in_order() -> None:
    spans = {"a": ("q", 0, 4), "b": ("p", 50, 4), "c": None, "d": ("p", 10, 4), "e": None}
    assert in_pack_order(list("abcde"), spans.get) == ["d", "b", "a", "c", "e"]


def test_read_ahead_advises_each_span_once_and_only_within_the_window(tmp_path: Path) -> None:
    (tmp_path / "p.pack").write_bytes(os.urandom(1000))
    opened: list[str] = []
    handles = PackHandles()

    def opener(pack: str):  # type: ignore[no-untyped-def]
        opened.append(pack)
        return handles.get(tmp_path / f"{pack}.pack")

    spans = [("p", 100 * i, 100) for i in range(10)]
    ahead = ReadAhead(spans, opener, ahead=250)
    ahead.starting(0)
    assert ahead.advised == 3  # reads starting at 0, 100 and 200
    ahead.starting(5)
    assert ahead.advised == 8  # up to the read starting at 750
    calls = len(opened)
    ahead.starting(2)  # a late worker: everything up to it was advised already
    assert ahead.advised == 8 and len(opened) == calls
    ahead.starting(9)
    assert ahead.advised == 10
    assert opened == ["p"] * len(opened) and len(opened) == 3  # one call per contiguous run


def test_read_ahead_skips_missing_packs_and_unplaced_reads(tmp_path: Path) -> None:
    handles = PackHandles()
    ahead = ReadAhead(
        [None, ("gone", 0, 10), None], lambda p: handles.get(tmp_path / f"{p}.pack"), ahead=100
    )
    ahead.starting(0)  # the read itself reports a missing pack, with its name
    assert ahead.advised == 3
