"""Hugging Face Trainer: ``LedgerCallback`` commits at save steps; ``resume`` writes the Trainer's layout.

This module owns the Trainer side of the ledger: at each of the Trainer's
save points it commits what the Trainer's own checkpoint would hold (model,
optimizer, LR scheduler, grad scaler, ``TrainerState`` with the stateful
callbacks, global RNG) instead of writing ``checkpoint-N/``; it maps
``save_total_limit`` / ``metric_for_best_model`` / ``load_best_model_at_end``
onto retention and the ``best`` branch; and ``resume(rev)`` writes a
temporary directory in the Trainer's checkpoint layout from a commit, which
``trainer.train(resume_from_checkpoint=...)`` then loads (every file loads
with ``torch.load(weights_only=True)`` or is safetensors/JSON). It never
pickles and never writes into ``output_dir``.

How the save is taken over: the callback finds its Trainer when the Trainer
calls its first event and replaces that Trainer object's ``_save_checkpoint``
method with a commit. The Trainer calls it at exactly the moment it would
write a checkpoint (after logging, evaluation and the best-metric update), so
the commit holds the same state a checkpoint would, ``save_strategy="best"``
included.

Example:
    >>> cb = LedgerCallback("ckpt")  # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])  # doctest: +SKIP
    >>> trainer.train(resume_from_checkpoint=cb.resume("HEAD"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

try:
    import transformers
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import ExportableState
except ImportError as _e:  # pragma: no cover - exercised in a process without transformers
    from ._common import missing_extra

    raise missing_extra("transformers", _e) from _e

import torch
from safetensors.torch import save_file

from ledger import Commit, Ledger
from ledger.state.rng import RNG_KEY

from ._common import (
    BEST,
    AdapterError,
    LedgerLike,
    ResumeError,
    install_retention,
    metric_floats,
    move_branch,
    open_ledger,
    plain_params,
    resolve_resume,
)

__all__ = ["LedgerCallback"]

_STATE_KEY = "trainer_state"


class LedgerCallback(TrainerCallback):
    """Commits the Trainer's checkpoints into a ledger; the Trainer writes none of its own.

    Args:
        ledger: a ledger directory (created when missing) or an open ``Ledger``.
        branch: commit to this branch instead of HEAD's (HEAD does not move).
        best_ref: the branch that follows the best commit by ``metric_for_best_model``.

    Commits happen where the Trainer would save (``save_strategy``,
    ``save_steps``), each with ``step`` = ``global_step``, the metrics the
    Trainer logged at that step (``loss``, ``eval_*`` ...) and the
    ``TrainingArguments`` as params. ``save_total_limit=k`` becomes
    ``KeepLast(k)``; ``metric_for_best_model`` becomes ``KeepBest`` and the
    ``best`` branch; with ``load_best_model_at_end`` the best commit's weights
    are loaded into the model when training ends.

    Example:
        >>> cb = LedgerCallback("ckpt")  # doctest: +SKIP
        >>> trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])  # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=cb.resume("HEAD"))  # doctest: +SKIP
    """

    def __init__(
        self, ledger: LedgerLike, *, branch: str | None = None, best_ref: str = BEST
    ) -> None:
        self.ledger: Ledger = open_ledger(ledger)
        self.branch = branch
        self.best_ref = best_ref
        self.trainer: Any = None
        self.last_commit: Commit | None = None
        self._tmp: list[Path] = []
        self._cleanup = weakref.finalize(self, _remove_all, self._tmp)

    # -- resuming ----------------------------------------------------------------

    def resume(self, rev: str = "HEAD") -> str | None:
        """A temporary ``checkpoint-<step>`` directory written from ``rev``, or None on an empty ledger.

        The directory holds ``model.safetensors``, ``optimizer.pt``,
        ``scheduler.pt``, ``scaler.pt`` (when the run had a grad scaler),
        ``rng_state.pth`` and ``trainer_state.json``, as the Trainer writes
        them; it is removed when training ends or this callback is collected.

        Raises:
            RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.
            ResumeError: the commit was not made by this callback.

        Example:
            >>> trainer.train(resume_from_checkpoint=cb.resume("best"))  # doctest: +SKIP
        """
        cid = resolve_resume(self.ledger, rev)
        if cid is None:
            return None
        tree = self.ledger.checkout(cid)
        if _STATE_KEY not in tree or "model" not in tree:
            raise ResumeError(
                f"commit {cid[:12]} ({rev}) was not made by LedgerCallback (it has "
                f"{sorted(map(str, tree))[:8]}); resume it with Ledger.restore instead"
            )
        step = int(tree[_STATE_KEY].get("global_step", 0))
        root = Path(tempfile.mkdtemp(prefix="ledger-hf-"))
        self._tmp.append(root)
        out = root / f"checkpoint-{step}"
        out.mkdir()
        write_checkpoint(tree, out)
        return str(out)

    # -- Trainer events ----------------------------------------------------------

    def on_init_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Take over the Trainer's saving and install retention from its arguments."""
        self._attach(args)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Same as ``on_init_end``, for a callback added after the Trainer was built."""
        self._attach(args)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        """Load the best commit's weights (``load_best_model_at_end``); remove resume directories."""
        model = kw.get("model")
        if args.load_best_model_at_end and model is not None:
            best = self.ledger.branches().get(self.best_ref)
            if best is not None:
                weights = self.ledger.checkout(best, paths=["model"])["model"]
                model.load_state_dict(weights, strict=False)
        _remove_all(self._tmp)

    # -- committing ----------------------------------------------------------------

    def _attach(self, args: TrainingArguments) -> None:
        if self.trainer is not None:
            return
        trainer = _find_trainer()
        if trainer is None:
            raise AdapterError(
                "LedgerCallback could not find its Trainer; pass it in Trainer(callbacks=[...]) "
                "or trainer.add_callback(...) before train()"
            )
        if args.world_size > 1:
            raise AdapterError(
                f"LedgerCallback supports single-process training; this run has world_size="
                f"{args.world_size} (per-process RNG and sharded state are not committed yet)"
            )
        if not callable(getattr(trainer, "_save_checkpoint", None)):
            raise AdapterError(
                f"transformers {transformers.__version__} has no Trainer._save_checkpoint; "
                "LedgerCallback is tested with transformers 5.x"
            )
        self.trainer = trainer
        callback = weakref.ref(self)

        def save_checkpoint(model: Any, trial: Any) -> None:
            me = callback()
            if me is not None:
                me.commit(trial)

        trainer._save_checkpoint = save_checkpoint
        metric = args.metric_for_best_model
        if metric is not None and not metric.startswith("eval_"):
            metric = f"eval_{metric}"
        install_retention(
            self.ledger,
            keep_last=args.save_total_limit,
            best=metric,
            best_k=1,
            mode="max" if args.greater_is_better else "min",
        )

    def commit(self, trial: Any = None, message: str | None = None) -> Commit:
        """Commit the Trainer's state now, as its ``_save_checkpoint`` would save it.

        Example:
            >>> cb.commit(message="before the data switch")  # doctest: +SKIP
        """
        trainer = self.trainer
        if trainer is None:
            raise AdapterError("LedgerCallback is not attached to a Trainer yet")
        if trainer.hp_search_backend is None and trial is None:
            trainer.store_flos()
        state: TrainerState = trainer.state
        saved: dict[str, Any] = state.stateful_callbacks  # type: ignore[assignment]  # a dict by now
        for cb in [*trainer.callback_handler.callbacks, trainer.control]:
            if isinstance(cb, ExportableState):  # as Trainer._save_checkpoint refreshes them
                name = type(cb).__name__
                if isinstance(saved.get(name), list):
                    saved[name].append(cb.state())
                else:
                    saved[name] = cb.state()
        tree: dict[str, Any] = {"model": trainer.model}
        if not trainer.args.save_only_model:
            tree["optimizer"] = trainer.optimizer
            tree["scheduler"] = trainer.lr_scheduler
            scaler = getattr(trainer.accelerator, "scaler", None)
            if scaler is not None:
                tree["scaler"] = scaler
        tree[_STATE_KEY] = json.loads(json.dumps(dataclasses.asdict(state)))  # as save_to_json
        step = state.global_step
        commit = self.ledger.commit(
            tree,
            message or f"step {step}",
            step=step,
            epoch=int(state.epoch or 0),
            metrics=_logged_at(state, step),
            params=plain_params(trainer.args.to_dict()),
            branch=self.branch,
        )
        self.last_commit = commit
        if state.best_global_step == step and trainer.args.metric_for_best_model is not None:
            move_branch(
                self.ledger,
                self.best_ref,
                commit.id,
                f"{self.best_ref}: {trainer.args.metric_for_best_model}={state.best_metric} "
                f"at step {step}",
            )
        return commit


def write_checkpoint(tree: dict[str, Any], out: Path) -> None:
    """Write a commit made by ``LedgerCallback`` into ``out`` in the Trainer's checkpoint layout.

    Nothing pickled: tensors go to safetensors, the rest through ``torch.save``
    of plain containers, which ``torch.load(weights_only=True)`` reads (the RNG
    file with the numpy types the Trainer's ``safe_globals`` allows).

    Example:
        >>> write_checkpoint(lg.checkout("HEAD"), Path("checkpoint-100"))  # doctest: +SKIP
    """
    save_file(_unshared(tree["model"]), str(out / "model.safetensors"))
    for key, name in (("optimizer", "optimizer.pt"), ("scheduler", "scheduler.pt")):
        if key in tree:
            torch.save(tree[key], out / name)
    if "scaler" in tree:
        torch.save(tree["scaler"], out / "scaler.pt")
    rng = tree.get(RNG_KEY)
    if rng is not None:
        torch.save(_trainer_rng(rng), out / "rng_state.pth")
    (out / "trainer_state.json").write_text(
        json.dumps(tree[_STATE_KEY], indent=2, sort_keys=True) + "\n"
    )


def _unshared(weights: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's tensors with every second name for shared memory (tied weights) copied."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise ResumeError(f"model entry {name!r} is a {type(tensor).__name__}, not a tensor")
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen and tensor.numel() else tensor.contiguous()
        seen.add(ptr)
    return out


def _trainer_rng(rng: dict[str, Any]) -> dict[str, Any]:
    """The ledger's RNG tree in ``Trainer._save_rng_state``'s single-process format."""
    version, internal, gauss = rng["python"]
    out: dict[str, Any] = {
        "python": (version, tuple(internal), gauss),
        "numpy": tuple(rng["numpy"]),
        "cpu": rng["torch"],
    }
    cuda = rng.get("cuda") or []
    if cuda and torch.cuda.is_available():
        out["cuda"] = cuda[torch.cuda.current_device()]
    return out


def _logged_at(state: TrainerState, step: int) -> dict[str, float]:
    """Every number the Trainer logged at ``step`` (train and eval entries merged)."""
    merged: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") == step:
            merged.update({k: v for k, v in entry.items() if k not in ("step", "epoch")})
    return metric_floats(merged)


def _find_trainer() -> Any:
    """The Trainer whose method is calling this callback's event (found on the call stack)."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            owner = frame.f_locals.get("self")
            if isinstance(owner, transformers.Trainer):
                return owner
            frame = frame.f_back
        return None
    finally:
        del frame


def _remove_all(paths: list[Path]) -> None:
    while paths:
        shutil.rmtree(paths.pop(), ignore_errors=True)
