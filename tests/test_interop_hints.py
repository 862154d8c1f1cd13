"""The CLI's hints for import and export errors, followed as a user would follow them.

Each test makes the real error through the real ``ledger`` command, reads the
``hint:`` line (or the ``hint`` of the ``--json`` error), runs the command the
hint names with the user's own values in place of ``PATH``/``NEW``, and checks
that it does what the hint says. A type that no ``--allow`` can admit gets no
hint at all.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from helpers import run_cli
from safetensors.torch import save_file

from ledger import Ledger


@pytest.fixture
def where(ledger_dir: Path) -> Path:
    """``ledger_dir``, made by ``ledger init``."""
    assert run_cli("init", "--dir", ledger_dir).exit_code == 0
    return ledger_dir


def _hint(result: Result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("hint: ")]
    assert len(lines) == 1, result.stderr
    return lines[0][len("hint: ") :]


def _command(hint: str, **values: str) -> list[str]:
    """The first `ledger ...` command in ``hint``, split, with PATH/NEW replaced by ``values``."""
    found = re.search(r"`(ledger [^`]+)`", hint)
    assert found, hint
    words = shlex.split(found.group(1))[1:]
    return [values.get(w, w) for w in words]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(torch.nn.Linear(4, 3).state_dict())


def test_a_refused_type_hints_the_allow_that_admits_it_and_following_it_imports(
    where: Path, tmp_path: Path
) -> None:
    ema = np.arange(4, dtype=np.float32)
    source = tmp_path / "ema-step7.pt"
    torch.save({"step": 7, "w": torch.ones(3), "ema": ema}, source)
    allowed: list[str] = []
    for _ in range(6):  # each refusal names the next type the file holds
        result = run_cli("--dir", where, "import", source, "--branch", "ema", *allowed)
        if result.exit_code == 0:
            break
        assert result.exit_code == 1 and "ImportRefusedError" not in result.stderr
        hint = _hint(result)
        assert hint.startswith(f"if you trust {source}, ")
        cmd = _command(hint, PATH=str(source))
        assert cmd[:2] == ["import", str(source)] and cmd[2] == "--allow"
        assert cmd[3] not in [a for a in allowed if a != "--allow"]  # a new type each time
        allowed += cmd[2:]
    else:
        pytest.fail(f"still refused after allowing {allowed}")
    assert "numpy.ndarray" in allowed
    with Ledger.open(where) as lg:
        got = lg.checkout("ema")
        assert lg.get("ema").step == 7
        np.testing.assert_array_equal(np.asarray(got["ema"]), ema)


def test_a_refusal_in_json_carries_the_same_hint_and_the_type(where: Path, tmp_path: Path) -> None:
    source = tmp_path / "arr.pt"
    torch.save({"a": np.zeros(2)}, source)
    result = run_cli("--dir", where, "--json", "import", source)
    doc = json.loads(result.stdout)["error"]
    assert result.exit_code == 1 and doc["type"] == "ImportRefusedError"
    assert f"--allow {doc['fields']['type']}`" in doc["hint"]


def test_a_type_no_allow_can_admit_gets_no_hint_and_imports_nothing(
    where: Path, tmp_path: Path
) -> None:
    source = tmp_path / "evil.pt"
    torch.save({"run": os.system}, source)
    result = run_cli("--dir", where, "import", source, "--branch", "e")
    assert result.exit_code == 1 and "blocks outright" in result.stderr
    assert "hint:" not in result.stderr
    with Ledger.open(where) as lg:
        assert lg.branches() == {}


def test_a_taken_branch_hints_branch_and_following_it_appends(where: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "run", tmp_path / "b" / "run"
    first.mkdir(parents=True), second.mkdir(parents=True)
    first, second = first / "model-1.safetensors", second / "model-2.safetensors"
    save_file(_weights(0), str(first))
    save_file(_weights(1), str(second))
    assert run_cli("--dir", where, "import", first).exit_code == 0  # branch `run`
    refused = run_cli("--dir", where, "import", second)
    assert refused.exit_code == 1 and "exists" in refused.stderr
    cmd = _command(_hint(refused), PATH=str(second))
    assert cmd == ["import", str(second), "--branch", "run"]
    assert run_cli("--dir", where, *cmd).exit_code == 0
    with Ledger.open(where) as lg:
        tip, before = list(lg.log("run"))
        assert tip.parents == [before.id]  # appended onto the tip
        assert torch.equal(lg.checkout("run")["model"]["weight"], _weights(1)["weight"])


def test_onto_for_an_existing_branch_hints_a_new_branch_and_following_it_starts_one(
    where: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    save_file(_weights(0), str(run / "model-1.safetensors"))
    assert run_cli("--dir", where, "import", run / "model-1.safetensors").exit_code == 0
    with Ledger.open(where) as lg:
        base = lg.commit({"w": torch.zeros(1)}, branch="base", rng=False)
    again = tmp_path / "more.safetensors"
    save_file(_weights(2), str(again))
    refused = run_cli("--dir", where, "import", again, "--branch", "run", "--onto", "base")
    assert refused.exit_code == 1
    hint = _hint(refused)
    assert "drop `--onto` to append onto run" in hint
    cmd = _command(hint, PATH=str(again), NEW="from-base")
    assert cmd == ["import", str(again), "--branch", "from-base", "--onto", "base"]
    assert run_cli("--dir", where, *cmd).exit_code == 0
    with Ledger.open(where) as lg:
        assert lg.get("from-base").parents == [base.id]


def test_an_export_into_a_taken_folder_hints_force_and_force_writes_it(
    where: Path, tmp_path: Path
) -> None:
    with Ledger.open(where) as lg:
        lg.commit({"model": _weights(0)}, rng=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("mine")
    refused = run_cli("--dir", where, "export", "HEAD", "--format", "safetensors", out)
    assert refused.exit_code == 1 and "force=True" in refused.stderr
    assert "`--force`" in _hint(refused)
    forced = run_cli("--dir", where, "export", "HEAD", "--format", "safetensors", out, "--force")
    assert forced.exit_code == 0 and (out / "model.safetensors").is_file()
    assert (out / "old.txt").read_text() == "mine"  # never deletes what it did not write
