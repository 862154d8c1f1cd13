"""Loading a stored rank's tree into live objects, checked before anything changes.

This module owns :func:`apply`, the restore side of ``ledger.adapters.distributed``:
it plans every assignment (tensors copied in place, ``DTensor`` shards matched
by global shape and offsets, stateful objects through ``load_state_dict``,
plain values set), reports every mismatch at once, and changes nothing on
the rank when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from ledger.errors import StateMismatchError

from ._reshard import SHARD_KEY


def stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


def apply(
    live: MutableMapping[Any, Any], stored: Mapping[Any, Any], *, strict: bool, tensors: bool = True
) -> None:
    """Load a stored shard tree into live objects; everything is checked before anything changes.

    With ``tensors=False`` tensor and DTensor entries are left as they are
    (a reshard already loaded them) and only the other values are taken.
    """
    plan = _Plan(strict=strict, tensors=tensors)
    plan.mapping(live, stored, ())
    if plan.problems:
        shown = "; ".join(plan.problems[:8])
        raise StateMismatchError(f"cannot restore: {shown}; nothing was changed on this rank")
    for act in plan.actions:
        act()


class _Plan:
    """Collects the changes a restore makes (run only when there is no problem)."""

    def __init__(self, *, strict: bool, tensors: bool) -> None:
        self.strict = strict
        self.tensors = tensors
        self.actions: list[Callable[[], None]] = []
        self.problems: list[str] = []

    def mapping(
        self, live: MutableMapping[Any, Any], stored: Mapping[Any, Any], path: tuple[Any, ...]
    ) -> None:
        for key, value in stored.items():
            if key in live:
                self.slot(live, key, value, (*path, key))
            elif self.strict and path == ():
                self.problems.append(
                    f"{_where((*path, key))} is in the commit but not in the live state"
                )
            elif _is_record(value) and "local" not in value:
                continue  # a reshard read no box of it, and no live DTensor takes one
            else:
                self._assign(live, key, _plain_value(value))
        if self.strict and path == ():
            for key in live:
                if key not in stored:
                    self.problems.append(
                        f"{_where((key,))} is in the live state but not in the commit"
                    )

    def slot(self, container: Any, key: Any, stored: Any, path: tuple[Any, ...]) -> None:
        live = container[key]
        if isinstance(live, DTensor) or _is_record(stored):
            self._shard(live, stored, path)
        elif isinstance(live, torch.Tensor):
            self._tensor(live, stored, path)
        elif stateful(live):
            current = dict(live.state_dict())
            if not isinstance(stored, Mapping):
                self.problems.append(
                    f"{_where(path)}: a stateful object live, {type(stored).__name__} stored"
                )
                return
            self.mapping(current, stored, path)
            self.actions.append(lambda: live.load_state_dict(current))
        elif isinstance(live, MutableMapping) and isinstance(stored, Mapping):
            self.mapping(live, stored, path)
        elif isinstance(live, list) and isinstance(stored, list) and len(live) == len(stored):
            for i, item in enumerate(stored):
                self.slot(live, i, item, (*path, i))
        elif isinstance(live, tuple) and isinstance(stored, tuple) and len(live) == len(stored):
            rebuilt = list(live)
            for i, item in enumerate(stored):
                self.slot(rebuilt, i, item, (*path, i))
            self.actions.append(lambda: container.__setitem__(key, tuple(rebuilt)))
        else:
            self._assign(container, key, _plain_value(stored))

    def _shard(self, live: Any, stored: Any, path: tuple[Any, ...]) -> None:
        if not self.tensors:
            return
        if not (isinstance(live, DTensor) and _is_record(stored)):
            self.problems.append(f"{_where(path)}: a sharded tensor on one side only")
            return
        (chunk,) = live.__create_chunk_list__()
        info = stored[SHARD_KEY]
        if list(live.shape) != info["global_shape"] or list(chunk.offsets) != info["offsets"]:
            self.problems.append(
                f"{_where(path)}: shard at {list(chunk.offsets)} of {list(live.shape)} live, "
                f"at {info['offsets']} of {info['global_shape']} stored"
            )
            return
        self._tensor(live.to_local(), stored["local"], path)

    def _tensor(self, live: torch.Tensor, stored: Any, path: tuple[Any, ...]) -> None:
        if not self.tensors:
            return
        if not isinstance(stored, torch.Tensor):
            self.problems.append(f"{_where(path)}: a tensor live, {type(stored).__name__} stored")
        elif live.shape != stored.shape or live.dtype != stored.dtype:
            self.problems.append(
                f"{_where(path)}: {live.dtype}{list(live.shape)} live, {stored.dtype}{list(stored.shape)} stored"
            )
        else:

            def act() -> None:
                with torch.no_grad():
                    live.copy_(stored)

            self.actions.append(act)

    def _assign(self, container: Any, key: Any, value: Any) -> None:
        self.actions.append(lambda: container.__setitem__(key, value))


def _is_record(value: Any) -> bool:
    return isinstance(value, Mapping) and SHARD_KEY in value


def _plain_value(value: Any) -> Any:
    """A stored value for a slot the live state has no object for (records become their local tensor)."""
    if _is_record(value):
        return value["local"]
    return value


def _where(path: tuple[Any, ...]) -> str:
    return "state" + "".join(f"[{p!r}]" for p in path)
