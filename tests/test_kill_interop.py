"""SIGKILL during an import or an export leaves nothing half-done that looks done.

A child (tests/scripts/kill_at_step.py) runs ``import_checkpoints`` or
``export`` and kills itself just before its N-th file-system step (an fsync,
a rename, a file opened for writing ...). After each kill:

* the ledger opens and ``verify(full=True)`` is clean;
* an interrupted import left, on its branch, only the commits it had
  finished, each whole, the first checkpoints in order (its commits land one
  by one: docs/interop.md), and no other ref moved;
* an interrupted export left nothing at the output path (it is written under
  a hidden name and renamed once complete), or the complete output;
* running the same import or export again succeeds.

The default tier kills once inside each operation (an export just before its
last step); the slow tier at every step.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, bits
from safetensors.torch import load_file

from ledger import Ledger

STEPS = 3  # checkpoints in the import source


def _state(step: int) -> dict[str, object]:
    return {"model": {"w": torch.full((512,), float(step))}, "step": step}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a ledger with one commit on main, a folder of three ``torch.save`` checkpoints)."""
    base = tmp_path_factory.mktemp("interop")
    source = base / "source"
    source.mkdir()
    for step in range(1, STEPS + 1):
        torch.save(_state(step), source / f"step_{step}.pt")
    with Ledger.open(base / "lg", create=True) as lg:
        lg.commit({"model": {"w": torch.arange(1000.0)}}, rng=False, step=1)
    return base / "lg", source


def _run(n: int, root: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, str(SCRIPTS / "kill_at_step.py"), str(n), str(root), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)


def _steps(root: Path, *args: str | Path) -> int:
    done = _run(0, root, *args)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _killed(n: int, root: Path, *args: str | Path) -> None:
    done = _run(n, root, *args)
    assert done.returncode == -signal.SIGKILL, (
        f"the child was not killed at step {n} (it finished, or failed): {done.stderr[-2000:]}"
    )


def _import_after_kill(pristine: tuple[Path, Path], tmp: Path, n: int) -> None:
    original, source = pristine
    root = tmp / f"lg-{n}"
    shutil.copytree(original, root)
    with Ledger.open(root) as lg:
        before = lg.branches()
    _killed(n, root, "import", source, "imp")
    with Ledger.open(root) as lg:
        check = lg.verify(full=True)
        assert check.ok, check.problems
        branches = lg.branches()
        assert set(branches) - set(before) <= {"imp"}
        assert {b: c for b, c in branches.items() if b != "imp"} == before
        landed = [c.step for c in lg.log("imp")] if "imp" in branches else []
        assert landed == list(range(len(landed), 0, -1)), landed  # the first ones, each whole
        lg.import_checkpoints(source, branch="imp")  # adds the rest
        assert [c.step for c in lg.log("imp")] == list(range(STEPS, 0, -1))
        for commit in lg.log("imp"):
            assert bits(lg.checkout(commit.id)) == bits(_state(commit.step or 0))


def _export_after_kill(pristine: tuple[Path, Path], tmp: Path, fmt: str, n: int) -> None:
    original, _ = pristine
    out = tmp / f"out-{fmt}-{n}"
    _killed(n, original, "export", "main", fmt, out)
    with Ledger.open(original) as lg:
        assert lg.verify(full=True).ok
        reference = tmp / f"reference-{fmt}-{n}"
        lg.export("main", fmt, reference)
        if out.exists():  # only whole: the rename was the last step
            assert _exported(out, fmt) == _exported(reference, fmt)
        else:
            lg.export("main", fmt, out)
        assert _exported(out, fmt) == _exported(reference, fmt)


def _exported(out: Path, fmt: str) -> object:
    """What an export holds: its files (names) and its tensors (bits)."""
    if fmt == "torch":
        return bits(torch.load(out, weights_only=True))
    return sorted(p.name for p in out.iterdir()), bits(load_file(out / "model.safetensors"))


def test_an_import_killed_midway_leaves_whole_commits_and_runs_again(
    pristine: tuple[Path, Path], tmp_path: Path
) -> None:
    _import_after_kill(pristine, tmp_path, 12)


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_an_export_killed_before_its_last_step_leaves_no_output_and_runs_again(
    pristine: tuple[Path, Path], tmp_path: Path, fmt: str
) -> None:
    # just before the last step: every file but the last is written
    last = _steps(pristine[0], "export", "main", fmt, tmp_path / "probe")
    _export_after_kill(pristine, tmp_path, fmt, last)


@pytest.mark.slow
def test_an_import_killed_at_any_step(pristine: tuple[Path, Path], tmp_path: Path) -> None:
    original, source = pristine
    probe = tmp_path / "probe"
    shutil.copytree(original, probe)
    for n in range(1, _steps(probe, "import", source, "imp") + 1):
        _import_after_kill(pristine, tmp_path, n)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_an_export_killed_at_any_step(
    pristine: tuple[Path, Path], tmp_path: Path, fmt: str
) -> None:
    original, _ = pristine
    for n in range(1, _steps(original, "export", "main", fmt, tmp_path / "probe") + 1):
        _export_after_kill(pristine, tmp_path, fmt, n)
