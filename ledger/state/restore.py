"""Restore a commit into live objects: validate everything first, then change them.

This module owns ``restore``'s plan: it walks the commit's tree beside the
user's live state (mappings, lists, tensors, arrays, generators, modules,
optimizers and other ``load_state_dict`` objects), collects every mismatch of
keys, shapes and dtypes, and raises them together before any live object is
touched. Where it is exact, tensor bytes go straight into the live tensors'
memory (:meth:`Builder.tensor_into`); everything else is built and handed to
``load_state_dict``. Which modules and optimizers torch loads plainly is
``ledger.state.torch_compat``'s to say. It must never execute anything stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping, MutableSequence
from typing import Any

import numpy as np
import torch

from ledger.errors import StateMismatchError
from ledger.manifest import (
    AliasNode,
    ArrayNode,
    DictNode,
    GeneratorNode,
    ListNode,
    Node,
    StatefulNode,
    TensorNode,
    TupleNode,
    ValueNode,
)
from ledger.state.build import Builder, Path_, finalize
from ledger.state.dtypes import as_bits
from ledger.state.flatten import format_path
from ledger.state.torch_compat import module_loads_plainly, optimizer_loads_plainly


class Restorer:
    """Plans a restore into live objects (validating), then applies it after bytes load."""

    def __init__(self, builder: Builder, strict: bool) -> None:
        self.b = builder
        self.strict = strict
        self.actions: list[Callable[[], None]] = []
        self.problems: list[str] = []
        # What a restore did, by state path (for ``restore(report=True)``, filled when not strict
        # too): live paths the commit lacks, stored paths the live state lacks, paths loaded.
        self.missing: list[Path_] = []
        self.unexpected: list[Path_] = []
        self.loaded: list[Path_] = []

    def plan_root(self, live: MutableMapping[Any, Any], node: DictNode, skip: set[str]) -> None:
        """Plan loading ``node`` into the user's state mapping."""
        self._mapping(live, node, (), skip)
        if self.problems:
            shown = "; ".join(self.problems[:8])
            more = f" (and {len(self.problems) - 8} more)" if len(self.problems) > 8 else ""
            raise StateMismatchError(f"cannot restore: {shown}{more}; nothing was changed")

    def _mapping(
        self,
        live: MutableMapping[Any, Any],
        node: DictNode,
        path: Path_,
        skip: set[str] | None = None,
    ) -> None:
        stored = dict(zip(node.keys, node.values, strict=True))
        for key, child in stored.items():
            if skip and key in skip:
                continue
            if key in live:
                self._into_slot(live, key, child, (*path, key))
            elif self.strict:
                self.problems.append(
                    f"{format_path((*path, key))} is in the commit but not in the live state"
                )
            else:
                self.unexpected.append((*path, key))  # added to the mapping, not "loaded"
                self._assign(live, key, self.b.build(child, (*path, key)), None)
        for key in live:
            if key not in stored and not (skip and key in skip):
                if self.strict:
                    self.problems.append(
                        f"{format_path((*path, key))} is in the live state but not in the commit"
                    )
                else:
                    self.missing.append((*path, key))

    def _assign(self, container: Any, key: Any, value: Any, path: Path_ | None) -> None:
        def act() -> None:
            container[key] = finalize(value, lambda t: t)

        if path is not None:
            self.loaded.append(path)
        self.actions.append(act)

    def _into_slot(self, container: Any, key: Any, node: Node, path: Path_) -> None:
        live = container[key]
        if isinstance(live, tuple) and isinstance(node, TupleNode):
            if len(live) != len(node.items):
                self._mismatch(
                    path,
                    f"a tuple of {len(live)} in the live state, {len(node.items)} in the commit",
                )
                return
            # Tuples are immutable: rebuild and assign; tensors inside are still loaded in place.
            temp = list(live)
            for i, child in enumerate(node.items):
                self._into_slot(temp, i, child, (*path, i))
            self.actions.append(lambda: container.__setitem__(key, tuple(temp)))
            return
        if not self._into(live, node, path):
            self._assign(container, key, self.b.build(node, path), path)

    def _mismatch(self, path: Path_, what: str) -> None:
        self.problems.append(f"{format_path(path)}: {what}")

    def _into(self, live: Any, node: Node, path: Path_) -> bool:
        """Plan an in-place load of ``node`` into ``live``; False means: replace the value instead."""
        if isinstance(node, StatefulNode) and callable(getattr(live, "load_state_dict", None)):
            self._stateful(live, node, path)
            return True
        if isinstance(live, torch.Tensor) and isinstance(node, TensorNode | AliasNode):
            self._tensor(live, node, path)
            return True
        if isinstance(live, np.ndarray) and isinstance(node, ArrayNode) and not node.scalar:
            src = self.b.array(node, path)
            assert isinstance(src, np.ndarray)
            if src.shape != live.shape or src.dtype != live.dtype:
                self._mismatch(
                    path,
                    f"array {live.dtype}{list(live.shape)} live, {src.dtype}{list(src.shape)} stored",
                )
            else:
                self.loaded.append(path)
                self.actions.append(lambda: np.copyto(live, src))
            return True
        if isinstance(live, torch.Generator) and isinstance(node, GeneratorNode):
            state = self.b.tensor(node.state, path)

            def act() -> None:
                live.set_state(state)

            self.loaded.append(path)
            self.actions.append(act)
            return True
        if isinstance(live, MutableMapping) and isinstance(node, DictNode):
            self._mapping(live, node, path)
            return True
        if (
            isinstance(live, MutableSequence)
            and isinstance(node, ListNode)
            and len(live) == len(node.items)
        ):
            for i, child in enumerate(node.items):
                self._into_slot(live, i, child, (*path, i))
            return True
        if (
            isinstance(live, MutableSequence)
            and isinstance(node, ListNode)
            and self.strict
            and any(_kind(v) not in ("value", "list", "tuple", "mapping") for v in live)
        ):
            # A list of live objects (tensors, optimizers ...) of another length is a
            # different structure; a list of plain values is simply replaced.
            self._mismatch(
                path, f"a list of {len(live)} in the live state, {len(node.items)} in the commit"
            )
            return True
        if self.strict and _kind(live) != _kind(node) and _kind(live) != "value":
            self._mismatch(path, f"{_kind(live)} in the live state, {_kind(node)} in the commit")
            return True
        return False

    def _tensor(self, live: torch.Tensor, node: TensorNode | AliasNode, path: Path_) -> None:
        if self.b.tensor_into(node, live, path):
            self.loaded.append(path)
            return  # read in place, straight into the live tensor's memory
        src = self.b.alias(node, path) if isinstance(node, AliasNode) else self.b.tensor(node, path)
        if src.shape != live.shape or src.dtype != live.dtype:
            self._mismatch(
                path,
                f"tensor {str(live.dtype)[6:]}{list(live.shape)} live, {str(src.dtype)[6:]}{list(src.shape)} stored",
            )
            return

        def act() -> None:
            with torch.no_grad():
                as_bits(live).copy_(as_bits(src))  # a bit copy works for every dtype

        self.loaded.append(path)
        self.actions.append(act)

    def _stateful(self, live: Any, node: StatefulNode, path: Path_) -> None:
        is_module = isinstance(live, torch.nn.Module)
        if is_module and isinstance(node.state, DictNode):
            current = live.state_dict()
            stored = dict(zip(node.state.keys, node.state.values, strict=True))
            if self.strict:
                for k in stored.keys() - current.keys():
                    self._mismatch((*path, k), "in the commit but not in the module")
                for k in current.keys() - stored.keys():
                    self._mismatch((*path, k), "in the module but not in the commit")
            else:
                self.unexpected += [(*path, k) for k in stored if k not in current]  # ignored
                self.missing += [(*path, k) for k in current if k not in stored]
            self.loaded += [(*path, k) for k in stored if k in current]
            for k, child in stored.items():
                have = current.get(k)
                if isinstance(child, AliasNode) and child.of in self.b.nodes_by_id:
                    child = self.b.nodes_by_id[child.of][0]  # a tied tensor: check its target
                if (
                    isinstance(have, torch.Tensor)
                    and isinstance(child, TensorNode)
                    and (list(have.shape) != child.shape or str(have.dtype)[6:] != child.dtype)
                ):
                    self._mismatch(
                        (*path, k),
                        f"tensor {str(have.dtype)[6:]}{list(have.shape)} live, {child.dtype}{child.shape} stored",
                    )
        else:
            self.loaded.append(path)
        if isinstance(live, torch.optim.Optimizer):
            self._optimizer_groups(live, node.state, path)
            self._optimizer_in_place(live, node.state, path)
        if is_module and self._module_in_place(live, node, path):
            return
        tree = self.b.build(node.state, path)
        strict = self.strict

        def act() -> None:
            value = finalize(tree, lambda t: t)
            if is_module:
                live.load_state_dict(value, strict=strict)
            else:
                live.load_state_dict(value)

        self.actions.append(act)

    def _optimizer_groups(self, live: torch.optim.Optimizer, node: Node, path: Path_) -> None:
        """Check, before anything changes, the group sizes ``Optimizer.load_state_dict`` checks.

        Without this, a mismatch surfaces as torch's ValueError while other live
        objects have already been loaded.
        """
        groups = _stored_params(node)
        if groups is None:
            return
        stored = [len(params.items) if params is not None else None for params in groups]
        have = [len(g["params"]) for g in live.param_groups]
        if stored != have:
            self._mismatch(
                path,
                f"optimizer with parameter groups of sizes {have} live, {stored} in the commit",
            )

    def _optimizer_in_place(self, live: torch.optim.Optimizer, node: Node, path: Path_) -> None:
        """Read stored optimizer state straight into the live optimizer's state tensors.

        A resumed optimizer that has stepped already holds a tensor per state
        entry (AdamW's ``exp_avg`` ...). Where the stored entry has the same
        dtype and shape as a contiguous CPU tensor that owns its storage, the
        chunks are read into that tensor, and the tree handed to
        ``Optimizer.load_state_dict`` holds the live tensor itself, which torch
        keeps (its cast to the parameter's dtype and device returns the same
        tensor). No second copy of the state is made. Only for optimizers that
        load with torch's own ``load_state_dict``, without load hooks; anything
        else gets new tensors, as before.
        """
        if self.problems or not optimizer_loads_plainly(live) or not isinstance(node, DictNode):
            return
        state = _field(node, "state")
        groups = _stored_params(node)
        if not isinstance(state, DictNode) or groups is None:
            return
        saved_ids: list[Any] = []
        for params in groups:
            if params is None or not all(isinstance(v, ValueNode) for v in params.items):
                return
            saved_ids += [v.value for v in params.items if isinstance(v, ValueNode)]
        live_params = [p for g in live.param_groups for p in g["params"]]
        if len(saved_ids) != len(live_params):
            return
        by_saved_id = dict(zip(saved_ids, live_params, strict=True))
        for key, entry in zip(state.keys, state.values, strict=True):
            param = by_saved_id.get(key)
            if param is None or param not in live.state or not isinstance(entry, DictNode):
                continue
            have = live.state[param]
            for name, child in zip(entry.keys, entry.values, strict=True):
                t = have.get(name)
                if (
                    isinstance(t, torch.Tensor)
                    and isinstance(child, TensorNode)
                    and t.storage_offset() == 0
                    and t.numel() * t.element_size() == t.untyped_storage().nbytes()
                    and t.untyped_storage().data_ptr() not in self.b.targets
                ):
                    self.b.tensor_into(child, t, (*path, "state", key, name))

    def _module_in_place(self, live: torch.nn.Module, node: StatefulNode, path: Path_) -> bool:
        """Read a module's tensors straight into its parameters and buffers when that is exact.

        Only for modules whose loading torch does not customise (no load hooks,
        no ``_load_from_state_dict`` overrides, no extra state) and whose every
        stored entry is a tensor matching a contiguous CPU tensor of the module.
        """
        if not isinstance(node.state, DictNode) or self.problems or not module_loads_plainly(live):
            return False
        targets = live.state_dict(keep_vars=True)
        stored = dict(zip(node.state.keys, node.state.values, strict=True))
        if set(stored) != set(targets) and self.strict:
            return False
        for key, child in stored.items():
            have = targets.get(str(key))
            if not isinstance(child, TensorNode | AliasNode) or not isinstance(have, torch.Tensor):
                return False
            resolved = (
                self.b.nodes_by_id.get(child.of, (None,))[0]
                if isinstance(child, AliasNode)
                else child
            )
            if (
                resolved is None
                or have.device.type != "cpu"
                or not have.is_contiguous()
                or resolved.nbytes == 0
                or str(have.dtype).removeprefix("torch.") != resolved.dtype
                or list(have.shape) != resolved.shape
            ):
                return False
        for key, child in stored.items():
            assert isinstance(child, TensorNode | AliasNode)
            self.b.tensor_into(child, targets[str(key)], (*path, key))
        return True

    def apply(self) -> None:
        """Run every planned change (after :meth:`Builder.load`)."""
        for act in self.actions:
            act()


def _field(node: Node, key: str) -> Node | None:
    """The child ``key`` of a dict node, or None."""
    if isinstance(node, DictNode) and key in node.keys:
        return node.values[node.keys.index(key)]
    return None


def _stored_params(optimizer_state: Node) -> list[ListNode | None] | None:
    """Each stored parameter group's ``params`` list (None where malformed), or None."""
    groups = _field(optimizer_state, "param_groups")
    if not isinstance(groups, ListNode):
        return None
    params = [_field(group, "params") for group in groups.items]
    return [p if isinstance(p, ListNode) else None for p in params]


def _kind(v: Any) -> str:
    if isinstance(v, torch.Tensor | TensorNode | AliasNode):
        return "tensor"
    if isinstance(v, np.ndarray | ArrayNode):
        return "array"
    if isinstance(v, Mapping | DictNode):
        return "mapping"
    if isinstance(v, list | ListNode):
        return "list"
    if isinstance(v, tuple | TupleNode):
        return "tuple"
    if isinstance(v, torch.Generator | GeneratorNode):
        return "generator"
    if isinstance(v, StatefulNode) or callable(getattr(v, "load_state_dict", None)):
        return "stateful object"
    return "value"
