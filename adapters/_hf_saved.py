"""What the Trainer's ``_save_checkpoint`` saves, as the state tree ``LedgerCallback`` commits.

This module owns the tree of a Trainer save (model, ``hf_files``, optimizer,
scheduler, scaler, ``TrainerState`` as JSON values), refreshing the
stateful callbacks' state as the Trainer does before it writes
``trainer_state.json``, and the metrics the Trainer logged at a step. It
reads the Trainer and writes nothing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from transformers import TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from ._common import metric_floats
from ._hf_files import STATE_KEY as FILES_KEY
from ._hf_files import has_hf_files, hf_files
from ._hf_rotation import STATE_KEY


def saved_tree(trainer: Any) -> dict[str, Any]:
    """What the Trainer's ``_save_checkpoint`` saves, as a state tree (the ``TrainerState`` as JSON values).

    Example:
        >>> sorted(saved_tree(trainer))  # doctest: +SKIP
        ['hf_files', 'model', 'optimizer', 'scheduler', 'trainer_state']
    """
    args: TrainingArguments = trainer.args
    tree: dict[str, Any] = {"model": trainer.model}
    if has_hf_files(trainer.model):  # a plain torch model has no from_pretrained folder
        # config, generation config, tokenizer files: `ledger export --format hf` needs them
        tree[FILES_KEY] = hf_files(trainer.model, getattr(trainer, "processing_class", None))
    if not args.save_only_model:
        tree["optimizer"] = trainer.optimizer
        tree["scheduler"] = trainer.lr_scheduler
        scaler = getattr(trainer.accelerator, "scaler", None)
        if scaler is not None:
            tree["scaler"] = scaler
    tree[STATE_KEY] = json.loads(json.dumps(dataclasses.asdict(trainer.state)))  # as save_to_json
    return tree


def refresh_callbacks(trainer: Any) -> None:
    """Store the ``ExportableState`` callbacks' state in ``trainer.state``, as ``_save_checkpoint`` does.

    Example:
        >>> refresh_callbacks(trainer)  # doctest: +SKIP
    """
    saved: dict[str, Any] = trainer.state.stateful_callbacks
    for cb in [*trainer.callback_handler.callbacks, trainer.control]:
        if isinstance(cb, ExportableState):
            name = type(cb).__name__
            if isinstance(saved.get(name), list):
                saved[name].append(cb.state())
            else:
                saved[name] = cb.state()


def logged_at(state: TrainerState, step: int) -> dict[str, float]:
    """Every number the Trainer logged at ``step`` (train and eval entries merged).

    Example:
        >>> logged_at(trainer.state, 4)  # doctest: +SKIP
        {'loss': 3.8, 'grad_norm': 0.9, 'learning_rate': 0.005, 'eval_loss': 3.7}
    """
    merged: dict[str, Any] = {}
    for entry in state.log_history:
        if entry.get("step") == step:
            merged.update({k: v for k, v in entry.items() if k not in ("step", "epoch")})
    return metric_floats(merged)
