"""Small training states for the remote tests: a stack of layers whose last one fine-tunes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ledger import Ledger

CHUNK = 64 << 10  # 64 KiB chunks: small states still span many chunks


def model(seed: int = 0, layers: int = 6, width: int = 128) -> torch.nn.Sequential:
    """``layers`` Linear(width, width) layers: ~64 KiB of float32 weights each."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])


def state(net: torch.nn.Module) -> dict[str, Any]:
    """A training state with plain values, tensors of several dtypes and the model."""
    return {
        "model": net,
        "step_ids": torch.arange(1000, dtype=torch.int64),
        "mask": torch.arange(300) % 3 == 0,
        "half": torch.linspace(-1, 1, 5000).to(torch.bfloat16),
        "epoch": 1,
    }


def fine_tune_last(net: torch.nn.Sequential) -> None:
    """Change only the last layer's weights."""
    with torch.no_grad():
        net[-1].weight.add_(0.01)


def new_ledger(path: Path) -> Ledger:
    """A new ledger with small chunks, fsync off."""
    return Ledger.open(path, create=True, fsync=False, chunk_size=CHUNK)


def same(a: Any, b: Any) -> bool:
    """Bit-exact equality of two checked-out states (tensors compared as bytes)."""
    if isinstance(a, torch.Tensor):
        return (
            isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.contiguous().view(torch.uint8).equal(b.contiguous().view(torch.uint8))
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))
    return bool(a == b)


def secrets_in(root: Path, *secrets: str) -> list[str]:
    """Files under ``root`` whose bytes contain any of ``secrets``."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [f"{path}: {s[:4]}..." for s in secrets if s.encode() in data]
    return hits


def chunks_of(lg: Ledger, rev: str) -> set[bytes]:
    """The chunk ids of a commit's state."""
    from ledger.history.tree import chunk_ids

    _, manifest = lg.manifest(rev)
    return {bytes.fromhex(c) for c in chunk_ids(manifest.root)}
