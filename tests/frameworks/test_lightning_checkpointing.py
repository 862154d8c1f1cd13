"""Lightning's own ``ModelCheckpoint`` tests, run with ``ModelCheckpoint`` and with ``LedgerCheckpoint``.

Ported from Lightning-AI/pytorch-lightning at tag 2.6.5 (commit
be98784a1a03581b7051a355ae1084fd352d7cea), file
``tests/tests_pytorch/checkpointing/test_model_checkpoint.py``; the
installed package is ``lightning==2.6.6`` (pinned in constraints.txt), whose
``ModelCheckpoint`` source is identical to 2.6.5's. Models, data, seeds,
trainer arguments and assertions are Lightning's; each test runs once per
``backend`` ("modelcheckpoint": Lightning's own files; "ledger": the
ledger), and only what stands for "a checkpoint folder" changes:
``os.listdir(dirpath)`` is ``backend.kept()`` (for the ledger: the commits
whose state survives ``gc``), a file name is ``backend.find(epoch=, step=)``,
``torch.load(file)`` is ``backend.load(path)`` (fsspec + ``torch.load(weights_only=True)``,
as Lightning reads every path), and a ``Mock`` on ``trainer.save_checkpoint``
counts ``backend.saves()``. Where a ledger cannot do what a file does, the
test says so and docs/adapters/lightning.md lists it under "Differences".
"""

from __future__ import annotations

import copy
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.demos.boring_classes import BoringModel
from torch import optim

try:  # tests/frameworks is a plain folder, or a package if another suite makes it one
    from frameworks import lightning_models as lm  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import lightning_models as lm  # type: ignore[import-not-found,no-redef,unused-ignore]

backend, quiet = lm.backend_fixture, lm.quiet_fixture
Backend = lm.Backend
LogInTwoMethods = lm.LogInTwoMethods
make_backend = lm.make_backend
mock_training_epoch_loop = lm.mock_training_epoch_loop


# test_model_checkpoint.py::test_model_checkpoint_score_and_ckpt (all 6 cases)
@pytest.mark.parametrize(
    ("validation_step_none", "val_dataloaders_none", "monitor"),
    [(False, False, "val_log"), (True, False, "train_log_epoch"), (False, True, "val_log")],
)
@pytest.mark.parametrize(
    "reduce_lr_on_plateau", [False, pytest.param(True, marks=pytest.mark.slow)]
)
def test_model_checkpoint_score_and_ckpt(
    backend: Backend,
    tmp_path: Path,
    validation_step_none: bool,
    val_dataloaders_none: bool,
    monitor: str,
    reduce_lr_on_plateau: bool,
) -> None:
    max_epochs = 3
    limit_train_batches = 5
    limit_val_batches = 7
    lr, gamma = 1e-1, 2

    class CustomBoringModel(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.train_log_epochs = torch.randn(max_epochs, limit_train_batches)
            self.val_logs = torch.randn(max_epochs, limit_val_batches)
            self.scores: list[Any] = []

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            log_value = self.train_log_epochs[self.current_epoch, batch_idx]
            self.log("train_log", log_value, on_epoch=True)
            return super().training_step(batch, batch_idx)

        def validation_step(self, batch: Any, batch_idx: int) -> Any:
            log_value = self.val_logs[self.current_epoch, batch_idx]
            self.log("val_log", log_value)
            return super().validation_step(batch, batch_idx)

        def configure_optimizers(self) -> Any:
            optimizer = optim.SGD(self.parameters(), lr=lr)
            lr_scheduler: Any
            if reduce_lr_on_plateau:
                lr_scheduler = {
                    "scheduler": optim.lr_scheduler.ReduceLROnPlateau(optimizer),
                    "monitor": monitor,
                    "strict": True,
                }
            else:
                lr_scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=gamma)
            return [optimizer], [lr_scheduler]

        def on_train_epoch_end(self) -> None:
            if "train" in monitor:
                self.scores.append(self.trainer.logged_metrics[monitor])

        def on_validation_epoch_end(self) -> None:
            if not self.trainer.sanity_checking and "val" in monitor:
                self.scores.append(self.trainer.logged_metrics[monitor])

    filename = "{" + f"{monitor}" + ":.4f}-{epoch}"
    checkpoint = backend.callback(filename=filename, monitor=monitor, save_top_k=-1)

    model = CustomBoringModel()
    if validation_step_none:
        model.validation_step = None  # type: ignore[assignment,method-assign]
    if val_dataloaders_none:
        model.val_dataloaders = None  # type: ignore[attr-defined]

    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint],
        limit_train_batches=limit_train_batches,
        limit_val_batches=limit_val_batches,
        max_epochs=max_epochs,
        enable_progress_bar=False,
    )
    calls = mock_training_epoch_loop(trainer)
    trainer.fit(model)

    assert len(backend.kept()) == len(model.scores) == max_epochs

    for epoch in range(max_epochs):
        score = model.scores[epoch]
        expected_score = getattr(model, f"{monitor}s")[epoch].mean().item()
        assert math.isclose(score, expected_score, abs_tol=1e-5)

        chk = backend.load(backend.find(epoch=epoch))
        assert chk["epoch"] == epoch
        assert chk["global_step"] == limit_train_batches * (epoch + 1)

        mc_specific_data = backend.own_state(chk)
        if backend.name == "modelcheckpoint":  # the ledger has no folder to record
            assert mc_specific_data["dirpath"] == checkpoint.dirpath
        assert mc_specific_data["monitor"] == monitor
        assert mc_specific_data["current_score"] == score

        if not reduce_lr_on_plateau:
            actual_step_count = chk["lr_schedulers"][0]["_step_count"]
            actual_lr = chk["lr_schedulers"][0]["_last_lr"][0]
            # checkpoint is saved after updating lr_scheduler states
            assert actual_step_count == epoch + 2  # step_count starts at 1
            assert actual_lr == lr * gamma ** (epoch + 1)
        else:
            assert calls[epoch] == {monitor: score}


# test_model_checkpoint.py::test_pickling (cloudpickle is not installed here: deepcopy instead)
def test_pickling(backend: Backend) -> None:
    ckpt = backend.callback()

    ckpt_pickled = pickle.dumps(ckpt)
    ckpt_loaded = pickle.loads(ckpt_pickled)
    assert vars(ckpt) == vars(ckpt_loaded)

    ckpt_loaded = copy.deepcopy(ckpt)
    assert vars(ckpt) == vars(ckpt_loaded)


# test_model_checkpoint.py::test_invalid_top_k, test_none_monitor_top_k,
# test_invalid_every_n_epochs, test_invalid_every_n_train_steps (messages are each callback's own)
def test_invalid_arguments(backend: Backend) -> None:
    with pytest.raises(backend.config_error, match=r"save_top_k"):
        backend.callback(save_top_k=-3)
    with pytest.raises(backend.config_error, match=r"save_top_k=3, monitor=None"):
        backend.callback(save_top_k=3)
    with pytest.raises(backend.config_error, match=r"every_n_epochs"):
        backend.callback(every_n_epochs=-3)
    with pytest.raises(backend.config_error, match=r"every_n_train_steps"):
        backend.callback(every_n_train_steps=-3)
    # These should not fail
    for kwargs in (
        {"save_top_k": -1},
        {"save_top_k": 0},
        {"save_top_k": 1},
        {"every_n_epochs": 0},
        {"every_n_epochs": 2},
        {"every_n_train_steps": 0},
        {"every_n_train_steps": 1},
    ):
        backend.callback(**kwargs)


# test_model_checkpoint.py::test_none_monitor_not_alternating
def test_none_monitor_not_alternating(backend: Backend) -> None:
    seen: list[int] = []

    class ListDirModel(BoringModel):
        def on_train_epoch_start(self) -> None:
            if self.current_epoch > 0:
                kept = backend.kept()
                assert len(kept) == 1  # os.listdir(tmp_path) == ["model.ckpt"]
                seen.append(kept[0]["epoch"])

    model = ListDirModel()
    model_checkpoint = backend.callback(monitor=None, save_top_k=1, filename="model")
    trainer = Trainer(
        callbacks=model_checkpoint,
        limit_train_batches=1,
        limit_val_batches=0,
        max_epochs=3,
        enable_model_summary=False,
        enable_progress_bar=False,
        logger=False,
    )
    trainer.fit(model)
    assert seen == [0, 1]  # (added) the one kept is always the newest


# test_model_checkpoint.py::test_model_checkpoint_save_last_none_monitor
def test_model_checkpoint_save_last_none_monitor(backend: Backend, tmp_path: Path) -> None:
    seed_everything()
    model = LogInTwoMethods()

    epochs = 2
    checkpoint_callback = backend.callback(monitor=None, save_top_k=-1, save_last=True)
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint_callback],
        limit_train_batches=10,
        limit_val_batches=10,
        max_epochs=epochs,
        logger=False,
    )
    trainer.fit(model)

    # these should not be set if monitor is None
    assert checkpoint_callback.monitor is None
    assert checkpoint_callback.best_model_path == backend.find(epoch=1, step=20)
    assert checkpoint_callback.last_model_path
    assert backend.load(checkpoint_callback.last_model_path)["global_step"] == 20
    assert checkpoint_callback.best_model_score is None
    assert checkpoint_callback.best_k_models == {}
    assert checkpoint_callback.kth_best_model_path == ""

    # check that the correct ckpts were created
    assert [(c["epoch"], c["global_step"]) for c in backend.kept()] == [(0, 10), (1, 20)]


# test_model_checkpoint.py::test_model_checkpoint_every_n_epochs
@pytest.mark.parametrize("every_n_epochs", list(range(4)))
def test_model_checkpoint_every_n_epochs(
    backend: Backend, tmp_path: Path, every_n_epochs: int
) -> None:
    model = LogInTwoMethods()
    epochs = 5
    checkpoint_callback = backend.callback(
        filename="{epoch}", save_top_k=-1, every_n_epochs=every_n_epochs
    )
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint_callback],
        max_epochs=epochs,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
    )
    trainer.fit(model)

    # check that the correct ckpts were created, the modulo condition is checked in `ModelCheckpoint`
    expected = (
        [e for e in range(epochs) if not (e + 1) % every_n_epochs] if every_n_epochs > 0 else []
    )
    assert [c["epoch"] for c in backend.kept()] == expected


# test_model_checkpoint.py::test_ckpt_every_n_train_steps
@pytest.mark.slow
def test_ckpt_every_n_train_steps(backend: Backend, tmp_path: Path) -> None:
    model = LogInTwoMethods()
    every_n_train_steps = 16
    max_epochs = 2
    epoch_length = 64
    checkpoint_callback = backend.callback(
        filename="{step}",
        every_n_epochs=0,
        every_n_train_steps=every_n_train_steps,
        save_top_k=-1,
        save_last=False,
    )
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        enable_progress_bar=False,
        callbacks=[checkpoint_callback],
        logger=False,
    )

    trainer.fit(model)
    expected = list(range(every_n_train_steps, max_epochs * epoch_length + 1, every_n_train_steps))
    assert [c["global_step"] for c in backend.kept()] == expected


# test_model_checkpoint.py::test_model_checkpoint_topk_zero
def test_model_checkpoint_topk_zero(backend: Backend, tmp_path: Path) -> None:
    model = LogInTwoMethods()
    checkpoint_callback = backend.callback(save_top_k=0, save_last=True)
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint_callback],
        max_epochs=2,
        logger=False,
        limit_train_batches=5,  # (added: the result does not depend on it)
        limit_val_batches=5,
    )
    trainer.fit(model)
    # these should not be set if monitor is None
    assert checkpoint_callback.monitor is None
    assert checkpoint_callback.best_model_path == ""
    assert checkpoint_callback.best_model_score is None
    assert checkpoint_callback.best_k_models == {}
    assert checkpoint_callback.kth_best_model_path == ""
    # check that only the last ckpt was created
    if backend.name == "modelcheckpoint":
        assert [p.name for p in Path(checkpoint_callback.dirpath).iterdir()] == ["last.ckpt"]
    else:  # the ledger: only the last commit keeps its state
        assert [c["global_step"] for c in backend.kept()] == [10]
    assert backend.load(checkpoint_callback.last_model_path)["global_step"] == 10


# test_model_checkpoint.py::test_model_checkpoint_topk_all
def test_model_checkpoint_topk_all(backend: Backend, tmp_path: Path) -> None:
    seed_everything(1000)
    epochs = 3

    model = BoringModel()
    checkpoint_callback = backend.callback(
        filename="{epoch}", monitor="epoch", mode="max", save_top_k=-1
    )
    trainer = Trainer(
        default_root_dir=tmp_path,
        callbacks=[checkpoint_callback],
        max_epochs=epochs,
        logger=False,
        val_check_interval=1.0,
        limit_train_batches=4,  # (added: the result does not depend on it)
        limit_val_batches=4,
    )
    trainer.fit(model)

    assert checkpoint_callback.monitor == "epoch"
    assert checkpoint_callback.best_model_path == backend.find(epoch=2)
    assert checkpoint_callback.best_model_score == epochs - 1
    assert len(backend.kept()) == len(checkpoint_callback.best_k_models) == epochs
    assert set(checkpoint_callback.best_k_models.keys()) == {
        backend.find(epoch=i) for i in range(epochs)
    }
    assert checkpoint_callback.kth_best_model_path == backend.find(epoch=0)


# test_model_checkpoint.py::test_default_checkpoint_behavior (the default arguments)
def test_default_checkpoint_behavior(backend: Backend, tmp_path: Path) -> None:
    seed_everything(1234)

    model = LogInTwoMethods()
    trainer = Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        enable_progress_bar=False,
        limit_train_batches=5,
        limit_val_batches=5,
        logger=False,
        callbacks=[backend.callback()],  # Lightning's default is ModelCheckpoint()
    )
    trainer.fit(model)
    results = trainer.test()  # ckpt_path=None after fit: "best"

    assert len(results) == 1
    assert backend.saves() == [(0, 5), (1, 10), (2, 15)]
    assert [(c["epoch"], c["global_step"]) for c in backend.kept()] == [(2, 15)]


# test_model_checkpoint.py::test_check_val_every_n_epochs_top_k_integration
def test_check_val_every_n_epochs_top_k_integration(backend: Backend, tmp_path: Path) -> None:
    model = BoringModel()
    mc = backend.callback(monitor="epoch", save_top_k=-1, filename="{epoch}")
    trainer = Trainer(
        default_root_dir=tmp_path,
        limit_train_batches=1,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        max_epochs=5,
        check_val_every_n_epoch=2,
        callbacks=mc,
        enable_model_summary=False,
        logger=False,
    )
    trainer.fit(model)
    assert [c["epoch"] for c in backend.kept()] == [1, 3]


# test_model_checkpoint.py::test_resume_training_preserves_old_ckpt_last
def test_resume_training_preserves_old_ckpt_last(backend: Backend, tmp_path: Path) -> None:
    model = BoringModel()
    trainer_kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "max_epochs": 1,
        "limit_train_batches": 3,
        "limit_val_batches": 0,
        "enable_model_summary": False,
        "logger": False,
    }
    mc_kwargs: dict[str, Any] = {
        "filename": "{step}",
        "monitor": "step",
        "mode": "max",
        "save_last": True,
        "save_top_k": 2,
        "every_n_train_steps": 1,
    }
    first = backend.callback(**mc_kwargs)
    trainer = Trainer(**trainer_kwargs, callbacks=first)
    trainer.fit(model)
    # Make sure that the last checkpoint exists in the dirpath passed
    assert [c["global_step"] for c in backend.kept()] == [2, 3]  # and last.ckpt: step 3
    step2 = backend.find(step=2)
    old_last = first.last_model_path

    # Training it for 2 epochs for extra surety, that nothing gets deleted after multiple epochs
    trainer_kwargs["max_epochs"] += 1
    trainer = Trainer(**trainer_kwargs, callbacks=backend.callback(tmp_path / "new", **mc_kwargs))
    trainer.fit(model, ckpt_path=step2)
    # Ensure that the file is not deleted from the old folder
    assert backend.load(old_last)["global_step"] == 3
    assert trainer.global_step == 6  # (added) it resumed from step 2 of 3
