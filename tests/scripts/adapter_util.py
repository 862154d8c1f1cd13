"""Helpers the adapter tests and their child-process scripts share.

``bits`` turns a state into a comparable image (tensors as dtype, shape and
raw bytes; floats as their 8 bytes), so ``==`` between two images means
bitwise equality, NaNs and signed zeros included. ``save_image`` /
``load_image`` carry an image from a child process to the test as a
safetensors file plus JSON (no pickle).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
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
