"""``ledger import PATH [--branch B] [--onto REV] [--allow T]... [--json]``: the command line of the import.

Sources are real files (``torch.save``, safetensors, a Lightning run); the
checks read the ledger back through the Python API and the JSON report.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import bits, load_script, run_cli, tree_bytes
from safetensors.torch import save_file

from ledger import Ledger

src = load_script("import_sources")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    path = tmp_path / "lg"
    assert run_cli("init", "--dir", path).exit_code == 0
    return path


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(torch.nn.Linear(16, 8).state_dict())


def test_import_a_directory_prints_the_checkpoints_and_the_bytes(
    ledger_path: Path, tmp_path: Path
) -> None:
    ckpts = src.lightning_checkpoints(tmp_path, steps=4, every=2)
    result = run_cli("--dir", ledger_path, "import", ckpts)
    assert result.exit_code == 0, result.output
    assert "imported 2 checkpoints onto new branch checkpoints" in result.output
    assert "epoch=0-step=2.ckpt" in result.output and "stored as" in result.output
    with Ledger.open(ledger_path) as lg:
        assert [c.step for c in lg.log("checkpoints")] == [4, 2]
    again = run_cli("--dir", ledger_path, "--json", "import", ckpts)
    doc = json.loads(again.output)
    assert doc["commits"] == [] and all(c["skipped"] for c in doc["checkpoints"])
    assert [c["step"] for c in doc["checkpoints"]] == [2, 4]


def test_branch_onto_and_json(ledger_path: Path, tmp_path: Path) -> None:
    save_file(_weights(0), tmp_path / "a.safetensors")
    torch.save({"model": _weights(1), "step": 5}, tmp_path / "b.pt")
    first = run_cli(
        "--dir", ledger_path, "--json", "import", tmp_path / "a.safetensors", "--branch", "base"
    )
    base = json.loads(first.output)["commits"][0]
    out = run_cli(
        "--dir",
        ledger_path,
        "--json",
        "import",
        tmp_path / "b.pt",
        "--branch",
        "ft",
        "--onto",
        "base",
    )
    doc = json.loads(out.output)
    assert out.exit_code == 0 and doc["branch"] == "ft" and doc["created_branch"] is True
    assert doc["source_bytes"] == (tmp_path / "b.pt").stat().st_size
    with Ledger.open(ledger_path) as lg:
        commit = lg.get("ft")
        assert commit.parents == [base] and commit.step == 5 and commit.id == doc["commits"][0]
        assert bits(lg.checkout("ft")["model"]) == bits(_weights(1))


def test_a_refused_type_exits_1_with_the_allow_advice_and_allow_imports_it(
    ledger_path: Path, tmp_path: Path
) -> None:
    torch.save({"x": np.arange(3, dtype=np.int64)}, tmp_path / "np.pt")
    before = tree_bytes(ledger_path)
    refused = run_cli("--dir", ledger_path, "--json", "import", tmp_path / "np.pt")
    assert refused.exit_code == 1
    err = json.loads(refused.output)["error"]
    assert err["type"] == "ImportRefusedError" and "--allow numpy" in err["message"]
    assert err["fields"]["path"] == str(tmp_path / "np.pt")
    assert tree_bytes(ledger_path) == before
    allow = [
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.dtypes.Int64DType",
    ]
    args = [a for t in allow for a in ("--allow", t)]
    ok = run_cli("--dir", ledger_path, "import", tmp_path / "np.pt", "--branch", "np", *args)
    assert ok.exit_code == 0, ok.output
    with Ledger.open(ledger_path) as lg:
        assert np.array_equal(lg.checkout("np")["x"], np.arange(3))


def test_an_unknown_layout_is_a_one_line_error(ledger_path: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("--dir", ledger_path, "import", tmp_path / "empty")
    assert result.exit_code == 1
    assert "error:" in result.output and "no checkpoint layout" in result.output
    assert "Traceback" not in result.output
