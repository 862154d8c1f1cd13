"""Helpers shared by the test modules (not a test module; tests/ is on ``sys.path`` under pytest).

``SCRIPTS`` is the folder of the child-process scripts; :func:`load_script`
imports one of them by path, for the helpers the tests share with it;
:func:`start` and :func:`finish` run one as a child process; :func:`bits` is a
comparable image of a state, for bit-exact comparisons.
"""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def load_script(name: str) -> ModuleType:
    """``tests/scripts/<name>.py`` as a module (a fresh one on every call).

    ``SCRIPTS`` goes on ``sys.path`` first, as it does when a script runs, so the
    scripts can import each other by name.
    """
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(
    script: Path, *args: str | int | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Run ``script`` with this interpreter; stdout and stderr go to one text pipe."""
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """Wait for a child from :func:`start`; assert it exited 0 and return its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def bits(value: Any) -> Any:
    """A comparable image of a state: tensors and arrays as (dtype, shape, bytes), floats as bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return (
            "tensor",
            str(t.dtype),
            tuple(t.shape),
            t.reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [bits(v) for v in value])
    return value
