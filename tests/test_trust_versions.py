"""The opt-in version-counter fast path: ``Ledger.open(..., trust_versions=True)``.

Each test checks what was stored by reading it back, never only the stats.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli

from ledger import Ledger
from ledger.errors import ObjectMissingError
from ledger.state.dtypes import TORCH_DTYPES, as_bits
from ledger.state.unchanged import SAMPLE_STRIDE, UnchangedTensors, sample_digest

BIG = 1 << 18  # 1 MiB of fp32: above the fast path's 64 KiB floor


@pytest.fixture
def tlg(ledger_dir: Path) -> Iterator[Ledger]:
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as opened:
        yield opened


def stored(lg: Ledger, key: str, rev: str = "HEAD") -> Any:
    return lg.checkout(rev)[key]


def test_an_unchanged_tensor_is_reused_without_being_read(tlg: Ledger) -> None:
    w = torch.randn(BIG)
    first = tlg.commit({"w": w, "small": torch.ones(4)}, rng=False)
    assert first.stats.chunks_trusted == 0
    second = tlg.commit({"w": w, "small": torch.ones(4)}, rng=False)
    assert second.stats.chunks_trusted == second.stats.chunks_total - 1  # all but "small"
    assert second.stats.chunks_written == 0
    assert second.stats.logical_bytes == first.stats.logical_bytes
    assert torch.equal(stored(tlg, "w"), w)


def test_an_in_place_op_bumps_the_version_and_is_stored(tlg: Ledger) -> None:
    w = torch.zeros(BIG)
    tlg.commit({"w": w}, rng=False)
    with torch.no_grad():
        w[SAMPLE_STRIDE // 4 + 1] = 5.0  # one element, off the sampled bytes
    c = tlg.commit({"w": w}, rng=False)
    assert c.stats.chunks_trusted == 0
    assert torch.equal(stored(tlg, "w"), w)


def test_a_bulk_write_through_data_is_caught_by_the_sample(tlg: Ledger) -> None:
    model = torch.nn.Linear(512, 512)
    tlg.commit({"model": model}, rng=False)
    version = model.weight._version
    model.weight.data.mul_(2.0)  # .data has its own version counter
    assert model.weight._version == version
    tlg.commit({"model": model}, rng=False)
    assert torch.equal(stored(tlg, "model")["weight"], model.weight.detach())


def test_a_numpy_write_over_every_page_is_caught(tlg: Ledger) -> None:
    w = torch.zeros(BIG)
    tlg.commit({"w": w}, rng=False)
    w.numpy()[:] = 1.0
    tlg.commit({"w": w}, rng=False)
    assert torch.equal(stored(tlg, "w"), torch.ones(BIG))


@pytest.mark.parametrize("impl", ["fused", "foreach", "for-loop"])
def test_every_adamw_implementation_is_stored_after_its_step(tlg: Ledger, impl: str) -> None:
    model = torch.nn.Linear(256, 256)
    kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, **kwargs)  # type: ignore[arg-type]
    for step in range(3):
        model(torch.randn(8, 256)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        tlg.commit({"model": model, "opt": opt}, step=step, rng=False)
        tree = tlg.checkout("HEAD")
        assert torch.equal(tree["model"]["weight"], model.weight.detach())
        exp_avg = tree["opt"]["state"][0]["exp_avg"]
        assert torch.equal(exp_avg, opt.state[model.weight]["exp_avg"])


def test_a_new_tensor_with_the_old_ones_shape_is_never_mistaken_for_it(tlg: Ledger) -> None:
    for i in range(4):
        w = torch.full((BIG,), float(i))  # the old one is freed: its address may come back
        tlg.commit({"w": w}, rng=False)
        assert torch.equal(stored(tlg, "w"), w)
        del w


def test_views_and_small_tensors_are_always_read(tlg: Ledger) -> None:
    base = torch.zeros(4, BIG // 4)
    small = torch.zeros(16)
    tlg.commit({"col": base[:, 1:], "small": small}, rng=False)
    base.data[:, 3] = 7.0  # bypasses the counter, on no sampled page of a view
    small.data[3] = 1.0
    c = tlg.commit({"col": base[:, 1:], "small": small}, rng=False)
    assert c.stats.chunks_trusted == 0
    assert torch.equal(stored(tlg, "col"), base[:, 1:])
    assert torch.equal(stored(tlg, "small"), small)


def test_the_documented_blind_spot_and_the_default_that_has_none(ledger_dir: Path) -> None:
    w = torch.zeros(BIG)
    hidden = SAMPLE_STRIDE // 4 + 100  # an element no sample covers
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as lg:
        lg.commit({"w": w}, rng=False)
        w.data[hidden] = 1.0  # sparse, and invisible to the version counter
        lg.commit({"w": w}, rng=False)
        assert stored(lg, "w")[hidden].item() == 0.0  # trusted: not re-read
    with Ledger.open(ledger_dir, fsync=False) as lg:  # default: every byte is read
        lg.commit({"w": w}, rng=False)
        assert stored(lg, "w")[hidden].item() == 1.0


def test_chunks_collected_by_another_process_are_read_again(ledger_dir: Path) -> None:
    w = torch.randn(BIG)
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as lg:
        lg.commit({"w": w}, branch="tmp", rng=False)
        with Ledger.open(ledger_dir, fsync=False) as other:
            other.delete_branch("tmp", force=True)
            assert other.gc(grace=0).packs_deleted > 0
        # This process's pack list still names the deleted packs until the commit syncs.
        c = lg.commit({"w": w}, rng=False)
        assert c.stats.chunks_trusted == 0 and c.stats.chunks_written > 0
        assert lg.verify().ok
        assert torch.equal(stored(lg, "w"), w)


def test_an_async_commit_copies_only_what_changed(tlg: Ledger) -> None:
    frozen = torch.randn(BIG)
    head = torch.zeros(BIG)
    tlg.commit({"frozen": frozen, "head": head}, rng=False)
    head += 1.0
    handle = tlg.commit({"frozen": frozen, "head": head}, rng=False, blocking=False)
    head += 1.0  # after the call: must not reach the commit
    c = handle.result()
    assert c.stats.chunks_trusted == 1
    tree = tlg.checkout(c.id)
    assert torch.equal(tree["frozen"], frozen)
    assert torch.equal(tree["head"], torch.ones(BIG))


def test_an_async_commit_whose_trusted_chunks_vanish_fails_whole(ledger_dir: Path) -> None:
    w = torch.randn(BIG)
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as lg:
        lg.commit({"w": w}, branch="tmp", rng=False)
        oid = bytes.fromhex(stored_chunk(lg, "tmp"))
        with Ledger.open(ledger_dir, fsync=False) as other:
            other.delete_branch("tmp", force=True)
            with other.gc_lock.hold(shared=False):  # the background write waits on this
                handle = lg.commit({"w": w}, rng=False, blocking=False)
                located = other.store.locate(oid)
                assert located is not None
                other.store.remove_packs([located[0]])
        with pytest.raises(ObjectMissingError, match=r"state\['w'\].*commit again"):
            handle.result()
        with pytest.raises(ObjectMissingError):
            lg.wait()  # ... and once more on the ledger's next call
        assert lg.branches() == {}  # nothing landed
        lg.commit({"w": w}, rng=False)  # the retry reads the tensor again
        assert torch.equal(stored(lg, "w"), w)


def stored_chunk(lg: Ledger, rev: str) -> str:
    node = lg.manifest(rev)[1].root.values[0]
    chunks: list[str] = node.chunks  # type: ignore[attr-defined]
    return chunks[0]


@pytest.mark.parametrize("size", [BIG, BIG + 3])  # word-aligned gather, byte-wise gather
def test_the_sample_sees_every_page_and_the_tail(size: int) -> None:
    w = torch.zeros(size, dtype=torch.uint8)
    before = sample_digest(w)
    for pos in (0, SAMPLE_STRIDE, 5 * SAMPLE_STRIDE + 7, w.numel() - 1):
        changed = w.clone()
        changed[pos] = 1
        assert sample_digest(changed) != before, pos
    off = w.clone()
    off[SAMPLE_STRIDE + 100] = 1
    assert sample_digest(off) == before


def test_probes_refuse_what_the_fast_path_cannot_identify() -> None:
    seen = UnchangedTensors()
    assert seen.probe(torch.zeros(10)) is None  # too small
    assert seen.probe(torch.zeros(512, 512).t()) is None  # not contiguous
    w = torch.zeros(BIG)
    probe = seen.probe(w)
    assert probe is not None
    seen.remember(probe, ["00" * 32])
    assert seen.lookup(seen.probe(w), has=lambda oid: True) == ["00" * 32]  # type: ignore[arg-type]
    assert seen.lookup(seen.probe(w), has=lambda oid: False) is None  # type: ignore[arg-type]
    del w, probe
    seen.prune()
    assert len(seen) == 0


def test_ledger_show_says_how_many_chunks_were_trusted(ledger_dir: Path) -> None:
    w = torch.randn(BIG)
    with Ledger.open(ledger_dir, create=True, fsync=False, trust_versions=True) as lg:
        first = lg.commit({"w": w, "small": torch.ones(4)}, rng=False)
        second = lg.commit({"w": w, "small": torch.ones(4)}, rng=False)
    trusted = second.stats.chunks_trusted
    assert trusted > 0
    shown = run_cli("--dir", ledger_dir, "show", second.id[:12])
    assert shown.exit_code == 0, shown.output
    assert f"{trusted} unchanged, not read" in shown.output
    plain = run_cli("--dir", ledger_dir, "show", first.id[:12])
    assert "not read" not in plain.output


@pytest.mark.parametrize("name", sorted(TORCH_DTYPES))
def test_every_dtype_is_trusted_when_unchanged_and_read_when_changed(
    tlg: Ledger, name: str
) -> None:
    raw = torch.randint(
        0, 256, (1 << 17,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    value = raw.view(TORCH_DTYPES[name])
    tlg.commit({"v": value}, rng=False)
    assert tlg.commit({"v": value}, rng=False).stats.chunks_trusted > 0
    raw.data[::SAMPLE_STRIDE] += 1  # every sampled page, behind the counter's back
    assert tlg.commit({"v": value}, rng=False).stats.chunks_trusted == 0
    back = stored(tlg, "v")
    assert back.dtype == value.dtype
    assert torch.equal(as_bits(back).view(torch.uint8), raw)
