"""Lightning's own ``ModelCheckpoint`` score tests, run with ``ModelCheckpoint`` and with ``LedgerCheckpoint``.

Ported from Lightning-AI/pytorch-lightning at tag 2.6.5 (commit
be98784a1a03581b7051a355ae1084fd352d7cea), file
``tests/tests_pytorch/checkpointing/test_model_checkpoint.py`` (installed:
``lightning==2.6.6``, same ``ModelCheckpoint`` source), split from
test_lightning_checkpointing.py (whose docstring says what the port
changes) to keep modules short: NaN scores and ``current_score``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

try:  # tests/frameworks is a plain folder, or a package if another suite makes it one
    from frameworks import lightning_models as lm  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import lightning_models as lm  # type: ignore[import-not-found,no-redef,unused-ignore]

backend, quiet = lm.backend_fixture, lm.quiet_fixture
Backend = lm.Backend
LogInTwoMethods = lm.LogInTwoMethods


# test_model_checkpoint.py::test_checkpointing_with_nan_as_first
@pytest.mark.parametrize("mode", ["min", "max"])
def test_checkpointing_with_nan_as_first(backend: Backend, tmp_path: Path, mode: str) -> None:
    monitor = [float("nan")]
    monitor += [5, 7, 8] if mode == "max" else [8, 7, 5]

    class CurrentModel(LogInTwoMethods):
        def on_validation_epoch_end(self) -> None:
            val_loss = monitor[self.current_epoch]
            self.log("abc", val_loss)

    model = CurrentModel()
    callback = backend.callback(monitor="abc", mode=mode, save_top_k=1)
    trainer = Trainer(
        callbacks=[callback],
        default_root_dir=tmp_path,
        val_check_interval=1.0,
        max_epochs=len(monitor),
        limit_train_batches=2,  # (added: the result does not depend on it)
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
    )
    trainer.fit(model)

    # check that last one is also the best one
    assert len(backend.saves()) == len(monitor)
    assert (mode == "min" and callback.best_model_score == 5) or (
        mode == "max" and callback.best_model_score == 8
    )
    assert backend.load(callback.best_model_path)["epoch"] == len(monitor) - 1  # (added)


def _one_batch_trainer(tmp_path: Path, callback: Any, max_epochs: int) -> Trainer:
    """The Trainer both current_score tests build (Lightning's arguments, written once)."""
    return Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


# test_model_checkpoint.py::test_current_score
def test_current_score(backend: Backend, tmp_path: Path) -> None:
    class TestModel(BoringModel):
        def training_step(self, *args: Any) -> Any:
            self.log("foo", (self.current_epoch + 1) / 10)
            return super().training_step(*args)

    model_checkpoint = backend.callback(save_top_k=3, monitor="foo", mode="min")
    _one_batch_trainer(tmp_path, model_checkpoint, max_epochs=3).fit(TestModel())
    assert model_checkpoint.current_score == 0.3
    ckpts = [backend.own_state(ckpt) for ckpt in backend.kept()]
    assert sorted(float(ckpt["current_score"]) for ckpt in ckpts) == pytest.approx([0.1, 0.2, 0.3])


# test_model_checkpoint.py::test_current_score_when_nan
@pytest.mark.parametrize("mode", ["min", "max"])
def test_current_score_when_nan(backend: Backend, tmp_path: Path, mode: str) -> None:
    class TestModel(BoringModel):
        def training_step(self, *args: Any) -> Any:
            self.log("foo", float("nan"))
            return super().training_step(*args)

    model_checkpoint = backend.callback(save_top_k=1, monitor="foo", mode=mode)
    _one_batch_trainer(tmp_path, model_checkpoint, max_epochs=1).fit(TestModel())
    expected = float("inf" if mode == "min" else "-inf")
    assert model_checkpoint.best_model_score == expected
    assert model_checkpoint.current_score == expected
