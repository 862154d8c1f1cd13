"""show / diff / du / table and branch delete / rename, asserted on ledgers built here."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec
import pyarrow as pa
import pytest
import torch
from helpers import run_cli

from ledger import File, Ledger
from ledger.errors import RefNameError, UnmergedBranchError


def _model(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))


def test_diff_reports_metric_deltas_params_and_changed_tensor_statistics(lg: Ledger) -> None:
    model = _model()
    a = lg.commit({"model": model}, step=1, metrics={"loss": 2.0}, params={"lr": 0.1, "bs": 8})
    before = model[2].weight.detach().clone()
    with torch.no_grad():
        model[2].weight[0, 0] += 3.0
    b = lg.commit(
        {"model": model, "extra": torch.ones(2)},
        step=2,
        metrics={"loss": 1.5, "acc": 0.5},
        params={"lr": 0.2, "bs": 8},
    )
    report = lg.diff(a.id, b.id)
    metrics = {m.name: m for m in report.metrics}
    assert metrics["loss"].delta == pytest.approx(-0.5)
    assert metrics["acc"].a is None and metrics["acc"].delta is None
    params = {p.key: p for p in report.params}
    assert not params["lr"].same and params["bs"].same
    assert report.tensors.added == ["extra"]
    assert report.tensors.removed == []
    assert report.tensors.unchanged == 3
    [change] = report.tensors.changed
    assert change.path == "model/2.weight"
    diff = model[2].weight.detach().double() - before.double()
    assert change.max_abs == pytest.approx(3.0, rel=1e-6)
    assert change.rel_l2 == pytest.approx(float(diff.norm() / before.double().norm()))
    # one float32 element changed: at most its 4 bytes differ
    assert 1 <= change.bytes_changed <= 4
    # The report is a msgspec Struct: it encodes to JSON as the CLI prints it.
    decoded = msgspec.json.decode(msgspec.json.encode(report))
    assert decoded["tensors"]["changed"][0]["path"] == "model/2.weight"


def test_diff_lists_the_plain_values_and_files_of_the_state_that_differ(
    lg: Ledger, tmp_path: Path
) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"hidden": 8}')
    state = {
        "step": 1,
        "name": "run",
        "cfg": File.from_path(cfg),
        "notes": File(b"same"),
        "gone": 3,
        "nested": {"lr": 0.1},
    }
    a = lg.commit(state)
    cfg.write_text('{"hidden": 9}')  # the same size: compared by content, not size
    b = lg.commit(
        {**state, "step": 2, "cfg": File.from_path(cfg), "nested": {"lr": 0.1}, "gone": None}
    )
    del state["gone"]
    c = lg.commit({**state, "new": True})
    by_key = {f.key: f for f in lg.diff(a.id, b.id).values}
    assert not by_key["step"].same and (by_key["step"].a, by_key["step"].b) == (1, 2)
    assert not by_key["cfg"].same and by_key["cfg"].a == by_key["cfg"].b == "<file, 13 bytes>"
    assert by_key["notes"].same and by_key["nested/lr"].same and by_key["name"].same
    assert not by_key["gone"].same and by_key["gone"].b is None
    assert not any(k.startswith("__rng__") for k in by_key)
    added = {f.key: f for f in lg.diff(a.id, c.id).values if not f.same}
    assert set(added) == {"gone", "new"} and added["new"].a is None
    out = run_cli("--dir", lg.root, "diff", a.id, b.id)
    assert out.exit_code == 0, out.output
    assert "state values (differing)" in out.output and "cfg" in out.output
    assert "notes" not in out.output  # the same on both sides: listed only with --all
    assert "notes" in run_cli("--dir", lg.root, "diff", "--all", a.id, b.id).output


def test_show_lists_every_tensor_and_plain_value(lg: Ledger) -> None:
    model = _model()
    lg.commit({"model": model, "step": 7, "name": "run-1"}, step=7)
    report = lg.show("HEAD")
    paths = {t.path: t for t in report.tensors}
    assert set(paths) == {"model/0.weight", "model/0.bias", "model/2.weight", "model/2.bias"}
    assert paths["model/0.weight"].shape == [16, 4] and paths["model/0.weight"].nbytes == 256
    assert report.values == {"step": 7, "name": "run-1"}
    assert report.logical_bytes == sum(p.numel() * 4 for p in model.parameters())


def test_du_counts_dedup_across_branches(lg: Ledger) -> None:
    model = _model()
    base = lg.commit({"model": model}, rng=False)
    for i in range(3):
        lg.commit({"model": model}, branch=f"exp{i}", rng=False)
    with torch.no_grad():
        model[2].bias.add_(1.0)
    lg.commit({"model": model}, branch="exp0", rng=False)
    report = lg.du()
    assert report.commits == 5
    assert report.logical_bytes == 5 * base.stats.logical_bytes
    # unique bytes: the base tensors once, plus the one changed bias (3 floats)
    assert report.unique_bytes == base.stats.logical_bytes + 12
    assert report.dedup_ratio == pytest.approx(report.logical_bytes / report.unique_bytes)
    by_branch = {b.branch: b for b in report.branches}
    assert by_branch["exp0"].commits == 3
    assert by_branch["exp0"].exclusive_bytes == 12
    assert by_branch["exp1"].exclusive_bytes == 0


def test_table_has_one_row_per_commit_with_typed_metric_and_param_columns(lg: Ledger) -> None:
    model = _model()
    for step in range(3):
        lg.commit(
            {"model": model},
            step=step,
            epoch=0,
            metrics={"loss": 1.0 / (step + 1)},
            params={"lr": 0.1, "opt": {"beta": 0.9}},
        )
    lg.commit({"model": model}, step=3, branch="b", metrics={"acc": 0.7})
    table = lg.table()
    assert table.num_rows == 4
    assert table.schema.field("step").type == pa.int64()
    assert table.schema.field("metrics.loss").type == pa.float64()
    assert table.schema.field("params.opt.beta").type == pa.float64()
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
    assert [r["step"] for r in rows] == [0, 1, 2, 3]
    assert rows[2]["metrics.loss"] == pytest.approx(1 / 3)
    assert rows[3]["metrics.loss"] is None and rows[3]["branch"] == "b"
    assert rows[1]["parents"] == [rows[0]["id"]]
    assert isinstance(rows[0]["time"], dt.datetime)


def test_deleting_an_unmerged_branch_needs_force_and_keeps_history_elsewhere(lg: Ledger) -> None:
    lg.commit({"x": torch.zeros(1)})
    side = lg.commit({"x": torch.ones(1)}, branch="side")
    with pytest.raises(UnmergedBranchError, match="side"):
        lg.delete_branch("side")
    assert lg.branches()["side"] == side.id
    lg.tag("keep", at="side")
    assert lg.delete_branch("side") == side.id  # reachable from a tag: allowed
    assert "side" not in lg.branches()
    lg.commit({"x": torch.ones(1)}, branch="other")
    assert lg.delete_branch("other", force=True)
    with pytest.raises(RefNameError, match="checked out"):
        lg.delete_branch("main")


def test_renaming_the_current_branch_moves_head_with_it(lg: Ledger) -> None:
    c = lg.commit({"x": torch.zeros(1)})
    lg.rename_branch("main", "trunk")
    assert lg.branches() == {"trunk": c.id}
    assert lg.current_branch == "trunk"
    c2 = lg.commit({"x": torch.ones(1)})
    assert c2.parents == [c.id] and c2.branch == "trunk"
    lg.branch("b")
    with pytest.raises(RefNameError, match="exists"):
        lg.rename_branch("b", "trunk")


def test_du_compression_ratio_counts_chunks_only(lg: Ledger) -> None:
    lg.commit({"z": torch.zeros(1 << 16), "r": torch.randn(1 << 12)}, rng=False)
    report = lg.du()
    assert report.unique_bytes == (1 << 16) * 4 + (1 << 12) * 4
    assert report.chunk_stored_bytes < report.unique_bytes  # zeros compress to almost nothing
    assert report.compression_ratio == pytest.approx(
        report.unique_bytes / report.chunk_stored_bytes
    )
    assert report.stored_bytes > report.chunk_stored_bytes  # packs also hold the records
