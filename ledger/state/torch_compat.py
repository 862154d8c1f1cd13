"""Every use of torch's private API in the ledger, behind small named functions.

This module owns what the ledger reads from torch that torch does not
promise to keep: the tensor version counter, the identity of a storage's
Python object, the hook tables of modules and optimizers, and which modules
override ``_load_from_state_dict`` only in ways that still copy tensor by
tensor. ``tests/test_torch_compat.py`` checks each function against real
torch objects, so a torch upgrade that changes one of these fails there, by
name, rather than somewhere in restore or commit. Nothing else in
``ledger`` may touch an underscore name of torch. This module must never
change a torch object.
"""

from __future__ import annotations

import weakref

import torch

# Modules whose ``_load_from_state_dict`` override still loads tensor by tensor (BatchNorm's
# only fills in a missing ``num_batches_tracked`` from older checkpoints).
_PLAIN_LOAD_OVERRIDES = (torch.nn.modules.batchnorm._NormBase,)


def version_counter(t: torch.Tensor) -> int:
    """``t``'s version counter: bumped by every in-place op that goes through torch's dispatcher.

    Reads do not move it; writes that bypass the dispatcher (``.data``, numpy
    views, raw pointers) may not either.

    Example:
        >>> t = torch.zeros(2)
        >>> before = version_counter(t)
        >>> _ = t.add_(1)
        >>> version_counter(t) > before
        True
    """
    return t._version


def storage_ref(t: torch.Tensor) -> weakref.ref[torch.UntypedStorage]:
    """A weak reference to ``t``'s storage object, the same object for every view of it.

    torch keeps one Python object per storage while any tensor holds it, so
    the reference dies with the storage and a new storage at the same address
    is never the same object.

    Example:
        >>> t = torch.zeros(4)
        >>> storage_ref(t)() is storage_ref(t[1:])()
        True
    """
    return weakref.ref(t.untyped_storage())


def optimizer_loads_plainly(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` loads a state dict with torch's own code and no load hooks.

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> optimizer_loads_plainly(opt)
        True
    """
    return (
        type(optimizer).load_state_dict is torch.optim.Optimizer.load_state_dict
        and not optimizer._optimizer_load_state_dict_pre_hooks
        and not optimizer._optimizer_load_state_dict_post_hooks
    )


def module_loads_plainly(module: torch.nn.Module) -> bool:
    """Whether loading a state dict into ``module`` (and every submodule) is a per-tensor copy.

    False where anything customises saving or loading: state-dict or
    load-state-dict hooks, a ``_load_from_state_dict`` override (BatchNorm's
    excepted), or extra state.

    Example:
        >>> module_loads_plainly(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
        True
    """
    for m in module.modules():
        if m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks:
            return False
        if getattr(m, "_state_dict_hooks", None) or getattr(m, "_state_dict_pre_hooks", None):
            return False
        overridden = type(m)._load_from_state_dict is not torch.nn.Module._load_from_state_dict
        if overridden and not isinstance(m, _PLAIN_LOAD_OVERRIDES):
            return False
        if type(m).get_extra_state is not torch.nn.Module.get_extra_state:
            return False
    return True
