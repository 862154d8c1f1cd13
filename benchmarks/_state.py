"""The benchmark's training state: a stack of fp32 ``nn.Linear`` layers plus AdamW.

``build_state(size_mb)`` picks the layer count so that weights + biases + the two
AdamW moments come to about ``size_mb`` MB (decimal), then runs one optimizer
step so that the optimizer state exists. The same seed always gives the same bytes.
"""

from __future__ import annotations

import math
from typing import Any

import blake3
import torch
from torch import nn

MB = 1_000_000
DEFAULT_WIDTH = 2048
FP32 = 4


def layout(size_mb: float, width: int = DEFAULT_WIDTH) -> tuple[int, int]:
    """(width, n_layers) whose model + AdamW state is closest to ``size_mb`` MB.

    Each layer costs ``3 * 4 * (width**2 + width)`` bytes (weight, bias, exp_avg,
    exp_avg_sq). Below one layer of the default width, the width shrinks instead.
    """
    per_layer = 3 * FP32 * (width * width + width)
    target = size_mb * MB
    if target < per_layer:
        width = max(8, int(math.sqrt(target / (3 * FP32))))
        return width, 1
    return width, max(1, round(target / per_layer))


def build_state(size_mb: float, seed: int = 0) -> tuple[nn.Sequential, torch.optim.AdamW]:
    """Model and AdamW optimizer of about ``size_mb`` MB in total, after one step.

    Gradients are dropped after the step so they do not count in memory figures.
    """
    width, n_layers = layout(size_mb)
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(n_layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(4, width)
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def last_layer(model: nn.Sequential) -> nn.Linear:
    """The layer the incremental-commit benchmark modifies."""
    layer = model[-1]
    assert isinstance(layer, nn.Linear)
    return layer


def flatten(model_sd: dict[str, Any], optim_sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Name -> tensor for a model and an optimizer state dict (no copies).

    Names: ``model.{key}`` and ``optim.state.{param_index}.{key}`` (e.g.
    ``optim.state.3.exp_avg``). Non-tensor optimizer values (param groups) are
    left out; they are a few hundred bytes.
    """
    out = {f"model.{k}": v for k, v in model_sd.items() if isinstance(v, torch.Tensor)}
    for idx, st in optim_sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                out[f"optim.state.{idx}.{k}"] = v
    return out


def live_tensors(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """:func:`flatten` of the live objects: the tensors share storage with them.

    Copying into these tensors therefore restores the live model and optimizer.
    """
    return flatten(model.state_dict(), opt.state_dict())


def state_nbytes(tensors: dict[str, torch.Tensor]) -> int:
    """Total payload bytes of a flat tensor dict."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def digests(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """blake3 of every tensor's bytes, to check that a restore is bit-exact."""
    out = {}
    for k, t in tensors.items():
        b = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        out[k] = blake3.blake3(b.data, max_threads=blake3.blake3.AUTO).hexdigest()
    return out
