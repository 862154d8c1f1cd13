"""Helpers the adapter tests and their child-process scripts share.

``shared_dir`` builds a directory once per test session even when several
xdist workers need it (the expensive multi-process training runs).
``bits`` turns a state into a comparable image (tensors as dtype, shape and
raw bytes; floats as their 8 bytes), so ``==`` between two images means
bitwise equality, NaNs and signed zeros included. ``save_image`` /
``load_image`` carry an image from a child process to the test as a
safetensors file plus JSON (no pickle).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file


def bits(value: Any) -> Any:
    """A comparable image of ``value``: equal images mean bitwise-equal states.

    Example:
        >>> bits({"w": torch.zeros(1)}) == bits({"w": torch.zeros(1)})
        True
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return (
            "tensor",
            str(t.dtype),
            tuple(t.shape),
            t.reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, Mapping):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return ("seq", [bits(v) for v in value])
    return value


def flat_tensors(value: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in a nested state, keyed by its path (``a/b/0``)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(value, torch.Tensor):
        out[prefix] = value.detach().cpu().contiguous().clone()
    elif isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flat_tensors(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            out.update(flat_tensors(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


def flat_plain(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-tensor leaf of a nested state, keyed by its path (floats as hex, exact)."""
    out: dict[str, Any] = {}
    if isinstance(value, torch.Tensor):
        return out
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flat_plain(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            out.update(flat_plain(v, f"{prefix}/{i}" if prefix else str(i)))
    elif isinstance(value, float):
        out[prefix] = value.hex()
    else:
        out[prefix] = value
    return out


def save_image(state: Any, path: Path) -> None:
    """Write ``state``'s tensors (safetensors) and plain leaves (JSON) next to ``path``."""
    save_file(flat_tensors(state), str(path.with_suffix(".safetensors")))
    path.with_suffix(".json").write_text(json.dumps(flat_plain(state), sort_keys=True))


def load_image(path: Path) -> dict[str, Any]:
    """The image :func:`save_image` wrote, as ``bits`` of its tensors plus its plain leaves."""
    tensors = load_file(str(path.with_suffix(".safetensors")))
    return {
        "tensors": bits(tensors),
        "plain": json.loads(path.with_suffix(".json").read_text()),
    }


def image(state: Any) -> dict[str, Any]:
    """The same image as :func:`load_image` gives, from a live state in this process."""
    return {
        "tensors": bits(flat_tensors(state)),
        "plain": json.loads(json.dumps(flat_plain(state), sort_keys=True)),
    }


def shared_dir(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A directory ``build`` fills once per session, shared by every xdist worker.

    Module-scoped fixtures run once per worker that needs them; this runs the
    build once, under a file lock, in the session's common temp directory.
    """
    root = factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above the per-worker ones
    target = root / f"shared-{name}"
    with FileLock(str(target) + ".lock"):
        if not (target / "DONE").exists():
            target.mkdir(exist_ok=True)
            build(target)
            (target / "DONE").touch()
    return target
