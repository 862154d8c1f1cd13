"""Codecs: lossless for every float dtype and odd size, with NaN payloads, -0.0, subnormals, inf."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import CorruptionError
from ledger.objects.codecs import ByteGroupZstdCodec, decoder, encode_chunk
from ledger.state.dtypes import float_itemsize

FLOAT_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex32,
    torch.complex64,
    torch.complex128,
]

SPECIAL_BITS = {
    2: [
        0x0000,
        0x8000,
        0x7C00,
        0xFC00,
        0x7E00,
        0x7D01,
        0xFE01,
        0x0001,
        0x83FF,
        0x7F80,
        0x7FC1,
        0x0040,
    ],
    4: [
        0x00000000,
        0x80000000,
        0x7F800000,
        0xFF800000,
        0x7FC00000,
        0x7FA00001,
        0xFFC12345,
        0x00000001,
        0x807FFFFF,
    ],
    8: [
        0,
        1 << 63,
        0x7FF0000000000000,
        0x7FF8000000000001,
        0xFFF4000000000000,
        1,
        0x800FFFFFFFFFFFFF,
    ],
}


def _roundtrip(raw: bytes, itemsize: int | None) -> tuple[str, bytes]:
    name, blob = encode_chunk(memoryview(raw), float_itemsize=itemsize, compress=True)
    out = bytearray(len(raw))
    decoder(name).decode_into(memoryview(bytes(blob)), memoryview(out))
    return name, bytes(out)


@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    n=st.integers(min_value=0, max_value=3000),
    scale=st.sampled_from([1e-30, 1e-3, 0.02, 1.0, 1e4]),
    specials=st.lists(st.integers(min_value=0, max_value=100), max_size=20),
    data=st.data(),
)
def test_every_float_dtype_round_trips_bit_exact(
    dtype: torch.dtype, n: int, scale: float, specials: list[int], data: st.DataObject
) -> None:
    values = (torch.randn(n, dtype=torch.float64) * scale).to(
        dtype if not dtype.is_complex else torch.float64
    )
    if dtype.is_complex:
        values = torch.complex(values, values.flip(0)).to(dtype)
    raw = bytearray(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    size = float_itemsize(dtype)
    assert size is not None
    words = len(raw) // size
    for k in specials:
        if words:
            pos = (k * 7919) % words
            bits = data.draw(st.sampled_from(SPECIAL_BITS[size]))
            raw[pos * size : (pos + 1) * size] = bits.to_bytes(size, "little")
    _, back = _roundtrip(bytes(raw), size)
    assert back == bytes(raw)


@given(raw=st.binary(min_size=0, max_size=5000), itemsize=st.sampled_from([None, 2, 4, 8]))
def test_any_bytes_round_trip_whatever_the_declared_item_size(
    raw: bytes, itemsize: int | None
) -> None:
    name, back = _roundtrip(raw, itemsize)
    assert back == raw
    if itemsize and len(raw) % itemsize:
        assert name != "bgzstd"  # odd sizes never claim byte grouping


def test_byte_grouping_shrinks_trained_like_bf16_and_fp32() -> None:
    torch.manual_seed(0)
    w = torch.randn(1 << 18) * 0.02
    for dtype, bound in ((torch.bfloat16, 0.75), (torch.float32, 0.9)):
        raw = w.to(dtype).view(torch.uint8).numpy().tobytes()
        name, blob = encode_chunk(memoryview(raw), float_itemsize=dtype.itemsize, compress=True)
        assert name == "bgzstd"
        assert len(blob) / len(raw) < bound


def test_incompressible_bytes_are_stored_raw() -> None:
    raw = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert encode_chunk(memoryview(raw), float_itemsize=None, compress=True)[0] == "raw"
    assert encode_chunk(memoryview(raw), float_itemsize=4, compress=True)[0] == "raw"


@pytest.mark.parametrize("cut", [0, 1, 5, 20])
def test_truncated_or_padded_bgzstd_blobs_are_refused(cut: int) -> None:
    raw = (torch.randn(4096) * 0.02).view(torch.uint8).numpy().tobytes()
    blob = ByteGroupZstdCodec(4).encode(memoryview(raw))
    assert isinstance(blob, bytes)
    damaged = blob[: len(blob) - cut] if cut else blob + b"\0"
    with pytest.raises(CorruptionError):
        decoder("bgzstd").decode_into(memoryview(damaged), memoryview(bytearray(len(raw))))


def test_auto_policy_stores_raw_when_the_disk_outruns_the_codec() -> None:
    from ledger.objects.store import Rates

    rates = Rates()
    assert rates.min_saving(2) == 0.25  # nothing measured yet: only clear savings (bf16, zeros)
    rates.note_codec(1 << 22, 1 / 256)  # 1 GiB/s per worker
    rates.note_disk(1 << 30, 1 / 1.5)  # 1.5 GiB/s write-back
    threshold = rates.min_saving(2)
    assert threshold == pytest.approx(0.75)
    fp32 = (torch.randn(1 << 20) * 0.02).view(torch.uint8).numpy().tobytes()
    name, _ = encode_chunk(memoryview(fp32), float_itemsize=4, compress=True, min_saving=threshold)
    assert name == "raw"  # trained-like fp32 saves ~15-25%: not worth it on this "disk"
    zeros = bytes(1 << 20)
    assert (
        encode_chunk(memoryview(zeros), float_itemsize=4, compress=True, min_saving=threshold)[0]
        != "raw"
    )
    rates.note_disk(1 << 30, 20.0)  # a slow disk: now any real saving pays
    for _ in range(20):
        rates.note_disk(1 << 30, 20.0)
    assert rates.min_saving(2) < 0.05
