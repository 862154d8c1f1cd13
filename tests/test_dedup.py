"""Deduplication: a commit stores only the chunks no earlier commit (on any branch) stored.

Sizes are measured on disk (every file of the ledger directory) and checked
against the pack indexes: re-committing an unchanged state writes no chunk and
under 4 KiB; fine-tuning only the last layer grows the ledger by exactly that
layer's new chunks (as stored) plus at most 64 KiB of metadata; ten branches
from one base cost little more than the base.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import dir_bytes, pack_ids

from ledger import Ledger
from ledger.manifest import DictNode, Node, StatefulNode, TensorNode
from ledger.objects.packs import IndexEntry, read_pack_index

KIB = 1024
CHUNK = 64 * KIB
METADATA_LIMIT = 64 * KIB
WIDTH = 256  # each hidden Linear: 256 KiB of fp32 weight = 4 chunks, plus a 1 KiB bias


def new_entries(lg: Ledger, before: set[str]) -> list[IndexEntry]:
    """Index entries of every pack written since ``before`` was taken."""
    return [
        e
        for p in sorted(pack_ids(lg.root) - before)
        for e in read_pack_index(lg.store.pack_path(p))
    ]


def make_model(layers: int = 6) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)))


def layer(model: torch.nn.Sequential, i: int) -> torch.nn.Linear:
    found = model[i]
    assert isinstance(found, torch.nn.Linear)
    return found


def tensor_chunks(lg: Ledger, rev: str, key: str) -> dict[str, list[str]]:
    """Chunk ids of each tensor of the stateful object stored under ``key``."""
    _, manifest = lg.manifest(rev)
    root = manifest.root
    node: Node = root.values[root.keys.index(key)]
    assert isinstance(node, StatefulNode) and isinstance(node.state, DictNode)
    out = {}
    for name, child in zip(node.state.keys, node.state.values, strict=True):
        assert isinstance(child, TensorNode)
        out[str(name)] = child.chunks
    return out


@pytest.fixture
def ledger64(tmp_path: Path) -> Iterator[Ledger]:
    """A ledger with 64 KiB chunks (a 256x256 fp32 weight spans four)."""
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False, chunk_size=CHUNK) as lg:
        yield lg


def trained_state() -> dict[str, Any]:
    model = make_model(3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, WIDTH)).sum().backward()
    opt.step()
    return {"model": model, "optim": opt, "step": 1, "config": {"lr": 1e-3}}


def test_committing_an_unchanged_state_again_writes_no_chunk(ledger64: Ledger) -> None:
    lg = ledger64
    state = trained_state()
    first = lg.commit(state, step=1)
    # Equal tensors inside one commit (AdamW's ``step`` counters) are stored once too.
    assert 20 < first.stats.chunks_written < first.stats.chunks_total
    size, before = dir_bytes(lg.root), pack_ids(lg.root)

    again = lg.commit(state, step=1)

    assert again.id != first.id and again.parents == [first.id]
    assert again.stats.chunks_written == 0
    assert again.stats.chunks_total == first.stats.chunks_total
    assert again.stats.logical_bytes == first.stats.logical_bytes
    # The manifest is the same object as well: only the commit record is new.
    assert [e.kind for e in new_entries(lg, before)] == ["commit"]
    assert again.manifest == first.manifest
    growth = dir_bytes(lg.root) - size
    assert 0 < growth < 4 * KIB, growth


def test_an_equal_state_in_new_tensor_objects_writes_no_chunk(ledger64: Ledger) -> None:
    """Deduplication is by content, not by object identity."""
    lg = ledger64
    state = trained_state()
    lg.commit(state, rng=False)
    copy = {
        "model": {k: v.clone() for k, v in state["model"].state_dict().items()},
        "other": [p.detach().clone() for p in state["model"].parameters()],
    }
    c = lg.commit(copy, rng=False)
    assert c.stats.chunks_total > 0
    assert c.stats.chunks_written == 0


def _fine_tune_last_layer(model: torch.nn.Sequential, steps: int = 3) -> None:
    for p in model[:-1].parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(model[-1].parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = model(torch.randn(8, WIDTH, generator=gen)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("compress", [True, False])
def test_fine_tuning_the_last_layer_stores_only_that_layers_chunks(
    tmp_path: Path, compress: bool
) -> None:
    with Ledger.open(
        tmp_path / "ckpt", create=True, fsync=False, chunk_size=CHUNK, compress=compress
    ) as lg:
        model = make_model()
        base = lg.commit({"model": model}, rng=False)
        frozen_before = {k: v.clone() for k, v in model.state_dict().items() if k[0] != "5"}
        size, before = dir_bytes(lg.root), pack_ids(lg.root)

        _fine_tune_last_layer(model)
        tuned = lg.commit({"model": model}, rng=False)

        for k, v in frozen_before.items():  # really only the last layer changed
            assert torch.equal(model.state_dict()[k], v)
        old, new = tensor_chunks(lg, base.id, "model"), tensor_chunks(lg, tuned.id, "model")
        last = {"5.weight", "5.bias"}
        for name in old:
            assert (old[name] == new[name]) == (name not in last), name
        expected_ids = {bytes.fromhex(c) for name in last for c in new[name]}
        layer_bytes = sum(p.numel() * p.element_size() for p in model[-1].parameters())
        whole_chunks = sum(
            math.ceil(p.numel() * p.element_size() / CHUNK) for p in model[-1].parameters()
        )
        assert whole_chunks == 5 and len(expected_ids) == 5

        entries = new_entries(lg, before)
        chunks = [e for e in entries if e.kind == "chunk"]
        assert {e.id for e in chunks} == expected_ids
        assert tuned.stats.chunks_written == len(chunks) == whole_chunks
        assert sum(e.raw_length for e in chunks) == layer_bytes
        stored = sum(e.length for e in chunks)
        if compress:
            assert stored <= layer_bytes
        else:
            assert stored == layer_bytes == 4 * CHUNK + WIDTH * 4

        growth = dir_bytes(lg.root) - size
        metadata = growth - stored
        assert 0 < metadata <= METADATA_LIMIT, (growth, stored)
        # For scale: storing the whole model again would have cost six times as much.
        assert growth < base.stats.bytes_written / 4


def test_one_changed_element_rewrites_exactly_one_chunk(tmp_path: Path) -> None:
    with Ledger.open(
        tmp_path / "ckpt", create=True, fsync=False, chunk_size=CHUNK, compress=False
    ) as lg:
        model = make_model()
        lg.commit({"model": model}, rng=False)
        size, before = dir_bytes(lg.root), pack_ids(lg.root)
        with torch.no_grad():
            layer(model, 2).weight[100, 7] += 1.0  # row 100 lives in the weight's second chunk
        c = lg.commit({"model": model}, rng=False)
        chunks = [e for e in new_entries(lg, before) if e.kind == "chunk"]
        assert c.stats.chunks_written == len(chunks) == 1
        assert chunks[0].raw_length == chunks[0].length == CHUNK
        assert chunks[0].id == bytes.fromhex(tensor_chunks(lg, c.id, "model")["2.weight"][1])
        growth = dir_bytes(lg.root) - size
        assert CHUNK < growth <= CHUNK + METADATA_LIMIT


def test_ten_experiments_branched_from_one_base_cost_little_more_than_one(
    ledger64: Ledger,
) -> None:
    lg = ledger64
    model = make_model()
    base = lg.commit({"model": model, "step": 0}, rng=False)
    base_size = dir_bytes(lg.root)
    pack_count = len(pack_ids(lg.root))

    for i in range(10):
        lg.branch(f"exp{i}")
    assert len(pack_ids(lg.root)) == pack_count  # a branch is a ref, not a copy
    after_branches = dir_bytes(lg.root)
    assert after_branches - base_size < 16 * KIB

    for i in range(10):
        with torch.no_grad():
            layer(model, -1).bias.fill_(float(i))  # each experiment changes one small tensor
        c = lg.commit({"model": model, "step": i + 1}, branch=f"exp{i}", rng=False)
        assert c.parents == [base.id]
        assert c.stats.chunks_written == 1

    total_growth = dir_bytes(lg.root) - base_size
    assert total_growth < base_size / 10, (total_growth, base_size)
    assert lg.current_branch == "main" and lg.resolve("HEAD") == base.id
    for i in (0, 9):
        tree = lg.checkout(f"exp{i}", paths=["model"])
        assert torch.equal(tree["model"]["5.bias"], torch.full((WIDTH,), float(i)))
        assert torch.equal(tree["model"]["0.weight"], layer(model, 0).weight)


def test_a_commit_on_one_branch_reuses_chunks_written_on_another(ledger64: Ledger) -> None:
    lg = ledger64
    lg.commit({"x": torch.zeros(10)}, rng=False)
    lg.branch("a")
    lg.branch("b")
    payload = torch.randn(3, WIDTH, WIDTH)
    on_a = lg.commit({"x": payload}, branch="a", rng=False)
    on_b = lg.commit({"x": payload.clone()}, branch="b", rng=False)
    assert on_a.stats.chunks_written == on_a.stats.chunks_total == 12
    assert on_b.stats.chunks_written == 0
