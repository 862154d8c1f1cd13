"""The ``ledger`` command: every subcommand, run through click's runner and a real process.

Ledgers are built here with the Python API (tiny models, fsync off); the command's
output (text and ``--json``), files and exit codes are then checked against the
API's own answers and against figures computed independently in the test.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import damage_chunks, run_cli
from safetensors.torch import load_file

from ledger import Ledger
from ledger.cli.graph import draw, topo_order


def as_json(doc: Any) -> Any:
    """What the command's ``--json`` should print for an API object."""
    return json.loads(msgspec.json.encode(doc))


@dataclass
class History:
    """A two-branch ledger: main c0 - c1 - c2, and exp forked at c1 with one commit e1."""

    dir: Path
    c0: str
    c1: str
    c2: str
    e1: str
    weight_c1: torch.Tensor
    weight_e1: torch.Tensor


def build_history(root: Path) -> History:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    with Ledger.open(root, create=True, fsync=False) as lg:

        def commit(step: int, loss: float, **kw: Any) -> str:
            metrics = {"loss": loss, "acc": 0.5, "lr_now": 0.1}
            return lg.commit(
                {"model": model, "step": step, **kw.pop("extra", {})},
                f"step {step}",
                step=step,
                metrics=metrics,
                params=kw.pop("params", {"lr": 0.1}),
                rng=False,
                **kw,
            ).id

        c0 = commit(1, 1.0)
        with torch.no_grad():
            model.weight.add_(1.0)
        c1 = commit(2, 0.5)
        weight_c1 = model.weight.detach().clone()
        lg.branch("exp", at=c1)
        with torch.no_grad():
            model.weight[0, 0] += 1.0
        weight_e1 = model.weight.detach().clone()
        e1 = commit(3, 0.4, branch="exp", params={"lr": 0.01}, extra={"ema": torch.ones(2)})
        with torch.no_grad():
            model.weight.mul_(2.0)
        c2 = commit(3, 0.25)
    return History(root, c0, c1, c2, e1, weight_c1, weight_e1)


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    """A read-only two-branch ledger shared by the tests that only look."""
    return build_history(tmp_path_factory.mktemp("cli") / "ckpt")


@pytest.fixture
def own_history(tmp_path: Path) -> History:
    """A two-branch ledger this test may change."""
    return build_history(tmp_path / "ckpt")


@pytest.fixture
def opened(history: History) -> Iterator[Ledger]:
    with Ledger.open(history.dir) as lg:
        yield lg


# -- log ----------------------------------------------------------------------------


def test_log_graph_draws_both_branches_exactly(history: History) -> None:
    h = history
    result = run_cli("--dir", str(h.dir), "log", "--graph")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith(f"*   {h.c2[:12]}  main ")
    assert lines[1].startswith(f"| * {h.e1[:12]}  exp ")
    assert lines[2] == "|/"
    assert lines[3].startswith(f"*   {h.c1[:12]}  main ")
    assert lines[4].startswith(f"*   {h.c0[:12]}  main ")


def test_graph_joins_three_forks_like_git() -> None:
    parents = {"a": [], "b": ["a"], "x": ["b"], "y": ["b"], "z": ["b"]}
    t0 = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    times = {c: t0 + dt.timedelta(seconds=i) for i, c in enumerate("abxyz")}
    rows = draw(topo_order(parents, times), parents)
    assert [(r.graph, r.commit) for r in rows] == [
        ("*", "z"),
        ("| *", "y"),
        ("| | *", "x"),
        ("|/ /", None),
        ("|/", None),
        ("*", "b"),
        ("*", "a"),
    ]


def test_log_line_has_id_branch_step_metrics_message_and_age(history: History) -> None:
    result = run_cli("--dir", str(history.dir), "log")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line[:12] for line in lines] == [history.c2[:12], history.c1[:12], history.c0[:12]]
    first = lines[0].split()
    assert first[1:4] == ["main", "step", "3"]
    assert first[4:7] == ["loss=0.25", "acc=0.5", "lr_now=0.1"]
    assert "(HEAD -> main) step 3" in lines[0]
    assert lines[0].endswith(" ago")


def test_log_all_merges_branches_by_time_and_n_limits(history: History) -> None:
    h = history
    result = run_cli("--dir", str(h.dir), "log", "--all")
    assert [line[:12] for line in result.stdout.splitlines()] == [
        c[:12] for c in (h.c2, h.e1, h.c1, h.c0)
    ]
    result = run_cli("--dir", str(h.dir), "log", "exp", "-n", "2")
    assert [line[:12] for line in result.stdout.splitlines()] == [h.e1[:12], h.c1[:12]]
    assert "(exp) step 3" in result.stdout


def test_log_json_holds_the_commits_and_graph(history: History, opened: Ledger) -> None:
    result = run_cli("--dir", str(history.dir), "--json", "log", "--graph")
    doc = json.loads(result.stdout)
    ids = [c["id"] for c in doc["commits"]]
    assert ids == [history.c2, history.e1, history.c1, history.c0]
    assert doc["commits"][1] == as_json(opened.get(history.e1))
    assert [r["graph"] for r in doc["graph"]] == ["*", "| *", "|/", "*", "*"]


# -- show / diff / du -----------------------------------------------------------------


def test_show_json_is_the_api_report(history: History, opened: Ledger) -> None:
    result = run_cli("--dir", str(history.dir), "show", "exp", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == as_json(opened.show("exp"))
    text = run_cli("--dir", str(history.dir), "show", "exp").stdout
    assert f"commit {history.e1}" in text
    assert "model/weight" in text and "ema" in text


def test_diff_shows_changed_tensor_bytes_and_metric_delta(history: History) -> None:
    h = history
    wa, wb = h.weight_c1, h.weight_e1
    bytes_changed = int((wa.view(torch.uint8) != wb.view(torch.uint8)).sum())
    rel_l2 = float((wb - wa).double().norm() / wa.double().norm())

    doc = json.loads(run_cli("--dir", str(h.dir), "diff", "main~1", "exp", "--json").stdout)
    [changed] = doc["tensors"]["changed"]
    assert changed["path"] == "model/weight"
    assert changed["bytes_changed"] == bytes_changed
    assert changed["max_abs"] == pytest.approx(1.0)
    assert changed["rel_l2"] == pytest.approx(rel_l2)
    assert doc["tensors"]["added"] == ["ema"]
    assert doc["tensors"]["unchanged"] == 1
    loss = next(m for m in doc["metrics"] if m["name"] == "loss")
    assert loss["delta"] == pytest.approx(-0.1)

    text = run_cli("--dir", str(h.dir), "diff", "main~1", "exp").stdout
    assert "tensors: 1 changed, 1 added, 0 removed, 1 unchanged" in text
    weight_row = next(line for line in text.splitlines() if line.startswith("model/weight"))
    assert weight_row.split()[3:6] == [str(bytes_changed), f"{rel_l2:.4g}", "1"]
    loss_row = next(line for line in text.splitlines() if line.startswith("loss"))
    assert loss_row.split() == ["loss", "0.5", "0.4", "-0.1"]

    def metric_rows(out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines() if line.startswith(("acc", "loss"))]

    assert metric_rows(text) == ["loss"], "equal metrics are hidden without --all"
    every = run_cli("--dir", str(h.dir), "diff", "main~1", "exp", "--all").stdout
    assert metric_rows(every) == ["acc", "loss"]


def test_du_figures_match_the_api_and_dedup_repeated_commits(tmp_path: Path) -> None:
    state = {"w": torch.arange(4096, dtype=torch.float32)}
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        for step in range(4):
            lg.commit(state, step=step, rng=False)
        lg.commit(state, step=9, rng=False, branch="exp")
        expected = lg.du()
    assert expected.dedup_ratio > 1
    doc = json.loads(run_cli("--dir", str(tmp_path / "ckpt"), "du", "--json").stdout)
    assert doc == as_json(expected)
    assert doc["dedup_ratio"] == pytest.approx(5.0)
    text = run_cli("--dir", str(tmp_path / "ckpt"), "du").stdout
    assert f"dedup ratio {expected.dedup_ratio:.2f}x" in " ".join(text.split())
    branches = {line.split()[0]: line.split()[1] for line in text.splitlines()[-2:]}
    assert branches == {"exp": "5", "main": "4"}


# -- export ---------------------------------------------------------------------------


def test_export_log_parquet_round_trips_with_dtypes(
    history: History, opened: Ledger, tmp_path: Path
) -> None:
    out = tmp_path / "log.parquet"
    result = run_cli("--dir", str(history.dir), "export-log", "--format", "parquet", str(out))
    assert result.exit_code == 0
    table = pq.read_table(out)
    assert table.schema.field("step").type == pa.int64()
    assert table.schema.field("metrics.loss").type == pa.float64()
    assert pa.types.is_timestamp(table.schema.field("time").type)
    assert table.equals(opened.table())
    assert table.column("id").to_pylist() == [history.c0, history.c1, history.e1, history.c2]


def test_export_log_csv_and_jsonl_have_one_row_per_commit(history: History, tmp_path: Path) -> None:
    run_cli("--dir", str(history.dir), "export-log", str(tmp_path / "log.csv"))
    csv_lines = (tmp_path / "log.csv").read_text().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith('"id","branch","parents"')
    run_cli("--dir", str(history.dir), "export-log", "--format", "jsonl", str(tmp_path / "log.x"))
    rows = [json.loads(line) for line in (tmp_path / "log.x").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 3]
    assert rows[2]["params.lr"] == 0.01 and rows[2]["parents"] == [history.c1]


def test_plot_writes_a_png_per_branch_series(history: History, tmp_path: Path) -> None:
    out = tmp_path / "loss.png"
    result = run_cli("--dir", str(history.dir), "--json", "plot", "loss", "-o", str(out))
    assert result.exit_code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    series = json.loads(result.stdout)["series"]
    assert series["main"] == {"step": [1, 2, 3], "value": [1.0, 0.5, 0.25]}
    assert series["exp"] == {"step": [1, 2, 3], "value": [1.0, 0.5, 0.4]}
    missing = run_cli("--dir", str(history.dir), "plot", "nope", "-o", str(tmp_path / "x.png"))
    assert missing.exit_code == 1 and "no commit" in missing.stderr


def test_checkout_out_writes_safetensors_others_can_load(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 3)
    model.weight.data = model.weight.data.t()  # non-contiguous
    shared = torch.randn(4, 4)
    tied_in = {"a": shared, "b": shared, "row": shared[1]}
    state: dict[str, Any] = {
        "model": model,
        "tied": tied_in,
        "arr": np.arange(5, dtype=np.int16),
        "step": 7,
        "config": {"name": "tiny", "sizes": [3, 3]},
    }
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        commit = lg.commit(state, step=7, metrics={"loss": 0.1})
    out = tmp_path / "export"
    result = run_cli(
        "--dir", str(tmp_path / "ckpt"), "checkout", "HEAD", "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == {
        "model.safetensors": "model",
        "tied.safetensors": "tied",
        "arr.safetensors": "arr",
    }
    model_file = load_file(out / "model.safetensors")
    assert model_file.keys() == {"weight", "bias"}
    assert torch.equal(model_file["weight"], model.weight) and torch.equal(
        model_file["bias"], model.bias
    )
    tied = load_file(out / "tied.safetensors")
    assert tied.keys() == tied_in.keys()
    assert all(torch.equal(tied[k], v) for k, v in tied_in.items())
    assert load_file(out / "arr.safetensors")["arr"].tolist() == [0, 1, 2, 3, 4]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["commit"]["id"] == commit.id and meta["commit"]["metrics"] == {"loss": 0.1}
    assert meta["values"] == {"step": 7, "config": {"name": "tiny", "sizes": [3, 3]}}
    again = run_cli("--dir", str(tmp_path / "ckpt"), "checkout", "HEAD", "--out", str(out))
    assert again.exit_code == 1 and "not empty" in again.stderr


# -- refs -----------------------------------------------------------------------------


def test_checkout_moves_head_and_b_forks_a_branch(own_history: History) -> None:
    d = str(own_history.dir)
    assert run_cli("--dir", d, "checkout", "exp").stdout.startswith("switched to branch exp")
    assert run_cli("--dir", d, "checkout", "main~1", "-q").stdout == ""
    with Ledger.open(own_history.dir) as lg:
        head = lg.head
        assert lg.current_branch is None and head is not None and head.id == own_history.c1
    run_cli("--dir", d, "checkout", "-b", "retry", "main~2")
    with Ledger.open(own_history.dir) as lg:
        assert lg.current_branch == "retry" and lg.branches()["retry"] == own_history.c0


def test_branch_and_tag_create_list_rename_delete(own_history: History) -> None:
    d = str(own_history.dir)
    assert run_cli("--dir", d, "branch", "b2", "exp").exit_code == 0
    listing = run_cli("--dir", d, "branch").stdout.splitlines()
    assert [line.split()[:2] for line in listing] == [
        ["b2", own_history.e1[:12]],
        ["exp", own_history.e1[:12]],
        ["*", "main"],
    ]
    assert run_cli("--dir", d, "branch", "-m", "b2", "b3").exit_code == 0
    assert run_cli("--dir", d, "branch", "-d", "b3").exit_code == 0
    refused = run_cli("--dir", d, "branch", "-d", "exp")
    assert refused.exit_code == 1 and "-D" in refused.stderr
    assert run_cli("--dir", d, "branch", "-D", "exp").exit_code == 0
    assert run_cli("--dir", d, "tag", "v1", "main~1").exit_code == 0
    tags = json.loads(run_cli("--dir", d, "tag", "--json").stdout)
    assert tags == {"tags": [{"name": "v1", "commit": own_history.c1}]}
    branches = json.loads(run_cli("--dir", d, "branch", "--json").stdout)
    assert branches["current"] == "main" and [b["name"] for b in branches["branches"]] == ["main"]


def test_init_makes_dot_ledger_here_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("init")
    assert result.exit_code == 0 and "initialized" in result.stdout
    assert (tmp_path / ".ledger" / "LEDGER").is_file()
    doc = json.loads(run_cli("init", str(tmp_path / "other"), "--json").stdout)
    assert doc == {"path": str(tmp_path / "other"), "created": True}
    assert json.loads(run_cli("init", "--json").stdout)["created"] is False


# -- global options and discovery -------------------------------------------------------


def test_global_options_work_before_and_after_the_subcommand(history: History) -> None:
    d = str(history.dir)
    outputs = {
        run_cli(*args).stdout
        for args in (
            ("--dir", d, "--json", "log"),
            ("log", "--dir", d, "--json"),
            ("--json", "log", f"--dir={d}"),
            ("--dir", "/nonexistent", "log", "--dir", d, "--json"),
        )
    }
    assert len(outputs) == 1
    assert json.loads(outputs.pop())["commits"][0]["id"] == history.c2


def test_quiet_silences_confirmations_before_or_after(own_history: History) -> None:
    d = str(own_history.dir)
    assert run_cli("--dir", d, "branch", "x1").stdout.startswith("created branch x1")
    assert run_cli("-q", "--dir", d, "branch", "x2").stdout == ""
    assert run_cli("--dir", d, "branch", "x3", "--quiet").stdout == ""


def test_ledger_is_found_via_env_then_parent_dirs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(tmp_path / "proj" / ".ledger", create=True, fsync=False) as lg:
        found_by_walk = lg.commit({"w": torch.ones(1)}, rng=False).id
    with Ledger.open(tmp_path / "elsewhere", create=True, fsync=False) as lg:
        found_by_env = lg.commit({"w": torch.zeros(1)}, rng=False).id
    deep = tmp_path / "proj" / "src" / "deep"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)

    def head_id(**env: str) -> str:
        return json.loads(run_cli("show", "--json", env=dict(env)).stdout)["commit"]["id"]

    assert head_id() == found_by_walk
    assert head_id(LEDGER_DIR=str(tmp_path / "elsewhere")) == found_by_env
    monkeypatch.chdir(tmp_path)
    missing = run_cli("log")
    assert missing.exit_code == 1
    assert "no ledger found" in missing.stderr and "ledger init" in missing.stderr


# -- exit codes -------------------------------------------------------------------------


def test_unknown_revision_exits_1_with_one_line_and_json_error(history: History) -> None:
    result = run_cli("--dir", str(history.dir), "show", "nope")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "nope" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 2
    result = run_cli("--dir", str(history.dir), "diff", "main", "nope", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "RevisionNotFoundError" and "nope" in error["message"]


@pytest.mark.parametrize(
    "args",
    [
        ("log", "--no-such-option"),
        ("branch", "-d", "a", "b"),
        ("diff", "main"),
        ("export-log", "out.unknown"),
        ("frobnicate",),
    ],
)
def test_bad_usage_exits_2(history: History, args: tuple[str, ...]) -> None:
    result = run_cli("--dir", str(history.dir), *args)
    assert result.exit_code == 2, result.output
    as_doc = run_cli("--dir", str(history.dir), "--json", *args)
    assert as_doc.exit_code == 2 and "error" in json.loads(as_doc.stdout)


def test_corrupted_chunk_exits_3_from_checkout_out_and_diff(
    own_history: History, tmp_path: Path
) -> None:
    assert sum(map(damage_chunks, own_history.dir.rglob("*.pack"))) > 0
    d = str(own_history.dir)
    result = run_cli("--dir", d, "checkout", "exp", "--out", str(tmp_path / "out"))
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    result = run_cli("--dir", d, "--json", "diff", "main~1", "exp")
    assert result.exit_code == 3
    assert json.loads(result.stdout)["error"]["type"] == "CorruptionError"


def test_internal_bug_exits_4_with_traceback(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Ledger) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Ledger, "du", broken)
    result = run_cli("--dir", str(history.dir), "du")
    assert result.exit_code == 4
    assert "Traceback" in result.stderr and "RuntimeError: boom" in result.stderr


# -- a real process -----------------------------------------------------------------------


def _proc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEDGER_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_process_prints_one_json_document(history: History) -> None:
    proc = _proc("log", "--all", "--dir", str(history.dir), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [c["id"] for c in doc["commits"]] == [history.c2, history.e1, history.c1, history.c0]


@pytest.mark.parametrize("args", [["log"], ["--json", "log"], ["show", "HEAD"]])
def test_a_reader_that_closed_the_pipe_ends_the_command_quietly_with_exit_0(
    history: History, args: list[str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "--dir", str(history.dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -1` does once it has its line: every write fails
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert err == ""


def test_process_reports_errors_with_exit_codes(history: History, tmp_path: Path) -> None:
    proc = _proc("--dir", str(history.dir), "checkout", "no-such-branch")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    proc = _proc("--dir", str(history.dir), "--json", "log", "-n", "many")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["error"]["type"] == "BadParameter"
