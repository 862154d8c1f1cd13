"""compress="auto": the overlapped model over measured codec and disk speeds, and where they come from."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from ledger import Ledger
from ledger.objects import direct
from ledger.objects.codecs import MIN_SAVING, encode_chunk
from ledger.objects.writer import (
    AUTO_PROBE_EVERY,
    AUTO_SLOW_SAVING,
    AUTO_START_SAVING,
    Rates,
)

FP32 = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(0)) * 0.02).view(torch.uint8)


def _codec_for(rates: Rates, raw: bytes, workers: int = 2) -> str:
    return encode_chunk(
        memoryview(raw), float_itemsize=4, compress=True, min_saving=rates.min_saving(workers)
    )[0]


def test_the_codec_is_measured_first_then_a_quarter_is_asked_until_the_disk_is() -> None:
    rates = Rates()
    assert rates.min_saving(2) == MIN_SAVING  # encode, to learn the codec's speed
    rates.note_codec(1 << 22, 1 / 256)
    assert rates.keeps_up(2) is None
    assert rates.min_saving(2) == AUTO_START_SAVING


def test_fp32_weights_compress_when_the_codec_keeps_up_with_the_disk() -> None:
    rates = Rates()
    rates.note_codec(1 << 22, 1 / 256)  # 1 GiB/s per worker
    rates.note_disk(3 << 29, 1.0)  # 1.5 GiB/s: two workers keep up, one does not
    assert rates.keeps_up(2) and not rates.keeps_up(1)
    assert rates.min_saving(2) == MIN_SAVING
    assert _codec_for(rates, FP32.numpy().tobytes()) == "expzstd"  # ~17% saved is worth it


def test_a_codec_slower_than_the_disk_encodes_only_large_savings_and_probes() -> None:
    rates = Rates()
    rates.note_codec(1 << 22, 1 / 128)  # 0.5 GiB/s per worker
    rates.note_disk(3 << 29, 1.0)
    assert rates.keeps_up(2) is False
    asked = [rates.min_saving(2) for _ in range(2 * AUTO_PROBE_EVERY)]
    assert asked.count(MIN_SAVING) == 2  # one probe per AUTO_PROBE_EVERY chunks re-measures
    assert set(asked) == {MIN_SAVING, AUTO_SLOW_SAVING}
    slow = Rates()
    slow.codec, slow.disk = rates.codec, rates.disk
    assert _codec_for(slow, FP32.numpy().tobytes()) == "raw"
    assert _codec_for(slow, bytes(1 << 22)) == "expzstd"  # zeros still shrink


def test_direct_writes_report_the_disk_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct, "BUFFER", 1 << 20)
    seen: list[tuple[int, float]] = []
    path = tmp_path / "pack"
    with ThreadPoolExecutor(1) as pool:
        raw = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by DirectFile.close
        f = direct.DirectFile(raw, pool, direct.Buffers(), lambda n, s: seen.append((n, s)))
        f.write(bytes(3 << 20) + b"tail")
        f.flush()
        f.close()
    assert [n for n, _ in seen] == [1 << 20] * 3 + [4]
    assert all(s >= 0 for _, s in seen)
    rates = Rates()
    for n, s in seen:
        rates.note_disk(n, max(s, 1e-6))
    assert rates.disk is not None


def test_a_durable_auto_commit_measures_both_speeds(tmp_path: Path) -> None:
    state = {"w": torch.randn(6 << 20, generator=torch.Generator().manual_seed(1)) * 0.02}
    with Ledger.open(tmp_path / "lg", create=True) as lg:
        lg.commit(state, rng=False)
        rates = lg.store.rates
        assert rates.codec is not None and rates.disk is not None
        tree = lg.checkout("main")
        assert torch.equal(tree["w"].view(torch.uint8), state["w"].view(torch.uint8))
