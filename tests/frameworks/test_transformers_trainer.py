"""The transformers Trainer's own checkpoint and resume tests, run with its folders and with the ledger.

Ported from huggingface/transformers ``tests/trainer/test_trainer_checkpointing.py``
(read at commit 22c22fa26f5f, a little newer than the installed v5.24.0,
pinned in constraints.txt; every test ported here exists there unchanged in
what it asserts, and the rules they test were checked against the installed
``transformers/trainer.py`` and ``trainer_utils.py``) with the helpers of
``tests/trainer/trainer_test_utils.py`` (in ``hf_models.py``). Each test
keeps the upstream models, data, seeds, arguments and assertions; only what
stands for "a checkpoint folder" changes (``hf_models.Backend``): with
``backend="trainer"`` it is the Trainer's ``checkpoint-N`` folder, with
``backend="ledger"`` a commit made by ``LedgerCallback`` (resumed through
``cb.resume``, "kept" meaning its state was not expired). Every test runs
with both, so a failure is attributable. The comment above each test names
its upstream class and test.

Left out, and why: Hub pushes, DeepSpeed/FSDP, sharded-checkpoint
conversion and the auto batch size finder (not a checkpoint backend's
business, or no such engine here); ``test_can_resume_training_lm`` (downloads
GPT-2); the JIT/signal checkpoint tests (see docs/adapters/transformers.md).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import torch
from hf_models import (
    AlmostAccuracy,
    Backend,
    RegressionDataset,
    RegressionModelConfig,
    RegressionRandomPreTrainedModel,
    RegressionTrainingArguments,
    check_trainer_state_are_the_same,
    get_regression_trainer,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from transformers import Trainer, TrainerState, TrainingArguments
from transformers.testing_utils import evaluate_side_effect_factory, get_steps_per_epoch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints, set_seed

from ledger import Ledger
from ledger.adapters._hf_rotation import at_train_end, rotate
from ledger.errors import CommitExpiredError, RevisionNotFoundError

os.environ["HF_HUB_OFFLINE"] = "1"
N_EPOCHS = TrainingArguments("..").num_train_epochs
BATCH_SIZE = TrainingArguments("..").train_batch_size


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.fixture(params=["trainer", "ledger"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "trainer":
        yield Backend("trainer", tmp_path)
        return
    with Ledger.open(tmp_path / "ledger", create=True, fsync=False) as lg:
        yield Backend("ledger", tmp_path, lg)


def _trainer(backend: Backend, **kwargs: Any) -> Trainer:
    kwargs.setdefault("disable_tqdm", True)
    return get_regression_trainer(callbacks=backend.callbacks(), **kwargs)


def _ab(trainer: Trainer) -> tuple[float, float]:
    return trainer.model.a.item(), trainer.model.b.item()


# -- resume ---------------------------------------------------------------------------


# TrainerResumeTrainingTest.test_can_resume_training
@pytest.mark.slow
@pytest.mark.parametrize("pretrained", [True, False])
def test_can_resume_training(backend: Backend, pretrained: bool) -> None:
    out = str(backend.root / "out")
    kwargs: dict[str, Any] = {
        "output_dir": out,
        "train_len": 128,
        "save_steps": 5,
        "learning_rate": 0.1,
        "logging_steps": 5,
        "pretrained": pretrained,
    }
    trainer = _trainer(backend, **kwargs)
    trainer.train()
    (a, b) = _ab(trainer)
    state = dataclasses.asdict(trainer.state)
    for step in (5, 15):  # and a later one, spanning over one epoch
        trainer = _trainer(backend, **kwargs)
        trainer.train(resume_from_checkpoint=backend.checkpoint(trainer, out, step))
        assert _ab(trainer) == (a, b)
        check_trainer_state_are_the_same(state, dataclasses.asdict(trainer.state))
    # failures: a bogus checkpoint (the ledger: a name that resolves to nothing)
    trainer = _trainer(backend, output_dir=out)
    if backend.lg is None:
        with pytest.raises(Exception, match="Can't find a valid checkpoint at"):
            trainer.train(resume_from_checkpoint=f"{out}/checkpoint-15-bogus")
    else:
        with pytest.raises(RevisionNotFoundError):
            backend.callback(trainer).resume("checkpoint-15-bogus")


# TrainerResumeTrainingTest.test_resume_training_with_randomness ("Test every step";
# skipped upstream for multi-GPU seedable samplers, which do not arise on one device)
def test_resume_training_with_randomness(backend: Backend) -> None:
    train_dataset = RegressionDataset(length=128)
    eval_dataset = RegressionDataset()
    out = str(backend.root / "out")
    config = RegressionModelConfig(a=0, b=2, random_torch=True)
    args = RegressionTrainingArguments(out, save_steps=5, learning_rate=0.1, disable_tqdm=True)
    model = RegressionRandomPreTrainedModel(config)
    trainer = Trainer(
        model,
        args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=backend.callbacks(),
    )
    trainer.train()
    (a, b) = _ab(trainer)
    model = RegressionRandomPreTrainedModel(config)
    trainer = Trainer(
        model,
        args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=backend.callbacks(),
    )
    trainer.train(resume_from_checkpoint=backend.checkpoint(trainer, out, 15))
    (a1, b1) = _ab(trainer)
    assert a == pytest.approx(a1, abs=1e-5)
    assert b == pytest.approx(b1, abs=1e-5)


# TrainerResumeTrainingTest.test_resume_training_with_different_batch_size
def test_resume_training_with_different_batch_size(backend: Backend) -> None:
    train_dataset = RegressionDataset(length=64)
    model = RegressionRandomPreTrainedModel(RegressionModelConfig(a=0, b=2))
    out = str(backend.root / "out")
    args = RegressionTrainingArguments(
        out, max_steps=2, save_steps=1, per_device_train_batch_size=2, disable_tqdm=True
    )
    Trainer(model, args, train_dataset=train_dataset, callbacks=backend.callbacks()).train()
    if backend.lg is None:
        state = TrainerState.load_from_json(os.path.join(out, "checkpoint-1", "trainer_state.json"))
    else:
        state = TrainerState(**backend.ledger.checkout(backend.commit_at(1).id)["trainer_state"])
    assert state.train_batch_size == args.train_batch_size
    args2 = RegressionTrainingArguments(
        out, max_steps=4, save_steps=1, per_device_train_batch_size=4, disable_tqdm=True
    )
    trainer2 = Trainer(model, args2, train_dataset=train_dataset, callbacks=backend.callbacks())
    trainer2.train(resume_from_checkpoint=backend.checkpoint(trainer2, out, 1))
    assert trainer2._train_batch_size == 4 * max(trainer2.args.n_gpu, 1)


def _resume_parity(backend: Backend, frozen: bool = False, **kwargs: Any) -> None:
    out = str(backend.root / "out")
    kwargs.update(output_dir=out, train_len=128, save_steps=5, learning_rate=0.1)
    trainer = _trainer(backend, **kwargs)
    if frozen:
        trainer.model.a.requires_grad_(False)
    trainer.train()
    (a, b) = _ab(trainer)
    state = dataclasses.asdict(trainer.state)
    trainer = _trainer(backend, **kwargs)
    if frozen:
        trainer.model.a.requires_grad_(False)
    trainer.train(resume_from_checkpoint=backend.checkpoint(trainer, out, 5))
    if frozen:
        assert not trainer.model.a.requires_grad
    assert _ab(trainer) == (a, b)
    check_trainer_state_are_the_same(state, dataclasses.asdict(trainer.state))


# TrainerResumeTrainingTest.test_resume_training_with_gradient_accumulation
def test_resume_training_with_gradient_accumulation(backend: Backend) -> None:
    _resume_parity(backend, gradient_accumulation_steps=2, per_device_train_batch_size=4)


# TrainerResumeTrainingTest.test_resume_training_with_frozen_params
@pytest.mark.slow
def test_resume_training_with_frozen_params(backend: Backend) -> None:
    _resume_parity(backend, frozen=True, per_device_train_batch_size=4)


class _DictModel(nn.Module):
    def __init__(self, input_dim: int = 10, num_labels: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, num_labels)

    def forward(self, input_ids: Any = None, attention_mask: Any = None, labels: Any = None) -> Any:
        logits = self.linear(input_ids.float())
        loss = None if labels is None else nn.CrossEntropyLoss()(logits, labels)
        return {"loss": loss, "logits": logits}


class _DictDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, num_samples: int = 100, input_dim: int = 10) -> None:
        self.input_ids = torch.rand(num_samples, input_dim)
        self.attention_mask = torch.ones(num_samples, input_dim)
        self.labels = torch.randint(0, 2, (num_samples,))

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[idx],
            "attention_mask": self.attention_mask[idx],
            "labels": self.labels[idx],
        }


# TrainerInterruptedTrainingTest.test_resume_from_interrupted_training
@pytest.mark.slow
def test_resume_from_interrupted_training(backend: Backend) -> None:
    model = _DictModel(input_dim=10, num_labels=2)
    dummy_dataset = _DictDataset()
    common = dict(
        num_train_epochs=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,
        save_strategy="steps",
        save_steps=1,
        disable_tqdm=True,
    )
    out_initial = str(backend.root / "initial")
    args = TrainingArguments(output_dir=out_initial, max_steps=2, **common)
    Trainer(
        model=model, args=args, train_dataset=dummy_dataset, callbacks=backend.callbacks()
    ).train()
    assert 2 in backend.kept_steps(out_initial)
    out_resumed = str(backend.root / "resumed")
    args_resumed = TrainingArguments(output_dir=out_resumed, **common)
    trainer = Trainer(
        model=model, args=args_resumed, train_dataset=dummy_dataset, callbacks=backend.callbacks()
    )
    trainer.train(resume_from_checkpoint=backend.checkpoint(trainer, out_initial, 2))
    steps_per_epoch = math.ceil(
        100 / (args_resumed.train_batch_size * args_resumed.gradient_accumulation_steps)
    )
    assert trainer.state.global_step == steps_per_epoch
    assert steps_per_epoch in backend.kept_steps(out_resumed)
    assert "model.safetensors" in backend.holds(out_resumed, steps_per_epoch)


class _OrderDataset(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.data = torch.randn((size, 10))
        self.data[:, 0] = torch.arange(0, size)  # encode the data order
        self.labels = torch.randint(0, 10, (size,))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.data[idx], "labels": self.labels[idx]}


class _OrderModel(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 10, bias=False)
        self.register_buffer("data_order", torch.empty(0, dtype=torch.long))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        if "data_order" in state_dict:  # the buffer grows: take the saved size
            saved = state_dict["data_order"]
            if self.data_order.shape != saved.shape:
                self.data_order = saved.clone()
        return super().load_state_dict(state_dict, strict=strict)

    def forward(self, input_ids: torch.Tensor, labels: Any = None) -> Any:
        logits = self.fc(input_ids)
        loss = None if labels is None else nn.CrossEntropyLoss()(logits, labels)
        self.data_order = torch.cat([self.data_order, input_ids[:, 0].int().detach().clone()])
        return {"loss": loss, "logits": logits}


# TrainerInterruptedTrainingTest.test_resume_batch_order (mid-epoch: skip_first_batches)
def test_resume_batch_order(backend: Backend) -> None:
    def args(out: str) -> TrainingArguments:
        return TrainingArguments(
            output_dir=out,
            seed=42,
            learning_rate=0.1,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            save_strategy="steps",
            save_steps=1,
            num_train_epochs=3,
            optim="sgd",
            disable_tqdm=True,
            dataloader_num_workers=0,
        )

    set_seed(42)
    train_dataset = _OrderDataset(size=10)
    out_baseline = str(backend.root / "baseline")
    Trainer(
        model=_OrderModel(size=10),
        args=args(out_baseline),
        train_dataset=train_dataset,
        callbacks=backend.callbacks(),
    ).train()
    last = max(backend.kept_steps(out_baseline))  # get_last_checkpoint
    assert last == 15
    baseline_order = backend.weights(out_baseline, last)["data_order"]
    target_ckpt_num = 7  # the second batch of epoch 1
    set_seed(42)
    out_resume = str(backend.root / "resume")
    trainer = Trainer(
        model=_OrderModel(size=10),
        args=args(out_resume),
        train_dataset=train_dataset,
        callbacks=backend.callbacks(),
    )
    trainer.train(
        resume_from_checkpoint=backend.checkpoint(trainer, out_baseline, target_ckpt_num - 1)
    )
    resumed_order = backend.weights(out_resume, last)["data_order"]
    assert torch.equal(baseline_order, resumed_order), (baseline_order, resumed_order)


# -- rotation -------------------------------------------------------------------------


def _fake_rotation(tmp: Path, steps: list[int], limit: int | None, best: int | None) -> list[int]:
    """What ``rotate_checkpoints`` leaves of folders ``checkpoint-<step>`` (made oldest first)."""
    for n in steps:
        os.makedirs(tmp / f"{PREFIX_CHECKPOINT_DIR}-{n}", exist_ok=True)
    rotate_checkpoints(
        output_dir=str(tmp),
        save_total_limit=limit,
        best_model_checkpoint=None
        if best is None
        else str(tmp / f"{PREFIX_CHECKPOINT_DIR}-{best}"),
    )
    return sorted(int(re.findall(r"\d+", p.name)[0]) for p in tmp.iterdir())


# TrainerCheckpointRotationTest.test_checkpoint_rotation (check_checkpoint_deletion's cases)
@pytest.mark.parametrize(
    ("limit", "best", "expected"),
    [(2, None, [20, 25]), (2, 5, [5, 25]), (1, 25, [25]), (1, 5, [5, 25])],
)
def test_checkpoint_rotation(
    tmp_path: Path, limit: int, best: int | None, expected: list[int]
) -> None:
    steps = [5, 10, 15, 20, 25]
    ids = [str(s) for s in steps]
    kept = [int(i) for i in ids if i not in rotate(ids, limit, None if best is None else str(best))]
    assert kept == expected
    assert _fake_rotation(tmp_path, steps, limit, best) == expected


@given(
    n=st.integers(1, 9),
    limit=st.one_of(st.none(), st.integers(-1, 6)),
    best=st.one_of(st.none(), st.integers(0, 10)),
)
def test_rotation_rule_is_the_trainers_for_any_folders_limit_and_best(
    tmp_path_factory: pytest.TempPathFactory, n: int, limit: int | None, best: int | None
) -> None:
    steps = [(i + 1) * 5 for i in range(n)]
    best_step = None if best is None else best * 5  # sometimes not among the folders
    ids = [str(s) for s in steps]
    gone = rotate(ids, limit, None if best_step is None else str(best_step))
    ours = [s for s in steps if str(s) not in gone]
    assert ours == _fake_rotation(tmp_path_factory.mktemp("rot"), steps, limit, best_step)


# -- best model -----------------------------------------------------------------------


def _check_best_model_has_been_loaded(
    backend: Backend, out: str, freq: int, total: int, trainer: Trainer, metric: str, gib: bool
) -> None:
    """``TrainerIntegrationCommon.check_best_model_has_been_loaded``, through the backend."""
    log_history = trainer.state.log_history
    values = [d[metric] for d in log_history if metric in d]
    best_value = max(values) if gib else min(values)
    eval_steps = list(range(freq, total + 1, freq))
    if total % freq != 0:
        eval_steps.append(total)
    best_checkpoint = eval_steps[values.index(best_value)]
    best = backend.weights(out, best_checkpoint)
    torch.testing.assert_close(best["a"], trainer.model.a.detach())
    torch.testing.assert_close(best["b"], trainer.model.b.detach())
    assert trainer.evaluate()[metric] == best_value


# TrainerBestModelTest.test_load_best_model_at_end (its first three cases)
@pytest.mark.parametrize(
    "case",
    ["loss-steps"]
    + [pytest.param(c, marks=pytest.mark.slow) for c in ("accuracy-steps", "accuracy-epoch")],
)
def test_load_best_model_at_end(backend: Backend, case: str) -> None:
    total = int(N_EPOCHS * 64 / BATCH_SIZE)
    out = str(backend.root / "out")
    metric, strategy = case.split("-")
    kw: dict[str, Any] = {"eval_strategy": strategy, "save_strategy": strategy}
    if strategy == "steps":
        kw.update(eval_steps=5, save_steps=5)
    if metric == "accuracy":
        kw.update(metric_for_best_model="accuracy", compute_metrics=AlmostAccuracy())
    trainer = _trainer(
        backend, a=1.5, b=2.5, output_dir=out, learning_rate=0.1, load_best_model_at_end=True, **kw
    )
    assert trainer.args.greater_is_better == (metric == "accuracy")
    trainer.train()
    freq = 5 if strategy == "steps" else 64 // BATCH_SIZE
    for step in range(freq, total, freq):  # check_saved_checkpoints
        assert step in backend.kept_steps(out)
        assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= (
            backend.holds(out, step)
        )
    _check_best_model_has_been_loaded(
        backend, out, freq, total, trainer, f"eval_{metric}", metric == "accuracy"
    )


# TrainerBestModelTest.test_load_best_model_with_save_best
def test_load_best_model_with_save_best(backend: Backend) -> None:
    out = str(backend.root / "out")
    trainer = _trainer(
        backend,
        output_dir=out,
        save_strategy="best",
        eval_strategy="steps",
        eval_steps=5,
        load_best_model_at_end=True,
        save_total_limit=2,
        max_steps=11,
    )
    trainer.train()
    best_path = trainer.state.best_model_checkpoint
    assert best_path is not None
    step = int(best_path.rsplit("-", 1)[1])
    weights = backend.weights(out, step)
    for k, v in trainer.model.state_dict().items():
        assert torch.allclose(v, weights[k]), f"{k} is not the same"


# TrainerBestModelTest.test_load_best_model_with_save
def test_load_best_model_with_save(backend: Backend) -> None:
    out = str(backend.root / "out")
    trainer = _trainer(
        backend,
        output_dir=out,
        save_steps=5,
        eval_strategy="steps",
        eval_steps=5,
        load_best_model_at_end=True,
        save_total_limit=2,
        max_steps=11,
    )
    trainer.train()
    kept = backend.kept_steps(out)
    assert 11 in kept and 10 in kept and 5 not in kept
    assert trainer.state.best_model_checkpoint is not None
    weights = backend.weights(out, int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1]))
    for k, v in trainer.model.state_dict().items():
        assert torch.allclose(v, weights[k]), f"{k} is not the same"


# TrainerBestModelTest.test_save_best_checkpoint
@pytest.mark.parametrize(
    ("metric", "evals"),
    [
        ("accuracy", [(0.03, 0.60), (0.02, 0.65), (0.01, 0.64)]),
        pytest.param("loss", [(0.03, 0.60), (0.02, 0.65), (0.03, 0.66)], marks=pytest.mark.slow),
    ],
)
def test_save_best_checkpoint(
    backend: Backend, metric: str, evals: list[tuple[float, float]]
) -> None:
    out = str(backend.root / "out")
    trainer = _trainer(
        backend,
        a=1.5,
        b=2.5,
        output_dir=out,
        learning_rate=0.1,
        eval_strategy="epoch",
        save_strategy="best",
        metric_for_best_model=metric,
        compute_metrics=AlmostAccuracy(),
    )
    side = [
        {"eval_loss": loss, "eval_accuracy": acc, "epoch": float(i + 1)}
        for i, (loss, acc) in enumerate(evals)
    ]
    with patch.object(trainer, "_evaluate", side_effect=side):
        trainer.train()
    freq = int(64 / BATCH_SIZE)
    assert backend.kept_steps(out) == [freq, 2 * freq]  # os.listdir == 2, check_saved_checkpoints


BEST_CASES: dict[str, dict[str, Any]] = {
    "no-eval": dict(eval_strategy="no", save_strategy="steps", save_steps=1),
    "no-eval-limit-1": dict(
        eval_strategy="no", save_strategy="steps", save_steps=1, save_total_limit=1
    ),
    "epoch-epoch": dict(eval_strategy="epoch", save_strategy="epoch"),
    "epoch-steps": dict(eval_strategy="epoch", save_strategy="steps", save_steps=1),
    "steps-limit-1": dict(
        eval_strategy="steps", eval_steps=1, save_strategy="steps", save_steps=1, save_total_limit=1
    ),
    "mismatch": dict(eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=2),
}


# TrainerBestModelTest.test_best_model_checkpoint_behavior (its six cases)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=[pytest.mark.slow] if c in ("no-eval", "epoch-steps") else [])
        for c in BEST_CASES
    ],
)
def test_best_model_checkpoint_behavior(backend: Backend, case: str) -> None:
    out = str(backend.root / "out")
    kw = dict(BEST_CASES[case])
    if case.startswith("no-eval"):
        kw.update(metric_for_best_model="accuracy", greater_is_better=True)
    else:
        kw.update(
            metric_for_best_model="accuracy",
            compute_metrics=AlmostAccuracy(),
            greater_is_better=True,
            load_best_model_at_end=False,
        )
    trainer = _trainer(backend, output_dir=out, **kw)
    accuracies = [0.90, 0.80, 0.70] if case in ("steps-limit-1", "mismatch") else [0.59, 0.57, 0.55]
    side = evaluate_side_effect_factory([{"eval_accuracy": v} for v in accuracies])
    with patch.object(trainer, "_evaluate", side_effect=side):
        trainer.train()
    kept = backend.kept_steps(out)
    state = trainer.state
    if case.startswith("no-eval"):
        assert state.best_metric is None and state.best_model_checkpoint is None
        assert kept == (
            [state.global_step]
            if kw.get("save_total_limit")
            else list(range(1, state.global_step + 1))
        )
        assert backend.lg is None or "best" not in backend.ledger.branches()
        return
    assert state.best_metric == accuracies[0]
    if case == "mismatch":
        assert state.best_global_step == 3 and state.best_model_checkpoint is None
        assert len(kept) == state.global_step // 2
        assert backend.lg is None or "best" not in backend.ledger.branches()
        return
    best_step = 1 if case == "steps-limit-1" else get_steps_per_epoch(trainer)
    assert state.best_global_step == best_step
    assert state.best_model_checkpoint == os.path.join(out, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
    expected = {
        "epoch-epoch": int(state.num_train_epochs),
        "epoch-steps": state.global_step,
        "steps-limit-1": 1,
    }[case]
    assert len(kept) == expected
    if backend.lg is not None:
        assert backend.ledger.resolve("best") == backend.commit_at(best_step).id
        if case == "steps-limit-1":  # the Trainer deleted its last checkpoint: so did the ledger
            cb = backend.callback(trainer)
            with pytest.raises(CommitExpiredError):
                cb.resume("HEAD")
            for rev in ("best", f"ledger:{PREFIX_CHECKPOINT_DIR}-{best_step}"):
                path = cb.resume(rev)
                assert path is not None and Path(path).name == f"checkpoint-{best_step}"


# -- what is kept: every combination, against a real Trainer writing folders --------------

STRATEGIES: dict[str, dict[str, Any]] = {
    "steps2-eval2": dict(save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2),
    "steps3-evalepoch": dict(save_strategy="steps", save_steps=3, eval_strategy="epoch"),
    "steps2-eval3": dict(save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=3),
    "epoch-epoch": dict(save_strategy="epoch", eval_strategy="epoch"),
    "best-eval2": dict(save_strategy="best", eval_strategy="steps", eval_steps=2),
}
BESTS: dict[str, dict[str, Any]] = {
    "none": {},
    "loss": dict(metric_for_best_model="loss"),
    "accuracy-load": dict(
        metric_for_best_model="accuracy", greater_is_better=True, load_best_model_at_end=True
    ),
}
LIMITS = [None, 1, 2, 3]
# eval_loss falls, rises, then falls again; accuracy peaks early, then late
EVALS = [
    {"eval_loss": x, "eval_accuracy": y}
    for x, y in [(0.5, 0.6), (0.3, 0.9), (0.4, 0.5), (0.2, 0.7), (0.6, 0.95), (0.1, 0.4)]
]


def _valid(strategy: str, best: str) -> bool:
    """Whether the Trainer accepts these arguments (it refuses e.g. "best" with no metric)."""
    if (
        STRATEGIES[strategy]["save_strategy"] == "best"
        and "metric_for_best_model" not in BESTS[best]
    ):
        return False  # Trainer.__init__: "`args.metric_for_best_model` must be provided"
    try:
        TrainingArguments("..", **STRATEGIES[strategy], **BESTS[best])
    except ValueError:
        return False
    return True


COMBOS = [(s, b, k) for s, b, k in itertools.product(STRATEGIES, BESTS, LIMITS) if _valid(s, b)]
FAST = {
    ("steps2-eval2", "loss", 2),
    ("steps3-evalepoch", "loss", 1),
    ("best-eval2", "accuracy-load", 1),
}


def _run(root: Path, lg: Ledger | None, strategy: str, best: str, limit: int | None) -> Trainer:
    backend = Backend("ledger" if lg else "trainer", root, lg)
    trainer = _trainer(
        backend,
        output_dir=str(root / "out"),
        train_len=32,
        learning_rate=0.1,
        save_total_limit=limit,
        **STRATEGIES[strategy],
        **BESTS[best],
    )
    with patch.object(trainer, "_evaluate", side_effect=evaluate_side_effect_factory(EVALS)):
        trainer.train()
    return trainer


@pytest.mark.parametrize(
    ("strategy", "best", "limit"),
    [
        pytest.param(*c, marks=[] if c in FAST else [pytest.mark.slow], id="-".join(map(str, c)))
        for c in COMBOS
    ],
)
def test_what_is_kept_equals_what_the_trainer_keeps(
    tmp_path: Path, strategy: str, best: str, limit: int | None
) -> None:
    folders = _run(tmp_path / "trainer", None, strategy, best, limit)
    with Ledger.open(tmp_path / "ledger", create=True, fsync=False) as lg:
        ledger = _run(tmp_path / "lg", lg, strategy, best, limit)
        backend = Backend("ledger", tmp_path / "lg", lg)
        trainer_kept = Backend("trainer", tmp_path).kept_steps(tmp_path / "trainer" / "out")
        assert backend.kept_steps(tmp_path / "lg" / "out") == trainer_kept
        if limit is None:
            assert all(backend.live(c.id) for c in lg.log())  # nothing expired
        for c in lg.log():  # expired means gone: freed by the adapter's own gc
            if not backend.live(c.id):
                with pytest.raises(CommitExpiredError):
                    lg.checkout(c.id)
        assert lg.gc(grace=0, dry_run=True).bytes_freed == 0
        trainer_best = folders.state.best_model_checkpoint
        ledger_best = ledger.state.best_model_checkpoint
        assert (trainer_best is None) == (ledger_best is None)
        if trainer_best is not None:
            step = int(trainer_best.rsplit("-", 1)[1])
            assert ledger_best == str(tmp_path / "lg" / "out" / f"checkpoint-{step}")
            assert lg.resolve("best") == backend.commit_at(step).id
        else:
            assert "best" not in lg.branches()
        assert _ab(ledger) == _ab(folders)  # load_best_model_at_end loaded the same weights


def test_at_train_end_keeps_only_the_best_with_a_limit_of_one() -> None:
    assert at_train_end(["5", "10", "15"], 1, "10") == ["5", "15"]
    assert at_train_end(["5", "10", "15"], 1, None) == []
    assert at_train_end(["5", "10", "15"], 2, "10") == []
