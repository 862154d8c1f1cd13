"""Commands that touch no tensor never import torch or pyarrow (issue: start-up under 0.3 s).

Each case runs the real ``ledger`` entry point in a fresh interpreter and reads
``sys.modules`` at exit, so an import anywhere on the path (the facade, a CLI
module, the hints table, the metadata prefetch thread) is caught. Start-up time
itself is measured in ``benchmarks/startup.py``, never asserted here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ledger import Ledger

HEAVY = ("torch", "pyarrow", "safetensors", "huggingface_hub", "transformers", "lightning")

_PROBE = """
import atexit, json, sys
def _report():
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    sys.__stderr__.write("LOADED " + json.dumps(heavy) + "\\n")
atexit.register(_report)
sys.argv = ["ledger", *{args!r}]
from ledger.cli import main
main()
"""


def loaded(*args: str, cwd: Path) -> tuple[int, list[str], str]:
    """Run ``ledger ARGS`` in a new interpreter: (exit code, heavy modules loaded, stdout)."""
    code = _PROBE.format(heavy=HEAVY, args=list(args))
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    line = [x for x in proc.stderr.splitlines() if x.startswith("LOADED ")]
    assert line, proc.stderr
    return proc.returncode, json.loads(line[-1][len("LOADED ") :]), proc.stdout


@pytest.fixture(scope="module")
def ledger_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("startup") / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        for step in (1, 2, 3):
            lg.commit({"w": torch.full((64,), float(step))}, step=step, metrics={"loss": 1 / step})
        lg.tag("v1")
        lg.branch("exp")
    return root


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("--version",),
        ("log",),
        ("log", "--graph", "--all"),
        ("show", "HEAD~1"),
        ("status",),
        ("log", "step:2"),
        ("show", "best:loss"),
        ("branch",),
        ("tag",),
        ("du",),
        ("retention",),
        ("log", "--help"),
        ("export", "--help"),
        ("import", "--help"),
    ],
    ids=lambda a: " ".join(a),
)
def test_a_command_that_reads_no_tensor_imports_no_torch(
    ledger_dir: Path, args: tuple[str, ...]
) -> None:
    where = () if args[0].startswith("--") else ("--dir", str(ledger_dir))  # a global flag alone
    code, heavy, out = loaded(*args, *where, cwd=ledger_dir.parent)
    assert code == 0, out
    assert heavy == [], f"`ledger {' '.join(args)}` imported {heavy}"
    assert out.strip()


def test_a_command_that_reads_tensors_still_works_after_the_lazy_imports(
    ledger_dir: Path, tmp_path: Path
) -> None:
    """The other side: diff and checkout --out load torch on demand and give the right bytes."""
    code, heavy, out = loaded("diff", "HEAD~1", "HEAD", "--dir", str(ledger_dir), cwd=tmp_path)
    assert code == 0 and "torch" in heavy and "w" in out
    code, heavy, _ = loaded(
        "checkout", "v1", "--out", str(tmp_path / "out"), "--dir", str(ledger_dir), cwd=tmp_path
    )
    assert code == 0 and "safetensors" in heavy
    from safetensors.torch import load_file

    files = sorted((tmp_path / "out").glob("*.safetensors"))
    assert files and torch.equal(load_file(str(files[0]))["w"], torch.full((64,), 3.0))


def test_importing_the_package_loads_no_torch_until_the_facade_is_used() -> None:
    code = (
        "import sys, ledger; a = 'torch' in sys.modules; from ledger import Ledger, LedgerError;"
        " b = 'torch' in sys.modules; print(a, b, Ledger.__name__, LedgerError.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "Ledger", "LedgerError"]
