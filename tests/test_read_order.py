"""Reads run in pack order, not the manifest's: bytes stay exact, damage is named."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from helpers import bits, flip_stored_byte

from ledger import Ledger
from ledger.errors import CorruptionError


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


@pytest.mark.parametrize("compress", [False, True])
def test_checkout_and_restore_are_bit_exact_when_reads_run_in_pack_order(
    ledger_dir: Path, compress: bool
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
    small: Ledger,
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


def test_reads_are_issued_pack_by_pack_in_offset_order(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, chunk_size=4096) as lg:
        first = mixed_state(2)
        lg.commit(first, rng=False)
        later = {k: v.clone() for k, v in first.items()}
        later["f32"] += 1  # lands in a second pack, listed first in the manifest
        c = lg.commit(later, rng=False)
        seen: list[tuple[str, int]] = []
        store = lg.store
        read_into = store.read_into

        def recording(oid: bytes, out: memoryview, what: str) -> None:
            located = store.locate(oid)
            assert located is not None
            if located[1].kind == "chunk":  # not the manifest, read before the chunks
                seen.append((located[0], located[1].offset))
            read_into(oid, out, what)

        store.read_into = recording  # type: ignore[method-assign]
        with ThreadPoolExecutor(1) as one:  # one worker: the order it runs is the order issued
            lg._pool = one
            tree = lg.checkout(c.id)
            lg._pool = None
        assert bits(tree) == bits(later)
        assert len({pack for pack, _ in seen}) == 2
        assert seen == sorted(seen)
