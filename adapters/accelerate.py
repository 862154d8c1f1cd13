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

It also owns what ``ProjectConfiguration`` means for a ledger: with
``automatic_checkpoint_naming=True`` and no ledger argument, the ledger is
``<project_dir>/ledger``; commits are numbered by ``iteration`` (which each
save increments, as Accelerate's does); ``total_limit=k`` is ``KeepLast(k)``,
and the state it expires is freed right after each save (``gc(grace=0)``,
safe under the gc lock) unless ``free_space=False``.

Example:
    >>> from ledger.adapters.accelerate import save_state, load_state  # doctest: +SKIP
    >>> load_state(accelerator, "ckpt")  # None on an empty ledger  # doctest: +SKIP
    >>> save_state(accelerator, "ckpt", step=step, metrics={"loss": loss})  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    from accelerate import Accelerator
    from accelerate.data_loader import SeedableRandomSampler
except ImportError as _e:  # pragma: no cover - exercised in a process without accelerate
    from ._common import missing_extra

    raise missing_extra("accelerate", _e) from _e

from ledger import Commit, Ledger
from ledger.datainfo import described
from ledger.errors import StateMismatchError
from ledger.manifest import DictNode, ListNode
from ledger.pending import CommitHandle
from ledger.state.rng import restore_rng

from ._common import (
    AdapterError,
    LedgerLike,
    ResumeError,
    install_retention,
    metric_floats,
    open_ledger,
    plain_params,
    resolve_resume,
)
from ._preempt import SafePoint  # commit on a preemption signal or a timer (every process)

__all__ = [
    "LEDGER_FOLDER",
    "LoaderPosition",
    "SafePoint",
    "accelerator_state",
    "load_state",
    "project_ledger",
    "save_state",
]

LEDGER_FOLDER = "ledger"
"""The ledger's folder under ``project_dir`` when ``save_state``/``load_state`` get no ledger."""

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


def project_ledger(accelerator: Accelerator) -> Path:
    """The ledger ``save_state``/``load_state`` use when they are given none: ``<project_dir>/ledger``.

    That needs ``ProjectConfiguration(automatic_checkpoint_naming=True)`` and a
    ``project_dir``, the case in which ``accelerator.save_state()`` takes no
    folder either (it writes ``<project_dir>/checkpoints/checkpoint_<i>``).

    Raises:
        AdapterError: automatic naming is off, or there is no ``project_dir``.

    Example:
        >>> project_ledger(accelerator)  # doctest: +SKIP
        PosixPath('runs/exp1/ledger')
    """
    config = accelerator.project_configuration
    if not config.automatic_checkpoint_naming or accelerator.project_dir is None:
        raise AdapterError(
            "no ledger given and none implied: pass a ledger directory or an open Ledger, or "
            "create the Accelerator with ProjectConfiguration(project_dir=..., "
            f"automatic_checkpoint_naming=True) to use <project_dir>/{LEDGER_FOLDER}"
        )
    return Path(accelerator.project_dir) / LEDGER_FOLDER


_ENGINES = {
    "DEEPSPEED": "DeepSpeed keeps its engine's state in its own checkpoint files "
    "(model.save_checkpoint), which the ledger does not call",
    "FSDP": "FSDP shapes each process's state dict by its own settings (sharded or full), and "
    "no test here shows it restores (FSDP needs a GPU in Accelerate)",
    "MEGATRON_LM": "Megatron-LM saves through its own engine",
    "XLA": "XLA (TPU) tensors are saved through torch_xla, which is not tested here",
}
"""Strategies whose state ``save_state`` cannot take as it is, with why (docs/adapters/accelerate.md)."""


def _refuse_unsupported(accelerator: Accelerator, what: str) -> None:
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    why = _ENGINES.get(kind)
    if why is not None:
        raise AdapterError(
            f"ledger.adapters.accelerate.{what} does not support distributed_type {kind} yet: "
            f"{why}; use accelerator.{what} (Accelerate's own) for this job"
        )


def _loaders(accelerator: Accelerator) -> list[Any]:
    """The prepared data loaders, unwrapped from Accelerate's shards where it keeps the base."""
    return [getattr(dl, "base_dataloader", dl) for dl in accelerator._dataloaders]


def save_state(
    accelerator: Accelerator,
    ledger: LedgerLike | None = None,
    *,
    step: int | None = None,
    epoch: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    message: str | None = None,
    branch: str | None = None,
    free_space: bool = True,
    blocking: bool = True,
    data: Mapping[str, Any] | None = None,
    data_files: Sequence[str | os.PathLike[str]] = (),
) -> Commit | CommitHandle | None:
    """Commit everything ``accelerator.save_state`` would save (call it on every process).

    One process: one ordinary commit. Several processes: every process
    stores its own part (its RNG, its loader positions; replicated weights
    deduplicate to one copy) through ``ledger.adapters.distributed``, and the
    main process writes the one commit and moves the branch.

    With ``ProjectConfiguration(automatic_checkpoint_naming=True)``, as in
    Accelerate: the ledger defaults to ``<project_dir>/ledger``, the step to
    ``project_configuration.iteration``, and ``total_limit=k`` keeps the state
    of the newest ``k`` commits (``KeepLast(k)``, the ledger-wide retention).
    Every save increments ``iteration``, as Accelerate's does.

    Args:
        accelerator: the ``Accelerator`` whose prepared and registered objects are saved.
        ledger: a ledger directory (created when missing) or an open ``Ledger``;
            None: :func:`project_ledger`.
        step, epoch, metrics, params, message, branch: the commit's metadata
            (``step`` defaults to ``iteration`` with automatic naming, else to
            the accelerator's step counter).
        free_space: with ``total_limit``, run ``gc(grace=0)`` on the main
            process right after the commit, so what ``KeepLast`` expired leaves
            the disk as Accelerate's deleted folders do; False leaves that to
            a later ``ledger gc``.
        blocking: False returns a ``CommitHandle`` once every process copied
            its state (``Ledger.commit(blocking=False)`` with one process,
            ``distributed.commit(..., blocking=False)`` with several): the
            training loop goes on while the chunks are written. The next
            ``save_state`` waits for it (raising its error), and only then
            frees what ``total_limit`` expired.
        data: the commit's ``data`` metadata; its keys win over ``dataloaders``,
            found automatically: each prepared loader's dataset class, length,
            batch size and sampler (a ``datasets`` Dataset's fingerprint too).
        data_files: data files (or folders) whose blake3 hashes are recorded as
            ``data.files``, read once per process.

    Returns:
        The commit (on every process), or its ``CommitHandle`` when not blocking.

    Raises:
        AdapterError: no ledger given and no ``project_dir`` with automatic naming; or
            a DeepSpeed, FSDP, Megatron-LM or XLA job (not supported yet).

    Example:
        >>> save_state(accelerator, "ckpt", step=step, metrics={"loss": loss.item()})  # doctest: +SKIP
    """
    _refuse_unsupported(accelerator, "save_state")
    if not accelerator.sync_gradients:
        warnings.warn(
            "save_state in the middle of a gradient accumulation: the partly accumulated "
            "gradients are not committed, so a resumed run starts that accumulation afresh; "
            "commit right after an optimizer step",
            stacklevel=2,
        )
    config = accelerator.project_configuration
    if step is None:
        step = config.iteration if config.automatic_checkpoint_naming else accelerator.step
    meta: dict[str, Any] = {
        "step": step,
        "epoch": epoch,
        "metrics": metric_floats(metrics or {}),
        "params": plain_params(params or {}),
        "message": message,
        "branch": branch,
        "data": described(data, data_files, dataloaders=_loaders(accelerator)),
    }
    lg = _open(project_ledger(accelerator) if ledger is None else ledger, accelerator)
    limit = config.total_limit if config.automatic_checkpoint_naming else None
    if limit is not None and accelerator.is_main_process:
        install_retention(lg, keep_last=limit, best=None, best_k=1, mode="min")
    pending = _unfreed.pop(lg, None)
    if pending is not None:  # the previous save ran in the background: free its space now
        pending.result()
        _free(accelerator, lg)
    commit: Commit | CommitHandle | None
    if accelerator.num_processes > 1:
        from . import distributed

        commit = distributed.commit(lg, accelerator_state(accelerator), **meta, blocking=blocking)
    else:
        commit = lg.commit(
            accelerator_state(accelerator), meta.pop("message"), **meta, blocking=blocking
        )
    if limit is not None and free_space:
        if isinstance(commit, CommitHandle):
            _unfreed[lg] = commit
        else:
            _free(accelerator, lg)
    config.iteration += 1
    return commit


_unfreed: weakref.WeakKeyDictionary[Ledger, CommitHandle] = weakref.WeakKeyDictionary()
"""A background save whose expired states are freed by the next ``save_state`` on that ledger."""


def _free(accelerator: Accelerator, lg: Ledger) -> None:
    if accelerator.is_main_process:
        lg.gc(grace=0)  # only what no ref or kept commit needs; the gc lock guards writers
    accelerator.wait_for_everyone()


def load_state(
    accelerator: Accelerator,
    ledger: LedgerLike | None = None,
    rev: str = "HEAD",
    *,
    strict: bool = True,
) -> Commit | None:
    """Restore ``rev`` into the accelerator's objects, like ``accelerator.load_state``.

    Call it after ``accelerator.prepare`` and ``register_for_checkpointing``,
    on every process. A commit made by several processes gives each process
    its own part back (same number of processes) or rank 0's part (another
    number); a commit made by one process restores into every process.
    The ledger instance remembers the commit (``Ledger.base_on``), so the next
    ``save_state`` through it records it as the parent. With automatic
    naming, ``iteration`` is raised to the loaded commit's step + 1 when it
    is lower, so the next save never reuses a number.

    Args:
        accelerator: the ``Accelerator`` to restore into.
        ledger: a ledger directory or an open ``Ledger``; None: :func:`project_ledger`.
        rev: the revision to restore (HEAD: the newest commit of the current branch).
        strict: fail on keys missing from either side.

    Returns:
        The commit (its ``step``, ``epoch`` and ``metrics`` tell where the run
        was), or None on an empty ledger.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.
        StateMismatchError: the prepared objects do not match the commit (nothing changed).
        ResumeError: the commit was not made by ``save_state``.
        AdapterError: a DeepSpeed, FSDP, Megatron-LM or XLA job (not supported yet).

    Example:
        >>> commit = load_state(accelerator, "ckpt", "best")  # doctest: +SKIP
        >>> start = 0 if commit is None else commit.step + 1  # doctest: +SKIP
    """
    _refuse_unsupported(accelerator, "load_state")
    lg = _open(project_ledger(accelerator) if ledger is None else ledger, accelerator)
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
            commit = distributed.restore(lg, state, cid, strict=strict)
        else:
            part = lg.checkout(cid, paths=["ranks/0"])["ranks"][0]
            distributed.apply(state, part["state"], strict=strict)
            restore_rng(part["rng"])
            commit = lg.get(cid)
        lg.base_on(cid)  # the next commit through lg continues from here (distributed: rank 0's)
    else:
        try:
            commit = lg.restore(state, cid, strict=strict)
        finally:
            accelerator.wait_for_everyone()
    config = accelerator.project_configuration
    if commit is not None and config.automatic_checkpoint_naming and commit.step is not None:
        config.iteration = max(config.iteration, commit.step + 1)
    return commit


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


_handles: weakref.WeakKeyDictionary[Accelerator, dict[str, Ledger]] = weakref.WeakKeyDictionary()
"""Per accelerator, the ledgers opened from a directory: one instance from load to save (lineage)."""


def _close_all(handles: dict[str, Ledger]) -> None:
    for lg in handles.values():
        lg.close()


def _open(ledger: LedgerLike, accelerator: Accelerator) -> Ledger:
    """This process's handle on ``ledger``, the same instance on every call with this accelerator.

    The main process creates a new ledger before the others open it. The
    instance is kept so that what ``load_state`` restored is the parent of
    what ``save_state`` commits next; it closes when the accelerator goes.
    """
    if isinstance(ledger, Ledger):
        return ledger
    if not isinstance(ledger, str | os.PathLike):
        return open_ledger(ledger)  # the error naming what a ledger argument may be
    handles = _handles.get(accelerator)
    if handles is None:
        handles = _handles[accelerator] = {}
        weakref.finalize(accelerator, _close_all, handles)
    key = os.path.abspath(os.fspath(ledger))
    lg = handles.get(key)
    if lg is not None:
        lg.refresh()  # see what other processes wrote since
        return lg
    if accelerator.num_processes == 1 or accelerator.is_main_process:
        lg = open_ledger(ledger)
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            lg = Ledger.open(ledger)
    assert lg is not None
    handles[key] = lg
    return lg
