"""``ledger gc``, ``verify``, ``rm`` and ``retention`` through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import flip_byte, run_cli

from ledger import Ledger
from ledger.objects.packs import read_pack_index


def build(root: Path, n: int = 5) -> list[str]:
    ids = []
    with Ledger.open(root, create=True, fsync=False) as lg:
        for i in range(n):
            c = lg.commit(
                {"w": torch.randn(256)}, step=i * 10, metrics={"loss": float(n - i)}, rng=False
            )
            ids.append(c.id)
    return ids


def test_retention_set_from_the_shell_is_applied_by_gc(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    ids = build(root)
    result = run_cli(
        "--dir", str(root), "retention", "--keep-last", "2", "--keep-best", "loss:1:max", "--json"
    )
    assert result.exit_code == 0
    assert json.loads(result.output) == {
        "retention": {"*": ["KeepLast(2)", "KeepBest('loss', k=1, mode='max')"]}
    }
    dry = json.loads(
        run_cli("--dir", str(root), "gc", "--dry-run", "--grace", "0", "--json").output
    )
    assert dry["dry_run"] is True and sorted(dry["expired"]) == sorted(ids[1:3])
    done = json.loads(run_cli("gc", "--grace", "0", "--json", "--dir", str(root)).output)
    assert sorted(done["expired"]) == sorted(ids[1:3]) and done["bytes_freed"] > 0
    with Ledger.open(root) as lg:
        assert lg.checkout(ids[0])["w"].numel() == 256  # kept by KeepBest (loss 5, max)
        assert [c.id for c in lg.log()] == ids[::-1]  # history stays whole
    failed = run_cli("--dir", str(root), "checkout", ids[1], "--out", str(tmp_path / "out"))
    assert failed.exit_code == 1 and "expired" in failed.output


def test_verify_exits_3_naming_a_damaged_chunk_and_0_when_whole(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    build(root, n=2)
    ok = run_cli("--dir", str(root), "verify", "--full", "--json")
    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    pack = next((root / "objects" / "packs").glob("*.pack"))
    entry = next(e for e in read_pack_index(pack) if e.kind == "chunk")
    flip_byte(pack, entry.offset + entry.length // 2)
    bad = run_cli("--dir", str(root), "verify", "--full")
    assert bad.exit_code == 3
    assert "problem:" in bad.output and "w chunk 0" in bad.output and "FAILED" in bad.output
    assert (
        run_cli("--dir", str(root), "verify").exit_code == 0
    )  # without --full nothing is re-hashed


def test_rm_drops_state_keeps_history(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    ids = build(root, n=3)
    assert run_cli("--dir", str(root), "rm", "HEAD~1", "--reason", "licence").exit_code == 0
    run_cli("--dir", str(root), "gc", "--grace", "0")
    with Ledger.open(root) as lg:
        assert lg.refs.state().expired[ids[1]].reason == "licence"
        assert len(list(lg.log())) == 3
    shown = run_cli("--dir", str(root), "checkout", ids[1], "--out", str(tmp_path / "o"), "--json")
    assert shown.exit_code == 1
    assert json.loads(shown.output)["error"]["type"] == "CommitExpiredError"


def test_gc_remote_from_the_shell_applies_retention_on_the_remote(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    build(root, n=4)
    with Ledger.open(root) as lg:
        lg.remote_add("origin", str(tmp_path / "remote"))
        lg.push("origin")
    run_cli("--dir", str(root), "retention", "--keep-last", "1")
    dry = run_cli("--dir", str(root), "gc", "--remote", "origin", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    doc = json.loads(dry.output)
    assert len(doc["expired"]) == 3
    done = json.loads(run_cli("--dir", str(root), "gc", "--remote", "origin", "--json").output)
    assert done["expired"] == doc["expired"]
    with Ledger.open(root) as lg:
        assert lg.refs.state().expired == {}  # the local ledger is untouched


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("loss:x", "whole number >= 1, not 'x'"),
        ("loss:0", "whole number >= 1, not '0'"),
        ("loss:2:up", "min or max, not 'up'"),
        (":2", "use METRIC[:K[:min|max]]"),
    ],
)
def test_a_malformed_keep_best_is_a_one_line_error_and_changes_nothing(
    tmp_path: Path, spec: str, says: str
) -> None:
    root = tmp_path / "ckpt"
    build(root)
    before = run_cli("--dir", str(root), "retention", "--json").output
    result = run_cli("--dir", str(root), "retention", "--keep-best", spec)
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
    assert run_cli("--dir", str(root), "retention", "--json").output == before
