"""Global random-number-generator state: capture and set back.

This module owns what "the RNG" means for a commit: Python's ``random``,
numpy's legacy global generator, torch's CPU generator and every initialised
CUDA device's generator. It must never touch RNG state except when asked.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

RNG_KEY = "__rng__"


def capture_rng() -> dict[str, Any]:
    """The global RNG states as plain values, arrays and tensors.

    Example:
        >>> sorted(capture_rng())
        ['cuda', 'numpy', 'python', 'torch']
    """
    cuda: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [torch.cuda.get_rng_state(i) for i in range(torch.cuda.device_count())]
    version, internal, gauss = random.getstate()
    return {
        # One array, not 625 ints: a manifest node each cost ~1 ms per commit to flatten.
        "python": (version, np.array(internal, dtype=np.uint32), gauss),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def python_state(stored: Any) -> tuple[Any, tuple[int, ...], Any]:
    """``random.setstate``'s argument from a stored ``python`` entry.

    The words are an array since the RNG tree stopped storing 625 separate
    ints; commits made before hold a tuple (or list) of ints. Both are read.

    Example:
        >>> state = random.getstate()
        >>> python_state(capture_rng()["python"]) == state
        True
    """
    version, internal, gauss = stored
    words = internal.tolist() if isinstance(internal, np.ndarray) else internal
    return version, tuple(int(w) for w in words), gauss


def restore_rng(tree: dict[str, Any]) -> None:
    """Set the global RNGs from a tree made by :func:`capture_rng` (round-tripped)."""
    if "python" in tree:
        random.setstate(python_state(tree["python"]))
    if "numpy" in tree:
        np.random.set_state(tuple(tree["numpy"]))
    if "torch" in tree:
        torch.set_rng_state(tree["torch"].cpu())
    cuda = tree.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for i, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state.cpu(), i)
