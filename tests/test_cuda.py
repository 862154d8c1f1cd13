"""CUDA paths: device mapping, pinned-buffer checkouts, restore into GPU tensors, CUDA RNG.

These run where a GPU exists and skip cleanly where none does (the CPU CI).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ledger import Ledger

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_checkout_maps_to_cuda_bit_exactly_through_pinned_buffers(lg: Ledger) -> None:
    w = torch.randn(1 << 20).to(torch.bfloat16)
    lg.commit({"w": w, "i": torch.arange(10)}, rng=False)
    tree = lg.checkout("HEAD", map_location="cuda")
    assert tree["w"].device.type == "cuda" and tree["i"].device.type == "cuda"
    assert torch.equal(tree["w"].cpu().view(torch.int16), w.view(torch.int16))
    assert torch.equal(tree["i"].cpu(), torch.arange(10))


def test_map_location_none_puts_tensors_back_on_their_device(lg: Ledger) -> None:
    lg.commit({"g": torch.ones(3, device="cuda"), "c": torch.zeros(2)}, rng=False)
    tree = lg.checkout("HEAD", map_location=None)
    assert tree["g"].device.type == "cuda" and tree["c"].device.type == "cpu"


def test_restore_into_a_cuda_model_and_optimizer_is_exact(lg: Ledger) -> None:
    model = torch.nn.Linear(64, 64).cuda()
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    opt.step()
    lg.commit({"model": model, "opt": opt}, rng=False)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    model2 = torch.nn.Linear(64, 64).cuda()
    opt2 = torch.optim.AdamW(model2.parameters())
    lg.restore({"model": model2, "opt": opt2}, rng=False)
    for key, value in want.items():
        assert torch.equal(model2.state_dict()[key], value)
    assert torch.equal(
        opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"]
    )


def test_cuda_rng_is_captured_and_set_back(lg: Ledger) -> None:
    torch.cuda.manual_seed_all(7)
    torch.randn(1, device="cuda")  # initialise CUDA's generator
    lg.commit({"x": 1})
    expected = torch.randn(4, device="cuda")
    torch.randn(100, device="cuda")
    lg.restore({"x": 0})
    assert torch.equal(torch.randn(4, device="cuda"), expected)


def test_trusted_versions_skip_unchanged_gpu_tensors_and_store_changed_ones(
    ledger_dir: Path,
) -> None:
    w = torch.randn(1 << 20, device="cuda")
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as lg:
        lg.commit({"w": w}, rng=False)
        assert lg.commit({"w": w}, rng=False).stats.chunks_trusted > 0
        w.data.mul_(2.0)  # bypasses the version counter; the sample sees it
        c = lg.commit({"w": w}, rng=False)
        assert c.stats.chunks_trusted == 0
        assert torch.equal(lg.checkout("HEAD", map_location="cuda")["w"], w)
