"""Dtype names as stored in manifests, and the only dtypes a reader will build.

This module owns the mapping between torch / numpy dtypes and the strings in
a manifest. A manifest from disk is untrusted: a dtype name is looked up in a
fixed table, never evaluated.
"""

from __future__ import annotations

import numpy as np
import torch

from ledger.errors import CorruptionError

TORCH_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (getattr(torch, n) for n in dir(torch))
    if isinstance(d, torch.dtype) and not str(d).startswith(("torch.qint", "torch.quint"))
}
# Element size of float-like dtypes whose bytes group well (complex: one float per part).
_FLOAT_ITEMSIZE: dict[torch.dtype, int] = {
    torch.float16: 2,
    torch.bfloat16: 2,
    torch.float32: 4,
    torch.float64: 8,
    torch.complex32: 2,
    torch.complex64: 4,
    torch.complex128: 8,
}


# The integer dtype of each element size: see :func:`as_bits`.
_SAME_SIZE_INT: dict[int, torch.dtype] = {
    1: torch.uint8,
    2: torch.int16,
    4: torch.int32,
    8: torch.int64,
}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """``t`` viewed as the integer dtype of its element size (``t`` itself when none fits).

    Torch has no copy kernel for some dtypes (int1..7, uint1..7); copying
    through this view works for every dtype and is exact bit for bit.

    Example:
        >>> as_bits(torch.zeros(2, dtype=torch.bfloat16)).dtype
        torch.int16
    """
    as_int = _SAME_SIZE_INT.get(t.element_size())
    return t if as_int is None or t.dtype == as_int else t.view(as_int)


def torch_dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``.

    Example:
        >>> torch_dtype_name(torch.bfloat16)
        'bfloat16'
    """
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str, what: str) -> torch.dtype:
    """The torch dtype a manifest names, or :class:`CorruptionError`."""
    dtype = TORCH_DTYPES.get(name)
    if dtype is None:
        raise CorruptionError(
            f"{what}: dtype {name!r} is unknown to this torch; upgrade torch or training-ledger"
        )
    return dtype


def float_itemsize(dtype: torch.dtype | np.dtype) -> int | None:
    """The float element size for byte grouping, or None for non-float dtypes."""
    if isinstance(dtype, torch.dtype):
        return _FLOAT_ITEMSIZE.get(dtype)
    if dtype.kind in "fc" and dtype.itemsize in (2, 4, 8, 16):
        return dtype.itemsize if dtype.kind == "f" else dtype.itemsize // 2
    return None


def numpy_dtype(name: str, what: str) -> np.dtype:
    """The numpy dtype a manifest names (plain numeric / bool / fixed bytes only)."""
    try:
        dtype = np.dtype(name)
    except TypeError as e:
        raise CorruptionError(f"{what}: numpy dtype {name!r} is not valid") from e
    if dtype.hasobject or dtype.kind not in "biufcSUmMV" or dtype.fields is not None:
        raise CorruptionError(f"{what}: numpy dtype {name!r} cannot be read")
    return dtype
