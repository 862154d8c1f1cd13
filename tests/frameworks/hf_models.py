"""The transformers Trainer test suite's models, data and helpers, ported, plus the two backends.

Ported from huggingface/transformers ``tests/trainer/trainer_test_utils.py``
(read at commit 2d754248977f; the installed transformers is 5.24.0, pinned in
constraints.txt): ``RegressionDataset``, ``RegressionModelConfig``,
``RegressionModel``, ``RegressionPreTrainedModel``,
``RegressionRandomPreTrainedModel``, ``RegressionTrainingArguments``,
``AlmostAccuracy``, ``get_regression_trainer`` and
``TrainerIntegrationCommon.check_trainer_state_are_the_same``, unchanged but
for type hints and a ``callbacks`` argument. ``Backend`` is ours: what stands
for "a checkpoint folder" in each backend.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel, Trainer, TrainingArguments

from ledger import Commit, Ledger
from ledger.adapters.transformers import LedgerCallback


class RegressionDataset:
    def __init__(
        self,
        a: float = 2,
        b: float = 3,
        length: int = 64,
        seed: int = 42,
        label_names: list[str] | None = None,
    ) -> None:
        np.random.seed(seed)
        self.label_names = ["labels"] if label_names is None else label_names
        self.length = length
        self.x = np.random.normal(size=(length,)).astype(np.float32)
        self.ys = [
            a * self.x + b + np.random.normal(scale=0.1, size=(length,)) for _ in self.label_names
        ]
        self.ys = [y.astype(np.float32) for y in self.ys]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, Any]:
        result = {name: y[i] for name, y in zip(self.label_names, self.ys, strict=True)}
        result["input_x"] = self.x[i]
        return result


@dataclasses.dataclass
class RegressionTrainingArguments(TrainingArguments):
    a: float = 0.0
    b: float = 0.0


class AlmostAccuracy:
    def __init__(self, thresh: float = 0.25) -> None:
        self.thresh = thresh

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        predictions, labels = eval_pred
        true = np.abs(predictions - labels) <= self.thresh
        return {"accuracy": true.astype(np.float32).mean().item()}


class RegressionModelConfig(PreTrainedConfig):
    def __init__(
        self,
        a: float = 0,
        b: float = 0,
        double_output: bool = False,
        random_torch: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.a = a
        self.b = b
        self.double_output = double_output
        self.random_torch = random_torch
        self.hidden_size = 1


def _regression_forward(model: Any, input_x: torch.Tensor, labels: Any) -> Any:
    """``y = a * x + b`` with an MSE loss when labels are given (upstream's Regression forward)."""
    y = input_x * model.a + model.b
    if labels is None:
        return (y, y) if model.double_output else (y,)
    loss = nn.functional.mse_loss(y, labels)
    return (loss, y, y) if model.double_output else (loss, y)


class RegressionModel(nn.Module):
    def __init__(self, a: float = 0, b: float = 0, double_output: bool = False) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a).float())
        self.b = nn.Parameter(torch.tensor(b).float())
        self.double_output = double_output
        self.config = None

    def forward(self, input_x: torch.Tensor, labels: Any = None, **kwargs: Any) -> Any:
        return _regression_forward(self, input_x, labels)


class RegressionPreTrainedModel(PreTrainedModel):
    config_class = RegressionModelConfig
    base_model_prefix = "regression"

    def __init__(self, config: RegressionModelConfig) -> None:
        super().__init__(config)
        self.a = nn.Parameter(torch.as_tensor(config.a).float())
        self.b = nn.Parameter(torch.as_tensor(config.b).float())
        self.double_output = config.double_output
        self.post_init()

    def forward(self, input_x: torch.Tensor, labels: Any = None, **kwargs: Any) -> Any:
        return _regression_forward(self, input_x, labels)


class RegressionRandomPreTrainedModel(PreTrainedModel):
    config_class = RegressionModelConfig
    base_model_prefix = "regression"

    def __init__(self, config: RegressionModelConfig) -> None:
        super().__init__(config)
        self.a = nn.Parameter(torch.as_tensor(config.a).float())
        self.b = nn.Parameter(torch.as_tensor(config.b).float())
        self.random_torch = config.random_torch
        self.post_init()

    def forward(self, input_x: torch.Tensor, labels: Any = None, **kwargs: Any) -> Any:
        y = input_x * self.a + self.b
        if self.random_torch:
            torch_rand = torch.randn(1).squeeze()
        np_rand = np.random.rand()
        rand_rand = random.random()

        if self.random_torch:
            y += 0.05 * torch_rand
        y += 0.05 * torch.tensor(np_rand + rand_rand)

        if labels is None:
            return (y,)
        loss = nn.functional.mse_loss(y, labels)
        return (loss, y)


def get_regression_trainer(
    a: float = 0,
    b: float = 0,
    double_output: bool = False,
    train_len: int = 64,
    eval_len: int = 64,
    pretrained: bool = True,
    output_dir: str | None = None,
    callbacks: list[Any] | None = None,
    **kwargs: Any,
) -> Trainer:
    label_names = kwargs.get("label_names")
    train_dataset = RegressionDataset(length=train_len, label_names=label_names)
    eval_dataset = RegressionDataset(length=eval_len, label_names=label_names)
    model: nn.Module
    if pretrained:
        config = RegressionModelConfig(a=a, b=b, double_output=double_output)
        model = RegressionPreTrainedModel(config)
    else:
        model = RegressionModel(a=a, b=b, double_output=double_output)
    compute_metrics = kwargs.pop("compute_metrics", None)
    assert output_dir is not None, "output_dir should be specified for testing"
    args = RegressionTrainingArguments(output_dir, a=a, b=b, **kwargs)
    trainer = Trainer(
        model,
        args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
    )
    # TODO (upstream): loss function defined in RegressionModel doesn't accept num_item_per_batch
    trainer.model_accepts_loss_kwargs = False
    return trainer


def remove_nan_logs(log: dict[str, Any]) -> None:
    for key in list(log.keys()):
        if log[key] != log[key]:  # NaN
            del log[key]


def check_trainer_state_are_the_same(
    trainer_state: dict[str, Any], trainer_state1: dict[str, Any]
) -> None:
    state = trainer_state.copy()
    state1 = trainer_state1.copy()
    log_history = state.pop("log_history", None)
    log_history1 = state1.pop("log_history", None)
    assert state == state1
    skip_log_keys = [
        "train_runtime",
        "train_samples_per_second",
        "train_steps_per_second",
        "train_loss",
    ]
    for log, log1 in zip(log_history, log_history1, strict=False):
        for key in skip_log_keys:
            log.pop(key, None)
            log1.pop(key, None)
        remove_nan_logs(log)
        remove_nan_logs(log1)
        assert log == log1


# -- the two backends ---------------------------------------------------------------

_STEP = re.compile(r"checkpoint-(\d+)$")


@dataclasses.dataclass
class Backend:
    """``trainer``: the Trainer's own ``checkpoint-N`` folders; ``ledger``: ``LedgerCallback``.

    Every method is the same question asked of either: which checkpoints
    exist, what one holds, the path to resume from.
    """

    name: str
    root: Path
    lg: Ledger | None = None

    @property
    def ledger(self) -> Ledger:
        assert self.lg is not None, "the trainer backend has no ledger"
        return self.lg

    def callbacks(self) -> list[Any]:
        """What a Trainer of this backend gets in ``callbacks``."""
        return [LedgerCallback(self.lg)] if self.lg is not None else []

    def callback(self, trainer: Trainer) -> LedgerCallback:
        found = [c for c in trainer.callback_handler.callbacks if isinstance(c, LedgerCallback)]
        assert len(found) == 1
        return found[0]

    def commit_at(self, step: int) -> Commit:
        """The newest commit at ``step`` on HEAD's line (``checkpoint-<step>``)."""
        found = [c for c in self.ledger.log() if c.step == step]
        assert found, f"no commit at step {step}"
        return found[0]

    def checkpoint(self, trainer: Trainer, out: str | os.PathLike[str], step: int) -> str:
        """What the ported test hands to ``resume_from_checkpoint`` for ``out/checkpoint-<step>``."""
        if self.lg is None:
            return os.path.join(out, f"checkpoint-{step}")
        path = self.callback(trainer).resume(self.commit_at(step).id)
        assert path is not None
        return path

    def kept_steps(self, out: str | os.PathLike[str]) -> list[int]:
        """Steps of the checkpoints that exist: folders, or commits on HEAD's line that keep their state."""
        if self.lg is None:
            return sorted(
                int(m[1]) for p in Path(out).iterdir() if (m := _STEP.search(p.name)) and p.is_dir()
            )
        assert not any(Path(out).glob("checkpoint-*")), "the Trainer wrote a folder"
        return sorted(c.step for c in self.ledger.log() if c.step is not None and self.live(c.id))

    def live(self, cid: str) -> bool:
        return self.ledger.show(cid).expired is None

    def weights(self, out: str | os.PathLike[str], step: int) -> dict[str, torch.Tensor]:
        """The model weights of ``checkpoint-<step>``."""
        if self.lg is None:
            return load_file(os.path.join(out, f"checkpoint-{step}", "model.safetensors"))
        return dict(self.ledger.checkout(self.commit_at(step).id, paths=["model"])["model"])

    def holds(self, out: str | os.PathLike[str], step: int) -> set[str]:
        """What ``checkpoint-<step>`` holds, named as the Trainer's files."""
        if self.lg is None:
            return {p.name for p in Path(out, f"checkpoint-{step}").iterdir()}
        keys = set(self.ledger.checkout(self.commit_at(step).id))
        names = {
            "model": "model.safetensors",
            "optimizer": "optimizer.pt",
            "scheduler": "scheduler.pt",
            "trainer_state": "trainer_state.json",
            "__rng__": "rng_state.pth",
        }
        return {names[k] for k in keys if k in names}
