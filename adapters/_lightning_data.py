"""Whether a mid-epoch commit of a Lightning run can resume its data order exactly.

This module owns one check. Lightning resumes a train loader mid-epoch
when the loader is stateful (``state_dict``/``load_state_dict``, e.g.
torchdata's ``StatefulDataLoader``): the loader skips the batches it already
yielded. That reproduces the rest of the epoch only if the shuffle order is
the same, and a ``torch.utils.data.RandomSampler`` without a ``generator``
draws its order from the global RNG when the epoch's iterator is made, which
no checkpoint holds at that instant (a mid-epoch commit holds the RNG of
mid-epoch). The fix is a generator whose state the loader saves with its own
state (torchdata's ``StatefulDataLoader(shuffle=True)`` makes and saves one;
a hand-written loader must), so the check
warns, naming the loader and the fix, when a run that commits mid-epoch has
a stateful loader over such a sampler. It also describes the run's data for
the commit's ``data`` metadata (:func:`data_meta`, through ``ledger.datainfo``)
gathers the hyper-parameters a commit records (``hyperparameters``), and checks
the callback's schedule options as ``ModelCheckpoint`` does (:func:`check_options`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch.utils.data import DataLoader, RandomSampler

from ledger.datainfo import described

from ._common import AdapterError, plain_params

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = [
    "DataOrderWarning",
    "check_options",
    "data_meta",
    "hyperparameters",
    "order_not_saved",
    "warn_order_not_saved",
]


def check_options(
    every_n_train_steps: int | None,
    every_n_epochs: int | None,
    save_top_k: int | None,
    monitor: str | None,
) -> None:
    """Refuse what ``ModelCheckpoint`` refuses, with an ``AdapterError`` naming the option.

    Example:
        >>> check_options(None, 1, 1, None)
    """
    for name, value in (
        ("every_n_train_steps", every_n_train_steps),
        ("every_n_epochs", every_n_epochs),
    ):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise AdapterError(f"{name}={value!r} must be a non-negative integer or None")
    if save_top_k is not None and (not isinstance(save_top_k, int) or save_top_k < -1):
        raise AdapterError(
            f"save_top_k={save_top_k!r} must be None, -1 (keep all), 0 or a positive integer"
        )
    if monitor is None and save_top_k is not None and save_top_k > 1:
        raise AdapterError(
            f"LedgerCheckpoint(save_top_k={save_top_k}, monitor=None) is ambiguous (as in "
            "ModelCheckpoint): pass a monitor to keep the k best, or save_top_k=-1 to keep all"
        )


def data_meta(
    trainer: Any, data: Mapping[str, Any], files: Sequence[str | os.PathLike[str]]
) -> dict[str, Any]:
    """The commit's ``data``: the train loader and DataModule described, files hashed, ``data`` over them.

    Example:
        >>> data_meta(trainer, {"name": "toy"}, [])["name"]  # doctest: +SKIP
        'toy'
    """
    return described(
        data,
        files,
        train=getattr(trainer, "train_dataloader", None),
        datamodule=getattr(trainer, "datamodule", None),
    )


class DataOrderWarning(UserWarning):
    """A mid-epoch resume will not see the batches an uninterrupted run sees (the shuffle order is not saved)."""


def _stateful(loader: Any) -> bool:
    return callable(getattr(loader, "state_dict", None)) and callable(
        getattr(loader, "load_state_dict", None)
    )


def _sampler(loader: Any) -> Any:
    if not isinstance(loader, DataLoader):
        return None
    sampler = loader.sampler
    batch_sampler = getattr(loader, "batch_sampler", None)
    if not isinstance(sampler, RandomSampler) and batch_sampler is not None:
        sampler = getattr(batch_sampler, "sampler", sampler)
    return sampler


def order_not_saved(loaders: Iterable[Any]) -> list[str]:
    """Names of the stateful loaders whose shuffle order comes from the global RNG.

    Example:
        >>> order_not_saved([DataLoader(range(4))])  # not shuffled: nothing to say
        []
    """
    found = []
    for i, loader in enumerate(loaders):
        sampler = _sampler(loader)
        if _stateful(loader) and isinstance(sampler, RandomSampler) and sampler.generator is None:
            found.append(
                f"train dataloader {i} ({type(loader).__name__} over RandomSampler(generator=None))"
            )
    return found


def warn_order_not_saved(loaders: Iterable[Any]) -> bool:
    """Warn (``DataOrderWarning``) about each loader ``order_not_saved`` finds; whether it warned."""
    found = order_not_saved(loaders)
    for name in found:
        warnings.warn(
            f"LedgerCheckpoint commits mid-epoch, but {name} draws its shuffle order from the "
            "global RNG when each epoch starts, which no checkpoint holds: a run resumed from a "
            "mid-epoch commit would see different batches for the rest of that epoch. Pass "
            "generator=torch.Generator().manual_seed(SEED) to the loader and save that generator's "
            "state (as of the epoch's start) in the loader's state_dict, or use torchdata's "
            "StatefulDataLoader(shuffle=True), whose own sampler saves its generator",
            DataOrderWarning,
            stacklevel=3,
        )
    return bool(found)


def hyperparameters(trainer: pl.Trainer) -> dict[str, Any]:
    """``save_hyperparameters`` values of the module and the datamodule, as plain params."""
    params: dict[str, Any] = {}
    module = trainer.lightning_module
    if module is not None:
        params.update(module.hparams)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        params.update({f"datamodule.{k}": v for k, v in datamodule.hparams.items()})
    return plain_params(params)
