"""The torch private API the ledger relies on, checked against real torch objects.

Each function of ``ledger.state.torch_compat`` is tested both ways (where it
must say yes and where it must say no), so a torch release that renames a
hook table or changes a behaviour fails here, naming the function, rather
than as a wrong restore or a missed change somewhere else.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from ledger.state.torch_compat import (
    module_loads_plainly,
    optimizer_loads_plainly,
    storage_ref,
    version_counter,
)


def noop_hook(*args: Any, **kwargs: Any) -> None:
    return None


# -- version_counter -------------------------------------------------------------


def test_version_counter_moves_on_every_in_place_op() -> None:
    t = torch.zeros(8)
    seen = [version_counter(t)]
    t.add_(1)
    seen.append(version_counter(t))
    t[2] = 5.0
    seen.append(version_counter(t))
    t.copy_(torch.ones(8))
    seen.append(version_counter(t))
    assert seen == sorted(set(seen)), seen  # strictly increasing


def test_version_counter_is_shared_by_views() -> None:
    t = torch.zeros(8)
    view = t[2:6]
    before = version_counter(t)
    view.mul_(2)
    assert version_counter(t) > before


def test_version_counter_stays_on_reads_and_out_of_place_ops() -> None:
    t = torch.arange(8.0)
    before = version_counter(t)
    _ = t.sum(), t + 1, t.clone(), t[1:3], t.numpy().copy()
    assert version_counter(t) == before


# -- storage_ref -------------------------------------------------------------------


def test_storage_ref_is_one_object_for_every_view_of_a_storage() -> None:
    t = torch.zeros(16)
    ref = storage_ref(t)
    assert ref() is not None
    assert ref() is storage_ref(t)()
    assert ref() is storage_ref(t[4:])()
    assert ref() is storage_ref(t.view(4, 4))()


def test_storage_ref_differs_for_a_copy_and_dies_with_the_storage() -> None:
    t = torch.zeros(16)
    ref = storage_ref(t)
    assert storage_ref(t.clone())() is not ref()
    del t
    gc.collect()
    assert ref() is None


# -- optimizer_loads_plainly ------------------------------------------------------


def sgd() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)


def test_a_plain_optimizer_loads_plainly() -> None:
    assert optimizer_loads_plainly(sgd())
    adam = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer_loads_plainly(adam)


def test_an_optimizer_with_a_load_pre_hook_does_not_load_plainly() -> None:
    opt = sgd()
    handle = opt.register_load_state_dict_pre_hook(noop_hook)
    assert not optimizer_loads_plainly(opt)
    handle.remove()
    assert optimizer_loads_plainly(opt)


def test_an_optimizer_with_a_load_post_hook_does_not_load_plainly() -> None:
    opt = sgd()
    opt.register_load_state_dict_post_hook(noop_hook)
    assert not optimizer_loads_plainly(opt)


def test_an_optimizer_overriding_load_state_dict_does_not_load_plainly() -> None:
    class Custom(torch.optim.SGD):
        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            super().load_state_dict(state_dict)

    assert not optimizer_loads_plainly(Custom([torch.nn.Parameter(torch.zeros(2))], lr=0.1))


# -- module_loads_plainly ------------------------------------------------------------


def test_plain_modules_and_batchnorm_load_plainly() -> None:
    assert module_loads_plainly(torch.nn.Linear(2, 2))
    for norm in (torch.nn.BatchNorm1d(3), torch.nn.BatchNorm2d(3), torch.nn.InstanceNorm1d(3)):
        # BatchNorm overrides _load_from_state_dict, only to fill in num_batches_tracked
        assert type(norm)._load_from_state_dict is not torch.nn.Module._load_from_state_dict
        assert module_loads_plainly(norm)
    assert module_loads_plainly(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)))


def test_a_module_with_a_load_pre_hook_does_not_load_plainly() -> None:
    m = torch.nn.Linear(2, 2)
    handle = m.register_load_state_dict_pre_hook(noop_hook)
    assert not module_loads_plainly(m)
    handle.remove()
    assert module_loads_plainly(m)


def test_a_module_with_a_load_post_hook_does_not_load_plainly() -> None:
    m = torch.nn.Linear(2, 2)
    m.register_load_state_dict_post_hook(noop_hook)
    assert not module_loads_plainly(m)


def test_a_module_with_state_dict_hooks_does_not_load_plainly() -> None:
    pre = torch.nn.Linear(2, 2)
    pre.register_state_dict_pre_hook(noop_hook)
    assert not module_loads_plainly(pre)
    post = torch.nn.Linear(2, 2)
    post.register_state_dict_post_hook(noop_hook)
    assert not module_loads_plainly(post)


def test_a_hook_on_a_submodule_is_seen_from_its_parent() -> None:
    child = torch.nn.Linear(2, 2)
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2), child)
    assert module_loads_plainly(parent)
    child.register_load_state_dict_pre_hook(noop_hook)
    assert not module_loads_plainly(parent)


def test_an_overridden_load_from_state_dict_does_not_load_plainly() -> None:
    class Custom(torch.nn.Linear):
        def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
            super()._load_from_state_dict(*args, **kwargs)

    assert not module_loads_plainly(Custom(2, 2))
    assert not module_loads_plainly(torch.nn.Sequential(Custom(2, 2)))


def test_a_module_with_extra_state_does_not_load_plainly() -> None:
    class WithExtra(torch.nn.Linear):
        def get_extra_state(self) -> Any:
            return {"calls": 1}

        def set_extra_state(self, state: Any) -> None:
            pass

    assert not module_loads_plainly(WithExtra(2, 2))
