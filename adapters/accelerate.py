"""Accelerate: ``save_state`` / ``load_state`` into a ledger instead of a folder.

This module owns the ledger equivalents of ``Accelerator.save_state`` and
``Accelerator.load_state``: the prepared models, optimizers, schedulers and
data loaders, the grad scaler, every object registered with
``register_for_checkpointing``, the accelerator's step counter and the global
RNG, committed as one commit and restored in place. It is rank-aware: every
process calls it; with several processes each one stores its own part
(``ledger.adapters.distributed``) and the main process alone writes the
commit and moves refs. It never pickles (Accelerate's own ``save_state``
pickles samplers and custom objects; here they go through ``state_dict``).

Example:
    >>> from ledger.adapters.accelerate import save_state, load_state  # doctest: +SKIP
    >>> load_state(accelerator, "ckpt")  # None on an empty ledger  # doctest: +SKIP
    >>> save_state(accelerator, "ckpt", step=step, metrics={"loss": loss})  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

try:
    from accelerate import Accelerator
    from accelerate.data_loader import SeedableRandomSampler
except ImportError as _e:  # pragma: no cover - exercised in a process without accelerate
    from ._common import missing_extra

    raise missing_extra("accelerate", _e) from _e

from ledger import Commit, Ledger
from ledger.errors import StateMismatchError
from ledger.manifest import DictNode, ListNode
from ledger.state.rng import restore_rng

from ._common import (
    LedgerLike,
    ResumeError,
    metric_floats,
    open_ledger,
    plain_params,
    resolve_resume,
)

__all__ = ["LoaderPosition", "accelerator_state", "load_state", "save_state"]

_KEYS = ("models", "optimizers", "schedulers", "dataloaders", "custom", "accelerator")


class LoaderPosition:
    """Where a prepared data loader is: its epoch counter, seedable sampler and stateful state.

    Accelerate's own ``save_state`` pickles the sampler; this keeps the same
    information as plain values: ``iteration`` (the epoch the next
    ``__iter__`` starts), a ``SeedableRandomSampler``'s ``epoch`` and
    ``initial_seed``, and a stateful loader's ``state_dict()``
    (``DataLoaderConfiguration(use_stateful_dataloader=True)``: the position
    inside the epoch).
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def _sampler(self) -> Any:
        get = getattr(self.loader, "get_sampler", None)
        return get() if callable(get) else None

    def state_dict(self) -> dict[str, Any]:
        """The loader's position as plain values and tensors."""
        state: dict[str, Any] = {"iteration": getattr(self.loader, "iteration", None)}
        sampler = self._sampler()
        if isinstance(sampler, SeedableRandomSampler):
            state["sampler"] = {"epoch": sampler.epoch, "initial_seed": sampler.initial_seed}
        if getattr(self.loader, "use_stateful_dataloader", False):
            state["stateful"] = self.loader.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Put the loader back at ``state``'s position."""
        if state.get("iteration") is not None and hasattr(self.loader, "iteration"):
            self.loader.iteration = state["iteration"]
        sampler = self._sampler()
        if "sampler" in state and isinstance(sampler, SeedableRandomSampler):
            sampler.epoch = state["sampler"]["epoch"]
            sampler.initial_seed = state["sampler"]["initial_seed"]
        if "stateful" in state:
            if not getattr(self.loader, "use_stateful_dataloader", False):
                raise ResumeError(
                    "the commit holds a stateful data loader's position, but this loader is not "
                    "stateful; prepare it with DataLoaderConfiguration(use_stateful_dataloader=True)"
                )
            self.loader.load_state_dict(state["stateful"])


class _Counter:
    """The accelerator's own step counter (gradient-accumulation position) as a stateful object."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.accelerator.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.accelerator.step = int(state["step"])


def accelerator_state(accelerator: Accelerator) -> dict[str, Any]:
    """The live state ``save_state`` commits and ``load_state`` restores into.

    Models are unwrapped (no ``module.`` prefixes), so a commit made under DDP
    restores into a single-process run and back.
    """
    state: dict[str, Any] = {
        "models": [accelerator.unwrap_model(m) for m in accelerator._models],
        "optimizers": list(accelerator._optimizers),
        "schedulers": list(accelerator._schedulers),
        "dataloaders": [LoaderPosition(dl) for dl in accelerator._dataloaders],
        "custom": list(accelerator._custom_objects),
        "accelerator": _Counter(accelerator),
    }
    if accelerator.scaler is not None:
        state["scaler"] = accelerator.scaler
    return state


def save_state(
    accelerator: Accelerator,
    ledger: LedgerLike,
    *,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    message: str | None = None,
    branch: str | None = None,
) -> Commit | None:
    """Commit everything ``accelerator.save_state`` would save (call it on every process).

    One process: one ordinary commit. Several processes: every process
    stores its own part (its RNG, its loader positions; replicated weights
    deduplicate to one copy) through ``ledger.adapters.distributed``, and the
    main process writes the one commit and moves the branch.

    Args:
        accelerator: the ``Accelerator`` whose prepared and registered objects are saved.
        ledger: a ledger directory (created when missing) or an open ``Ledger``.
        step, epoch, metrics, params, message, branch: the commit's metadata
            (``step`` defaults to the accelerator's step counter).

    Returns:
        The commit (on every process).

    Example:
        >>> save_state(accelerator, "ckpt", step=step, metrics={"loss": loss.item()})  # doctest: +SKIP
    """
    if not accelerator.sync_gradients:
        warnings.warn(
            "save_state in the middle of a gradient accumulation: the partly accumulated "
            "gradients are not committed, so a resumed run starts that accumulation afresh; "
            "commit right after an optimizer step",
            stacklevel=2,
        )
    meta: dict[str, Any] = {
        "step": accelerator.step if step is None else step,
        "epoch": epoch,
        "metrics": metric_floats(metrics or {}),
        "params": plain_params(params or {}),
        "message": message,
        "branch": branch,
    }
    if accelerator.num_processes > 1:
        from . import distributed

        return distributed.commit(ledger, accelerator_state(accelerator), **meta)
    lg = _open(ledger, accelerator)
    return lg.commit(accelerator_state(accelerator), meta.pop("message"), **meta)


def load_state(
    accelerator: Accelerator, ledger: LedgerLike, rev: str = "HEAD", *, strict: bool = True
) -> Commit | None:
    """Restore ``rev`` into the accelerator's objects, like ``accelerator.load_state``.

    Call it after ``accelerator.prepare`` and ``register_for_checkpointing``,
    on every process. A commit made by several processes gives each process
    its own part back (same number of processes) or rank 0's part (another
    number); a commit made by one process restores into every process.
    Returns the commit (its ``step``, ``epoch`` and ``metrics`` tell where
    the run was), or None on an empty ledger.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.
        StateMismatchError: the prepared objects do not match the commit (nothing changed).
        ResumeError: the commit was not made by ``save_state``.

    Example:
        >>> commit = load_state(accelerator, "ckpt", "best")  # doctest: +SKIP
        >>> start = 0 if commit is None else commit.step + 1  # doctest: +SKIP
    """
    lg = _open(ledger, accelerator)
    cid = resolve_resume(lg, rev)
    if cid is None:
        return None
    root = lg.manifest(cid)[1].root
    sharded = "ranks" in root.keys
    _check_layout(_saved_state(root) if sharded else root, accelerator_state(accelerator), cid, rev)
    state = accelerator_state(accelerator)
    if sharded:
        from . import distributed

        if accelerator.num_processes > 1:
            return distributed.restore(lg, state, cid, strict=strict)
        part = lg.checkout(cid, paths=["ranks/0"])["ranks"][0]
        distributed.apply(state, part["state"], strict=strict)
        restore_rng(part["rng"])
        return lg.get(cid)
    try:
        return lg.restore(state, cid, strict=strict)
    finally:
        accelerator.wait_for_everyone()


def _saved_state(root: DictNode) -> DictNode:
    """Rank 0's ``state`` node of a commit made by several processes."""
    ranks = root.values[root.keys.index("ranks")]
    assert isinstance(ranks, ListNode) and isinstance(ranks.items[0], DictNode)
    part = ranks.items[0]
    state = part.values[part.keys.index("state")]
    assert isinstance(state, DictNode)
    return state


def _check_layout(stored_node: DictNode, state: dict[str, Any], cid: str, rev: str) -> None:
    stored = dict(zip(map(str, stored_node.keys), stored_node.values, strict=True))
    if not set(_KEYS) <= stored.keys():
        raise ResumeError(
            f"commit {cid[:12]} ({rev}) was not made by ledger.adapters.accelerate.save_state "
            f"(it has {sorted(stored)[:8]}); restore it with Ledger.restore instead"
        )
    for key, live in state.items():
        node = stored.get(key)
        if isinstance(live, list) and isinstance(node, ListNode) and len(node.items) != len(live):
            raise StateMismatchError(
                f"commit {cid[:12]} holds {len(node.items)} {key}, this accelerator has "
                f"{len(live)}; prepare and register the same objects as the run that saved it "
                "(nothing was changed)"
            )


def _open(ledger: LedgerLike, accelerator: Accelerator) -> Ledger:
    """Every process's handle; the main process creates a new ledger before the others open it."""
    if isinstance(ledger, Ledger) or accelerator.num_processes == 1:
        return open_ledger(ledger)
    if accelerator.is_main_process:
        lg = open_ledger(ledger)
    accelerator.wait_for_everyone()
    return lg if accelerator.is_main_process else Ledger.open(ledger)
