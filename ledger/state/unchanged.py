"""Trusting torch's version counters to skip tensors a commit already stored.

This module owns the opt-in fast path of ``Ledger.open(..., trust_versions=True)``
(docs/design-decisions.md, "Unchanged tensors"). A tensor is taken for unchanged
when, since the commit that stored it in this process,

- its storage is the same object (held by a weak reference, so a new tensor
  that happens to get the same address is never mistaken for the old one),
  with the same offset, shape, strides and dtype;
- its version counter (``torch_compat.version_counter``, bumped by every
  in-place op that goes through torch's dispatcher) has not moved; and
- a sparse sample of its bytes (8 bytes of every 4 KiB page) is still the same:
  this catches bulk writes that do not bump the counter (``.data`` writes,
  numpy views, fused optimizers, kernels called on raw pointers).

Only a sparse write that bypasses the counter and misses every sampled page
goes unseen, which is why the mode is opt-in: the default pre-check reads
every byte. This module never reads a tensor beyond its sample.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import xxhash

from ledger.state.dtypes import as_bits
from ledger.state.torch_compat import storage_ref, version_counter

# One 8-byte sample per page: a bulk write (an optimizer step) changes every page.
SAMPLE_STRIDE = 4096
SAMPLE_WIDTH = 8
# Smaller tensors are re-hashed: cheap, and not worth an entry.
MIN_BYTES = 64 << 10


class Probe(NamedTuple):
    """What identifies one tensor's bytes at one moment."""

    key: tuple[Any, ...]
    storage: weakref.ref[torch.UntypedStorage]
    version: int
    sample: bytes


class _Seen(NamedTuple):
    probe: Probe
    chunks: list[str]


def sample_digest(t: torch.Tensor) -> bytes:
    """xxh3-128 of 8 bytes of every 4 KiB page of a contiguous tensor, plus its last 8 bytes.

    Example:
        >>> a = torch.zeros(1 << 16)
        >>> b = a.clone(); b[0] = 1.0
        >>> sample_digest(a) != sample_digest(b)
        True
    """
    flat = as_bits(t.as_strided((t.numel(),), (1,))).view(torch.uint8)
    n = flat.numel()
    if n % SAMPLE_WIDTH == 0 and flat.data_ptr() % SAMPLE_WIDTH == 0:
        # One aligned word per page: a strided copy of int64s, ~2x the byte-wise gather.
        words = flat.view(torch.int64)
        both = torch.cat([words[:: SAMPLE_STRIDE // SAMPLE_WIDTH], words[-1:]]).cpu()
    else:
        pages = (n - SAMPLE_WIDTH) // SAMPLE_STRIDE + 1
        picked = flat.as_strided((pages, SAMPLE_WIDTH), (SAMPLE_STRIDE, 1))
        both = torch.cat([picked.reshape(-1), flat[n - SAMPLE_WIDTH :]]).cpu()
    return xxhash.xxh3_128_digest(memoryview(both.numpy()))  # type: ignore[arg-type]


class UnchangedTensors:
    """Tensors committed by this process, by storage identity, version and sample.

    Example:
        >>> seen = UnchangedTensors()
        >>> w = torch.ones(1 << 16)
        >>> p = seen.probe(w)
        >>> seen.remember(p, ["ab" * 32])
        >>> seen.lookup(seen.probe(w), has=lambda oid: True)
        ['abab...']  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[Any, ...], _Seen] = {}

    def probe(self, t: torch.Tensor) -> Probe | None:
        """Identify ``t`` now; None when the fast path does not apply to it.

        Only dense, contiguous CPU or CUDA tensors of at least 64 KiB qualify.
        """
        if (
            t.device.type not in ("cpu", "cuda")
            or not t.is_contiguous()
            or t.numel() * t.element_size() < MIN_BYTES
        ):
            return None
        key = (
            t.device,
            t.untyped_storage().data_ptr(),
            t.storage_offset(),
            tuple(t.shape),
            t.stride(),
            t.dtype,
        )
        return Probe(key, storage_ref(t), version_counter(t), sample_digest(t))

    def lookup(self, probe: Probe, has: Callable[[bytes], bool]) -> list[str] | None:
        """The chunk ids stored for the same bytes, or None (changed, unknown, or not stored)."""
        seen = self._seen.get(probe.key)
        if seen is None:
            return None
        old = seen.probe
        storage = old.storage()
        if (
            storage is None
            or storage is not probe.storage()
            or old.version != probe.version
            or old.sample != probe.sample
            or not all(has(bytes.fromhex(c)) for c in seen.chunks)
        ):
            return None
        return seen.chunks

    def remember(self, probe: Probe, chunks: list[str]) -> None:
        """Record the chunk ids a commit stored for the tensor ``probe`` identified."""
        self._seen[probe.key] = _Seen(probe, list(chunks))

    def prune(self) -> None:
        """Drop entries whose tensor storage is gone."""
        dead = [k for k, s in self._seen.items() if s.probe.storage() is None]
        for k in dead:
            del self._seen[k]

    def __len__(self) -> int:
        return len(self._seen)
