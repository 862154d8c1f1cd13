"""Codecs: lossless for every float dtype and odd size, with NaN payloads, -0.0, subnormals, inf."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ledger import Ledger
from ledger.errors import CorruptionError
from ledger.objects.codecs import ExponentSplitZstdCodec, decoder, encode_chunk
from ledger.state.dtypes import float_itemsize

DATA = Path(__file__).parent / "data"

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
    name, back = _roundtrip(bytes(raw), size)
    assert back == bytes(raw)
    assert name in ("raw", "expzstd")


@given(
    size=st.sampled_from([2, 4, 8]),
    words=st.lists(
        st.one_of(
            st.integers(min_value=0, max_value=2**64 - 1),
            st.sampled_from(SPECIAL_BITS[8] + SPECIAL_BITS[4] + SPECIAL_BITS[2]),
        ),
        max_size=600,
    ),
    repeat=st.integers(min_value=1, max_value=300),
)
def test_exponent_split_round_trips_every_bit_pattern(
    size: int, words: list[int], repeat: int
) -> None:
    """Any words, forced through every plane (min_saving 0 never falls back to raw)."""
    mask = (1 << (8 * size)) - 1
    raw = b"".join((w & mask).to_bytes(size, "little") for w in words) * repeat
    blob = ExponentSplitZstdCodec(size).encode(memoryview(raw), min_saving=0.0)
    assert blob is not raw or not raw
    out = bytearray(len(raw))
    decoder("expzstd").decode_into(memoryview(bytes(blob)), memoryview(out))
    assert bytes(out) == raw


@given(
    size=st.sampled_from([2, 4, 8]),
    n=st.integers(min_value=1, max_value=5000),
    base=st.integers(min_value=0, max_value=255),
    spread=st.integers(min_value=1, max_value=16),
    escapes=st.lists(st.integers(min_value=0, max_value=255), max_size=12),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_few_exponents_pack_as_nibbles_and_round_trip(
    size: int, n: int, base: int, spread: int, escapes: list[int], seed: int
) -> None:
    """Exponents within 15 values of each other (AdamW's exp_avg_sq), odd counts, stray escapes."""
    rng = np.random.default_rng(seed)
    shift = 8 * size - 9
    exps = (base + rng.integers(0, spread, n)) % 256
    for k, value in enumerate(escapes):
        exps[(k * 7919) % n] = value
    rest = rng.integers(0, 2**63, n, dtype=np.uint64) & np.uint64(~(0xFF << shift) & (2**64 - 1))
    words = (exps.astype(np.uint64) << np.uint64(shift)) | rest
    raw = words.astype(f"<u{size}").tobytes()
    blob = ExponentSplitZstdCodec(size).encode(memoryview(raw), min_saving=0.0)
    out = bytearray(len(raw))
    decoder("expzstd").decode_into(memoryview(bytes(blob)), memoryview(out))
    assert bytes(out) == raw


def test_two_common_exponents_go_as_nibbles_under_one_bit_each() -> None:
    """AdamW's exp_avg_sq: one exponent in 4 of 5 values; single bytes cannot code that under 1 bit."""
    rng = np.random.default_rng(0)
    n = 1 << 20
    exps = 100 + (rng.random(n) < 0.2).astype(np.uint32)
    words = (exps << 23) | rng.integers(0, 1 << 23, n, dtype=np.uint32)
    raw = words.astype("<u4").tobytes()
    blob = bytes(ExponentSplitZstdCodec(4).encode(memoryview(raw)))
    assert blob[1] == 2  # plane 0 went as nibbles
    exp_len = int.from_bytes(blob[2:10], "little")
    assert exp_len * 8 / n < 1.0  # bits per exponent
    out = bytearray(len(raw))
    decoder("expzstd").decode_into(memoryview(blob), memoryview(out))
    assert bytes(out) == raw


def test_a_nibble_plane_with_a_wrong_escape_count_is_refused() -> None:
    values = torch.rand(1 << 16) * 1e-6  # exponents within a few binades
    raw = values.view(torch.uint8).numpy().tobytes()
    blob = bytearray(ExponentSplitZstdCodec(4).encode(memoryview(raw)))
    assert blob[1] == 2
    head = 1 + 4 * 9
    blob[head + 1] ^= 1  # the escape count, just after the base byte
    with pytest.raises(CorruptionError):
        decoder("expzstd").decode_into(memoryview(bytes(blob)), memoryview(bytearray(len(raw))))


def test_exponent_plane_holds_the_whole_bf16_and_fp32_exponent() -> None:
    values = torch.tensor([1.0, -2.0, 0.5, -0.0, float("inf")])
    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        raw = values.to(dtype).view(torch.uint8).numpy().tobytes()
        blob = ExponentSplitZstdCodec(size).encode(memoryview(raw), min_saving=0.0)
        assert isinstance(blob, bytes) and blob[0] == size
        exp_len = int.from_bytes(blob[2:10], "little")
        exponents = blob[1 + 9 * size :][:exp_len]
        assert list(exponents) == [127, 128, 126, 0, 255]  # biased exponents; signs are elsewhere


def test_objects_written_by_earlier_versions_still_decode(tmp_path: Path) -> None:
    """Every object of the format-1 and -2 fixtures (bgzstd floats among them) decodes and re-hashes."""
    seen: set[str] = set()
    for name in ("ledger-format1", "ledger-format2"):
        shutil.copytree(DATA / name, tmp_path / name)
        with Ledger.open(tmp_path / name) as lg:
            for pack in lg.store.pack_names():
                for entry in lg.store.pack_entries(pack):
                    seen.add(entry.codec)
                    lg.store.read(entry.id, f"{entry.kind} object of {name}")
    assert "bgzstd" in seen


@given(raw=st.binary(min_size=0, max_size=5000), itemsize=st.sampled_from([None, 2, 4, 8]))
def test_any_bytes_round_trip_whatever_the_declared_item_size(
    raw: bytes, itemsize: int | None
) -> None:
    name, back = _roundtrip(raw, itemsize)
    assert back == raw
    if itemsize and len(raw) % itemsize:
        assert name != "expzstd"  # odd sizes never claim whole elements


def test_byte_grouping_shrinks_trained_like_bf16_and_fp32() -> None:
    torch.manual_seed(0)
    w = torch.randn(1 << 18) * 0.02
    for dtype, bound in ((torch.bfloat16, 0.75), (torch.float32, 0.9)):
        raw = w.to(dtype).view(torch.uint8).numpy().tobytes()
        name, blob = encode_chunk(memoryview(raw), float_itemsize=dtype.itemsize, compress=True)
        assert name == "expzstd"
        assert len(blob) / len(raw) < bound


def test_incompressible_bytes_are_stored_raw() -> None:
    raw = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    assert encode_chunk(memoryview(raw), float_itemsize=None, compress=True)[0] == "raw"
    assert encode_chunk(memoryview(raw), float_itemsize=4, compress=True)[0] == "raw"


@pytest.mark.parametrize("cut", [0, 1, 5, 20])
@pytest.mark.parametrize("codec", ["bgzstd", "expzstd"])
def test_truncated_or_padded_plane_blobs_are_refused(cut: int, codec: str) -> None:
    raw = (torch.randn(4096) * 0.02).view(torch.uint8).numpy().tobytes()
    blob = ExponentSplitZstdCodec(4).encode(memoryview(raw))
    assert isinstance(blob, bytes)  # bgzstd's blob has the same frame: size, plane table, planes
    damaged = blob[: len(blob) - cut] if cut else blob + b"\0"
    with pytest.raises(CorruptionError):
        decoder(codec).decode_into(memoryview(damaged), memoryview(bytearray(len(raw))))
