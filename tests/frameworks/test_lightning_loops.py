"""Lightning's own restart-parity tests of its loops, run with ``ModelCheckpoint`` and with ``LedgerCheckpoint``.

Ported from Lightning-AI/pytorch-lightning at tag 2.6.5 (commit
be98784a1a03581b7051a355ae1084fd352d7cea), file
``tests/tests_pytorch/loops/test_loops.py`` (installed: ``lightning==2.6.6``).
Models, data, trainer arguments and assertions are Lightning's; each test
runs once per ``backend``. What stands for "a checkpoint folder" changes
only: ``tmp_path / "epoch=0-step=2.ckpt"`` is ``backend.find(epoch=0, step=2)``
(the ``-v1`` file of a second run is ``version=1``: the second commit at that
step), ``last.ckpt`` is ``callback.last_model_path``, and ``torch.load`` is
``backend.load`` (fsspec + ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities import CombinedLoader

try:  # tests/frameworks is a plain folder, or a package if another suite makes it one
    from frameworks import lightning_models as lm  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    import lightning_models as lm  # type: ignore[import-not-found,no-redef,unused-ignore]

backend, quiet = lm.backend_fixture, lm.quiet_fixture
Backend = lm.Backend
LedgerBackend = lm.LedgerBackend
NotStatefulIterable = lm.NotStatefulIterable
PredictableBoringModel = lm.PredictableBoringModel
StatefulIterable = lm.StatefulIterable
compare_state_dicts = lm.compare_state_dicts
make_backend = lm.make_backend
BACKENDS = lm.BACKENDS


def _assert_parity(backend: Backend, epoch: int, step: int) -> None:
    """The block test_restart_parity repeats for each checkpoint: run 1's equals run 2's."""
    end_of_epoch_ckpt = backend.load(backend.find(epoch=epoch, step=step))
    end_of_epoch_ckpt_v1 = backend.load(backend.find(epoch=epoch, step=step, version=1))

    assert compare_state_dicts(end_of_epoch_ckpt["loops"], end_of_epoch_ckpt_v1["loops"]) == {}
    assert (
        compare_state_dicts(
            end_of_epoch_ckpt["lr_schedulers"][0], end_of_epoch_ckpt_v1["lr_schedulers"][0]
        )
        == {}
    )
    assert end_of_epoch_ckpt["epoch"] == end_of_epoch_ckpt_v1["epoch"]
    assert end_of_epoch_ckpt["global_step"] == end_of_epoch_ckpt_v1["global_step"]
    assert (
        compare_state_dicts(end_of_epoch_ckpt["state_dict"], end_of_epoch_ckpt_v1["state_dict"])
        == {}
    )


def _restart_parity(backend: Backend, tmp_path: Path, **val: Any) -> None:
    model = PredictableBoringModel()
    checkpoint_callback = backend.callback(every_n_train_steps=2, save_top_k=-1)
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "limit_train_batches": 4,
        "max_epochs": 4,
        "callbacks": [checkpoint_callback],
        "logger": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        **val,
    }
    trainer = Trainer(**kwargs)
    trainer.fit(model)
    loss = model.last_loss

    trainer = Trainer(**kwargs)
    trainer.fit(model, ckpt_path=backend.find(epoch=0, step=2))
    loss_v1 = model.last_loss

    assert abs(loss - loss_v1) < 1e-8

    _assert_parity(backend, 0, 4)  # end of epoch
    _assert_parity(backend, 1, 6)  # mid epoch
    _assert_parity(backend, 1, 8)  # end of epoch


# test_loops.py::test_restart_parity
def test_restart_parity(backend: Backend, tmp_path: Path) -> None:
    _restart_parity(backend, tmp_path)
    if isinstance(backend, LedgerBackend):  # (added) lineage: run 2 descends from step 2
        lg = backend.ledger()
        step2 = lg.get(backend.find(epoch=0, step=2).rpartition("#")[2])
        second_step4 = lg.get(backend.find(epoch=0, step=4, version=1).rpartition("#")[2])
        assert second_step4.parents == [step2.id]


# test_loops.py::test_restart_with_val_parity
@pytest.mark.slow
def test_restart_with_val_parity(backend: Backend, tmp_path: Path) -> None:
    _restart_parity(backend, tmp_path, limit_val_batches=4, val_check_interval=2)


def _restart_from_last_parity(backend: Backend, tmp_path: Path, **val: Any) -> None:
    model = PredictableBoringModel()
    checkpoint_callback = backend.callback(save_last=True, save_top_k=-1)
    kwargs: dict[str, Any] = {
        "default_root_dir": tmp_path,
        "limit_train_batches": 2,
        "callbacks": [checkpoint_callback],
        "logger": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        **val,
    }
    trainer = Trainer(max_epochs=4, **kwargs)
    trainer.fit(model)

    last_ckpt_1 = backend.load(checkpoint_callback.last_model_path)

    trainer = Trainer(max_epochs=2, **kwargs)
    trainer.fit(model)

    trainer = Trainer(max_epochs=4, **kwargs)
    trainer.fit(model, ckpt_path=checkpoint_callback.last_model_path)

    last_ckpt_2 = backend.load(checkpoint_callback.last_model_path)

    assert compare_state_dicts(last_ckpt_1["loops"], last_ckpt_2["loops"]) == {}


# test_loops.py::test_restart_from_last_parity
def test_restart_from_last_parity(backend: Backend, tmp_path: Path) -> None:
    _restart_from_last_parity(backend, tmp_path)


# test_loops.py::test_restart_from_last_with_val_parity
def test_restart_from_last_with_val_parity(backend: Backend, tmp_path: Path) -> None:
    _restart_from_last_parity(backend, tmp_path, limit_val_batches=2, val_check_interval=2)


# test_loops.py::test_fit_loop_save_and_restore_dataloaders (all 6 cases)
@pytest.mark.parametrize(
    ("train_dataloader_factory", "has_state", "batches_before", "batches_after"),
    [
        # No dataloader
        pytest.param(lambda: [], False, [], [], marks=pytest.mark.slow),
        # Single stateful DataLoader
        (lambda: StatefulIterable(), True, [0, 1], [2, 3]),
        # Single, not stateful DataLoader
        pytest.param(
            lambda: CombinedLoader(NotStatefulIterable()),
            False,
            [0, 1],
            [0, 1],
            marks=pytest.mark.slow,
        ),
        # Single stateful DataLoader
        (lambda: CombinedLoader(StatefulIterable()), True, [0, 1], [2, 3]),
        # Multiple stateful DataLoaders
        (
            lambda: CombinedLoader([StatefulIterable(3), StatefulIterable(1)]),
            True,
            [[3, 1], [4, 2]],
            [[5, 3], [6, 4]],
        ),
        # Mix of stateful and not stateful DataLoaders
        (
            lambda: CombinedLoader(
                [NotStatefulIterable(3), StatefulIterable(1), NotStatefulIterable(2)]
            ),
            True,
            [[3, 1, 2], [4, 2, 3]],
            [[3, 3, 2], [4, 4, 3]],
        ),
    ],
)
def test_fit_loop_save_and_restore_dataloaders(
    backend: Backend,
    train_dataloader_factory: Callable[[], Any],
    has_state: bool,
    batches_before: list[Any],
    batches_after: list[Any],
    tmp_path: Path,
) -> None:
    class DummyModel(BoringModel):
        def __init__(self) -> None:
            super().__init__()
            self.seen_data: list[Any] = []

        def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
            self.seen_data.append(batch)

        def train_dataloader(self) -> Any:
            return train_dataloader_factory()

    trainer_kwargs = {
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
        "enable_checkpointing": False,
        "enable_model_summary": False,
        "enable_progress_bar": False,
        "logger": False,
        "num_sanity_val_steps": 0,
    }

    # Train for 2 steps
    model = DummyModel()
    trainer = Trainer(**trainer_kwargs, max_steps=2)
    trainer.fit(model)
    assert model.seen_data == batches_before

    # Save a checkpoint
    if isinstance(backend, LedgerBackend):  # a commit, made by hand as trainer.save_checkpoint is
        path = backend.callback(every_n_epochs=None).resume("HEAD")
        assert path is None
        backend.cb.commit(trainer)
        path = backend.cb.last_model_path
    else:
        path = str(tmp_path / "checkpoint.ckpt")
        trainer.save_checkpoint(path)
    checkpoint = backend.load(path)
    if has_state:
        assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    else:
        assert "combined_loader" not in checkpoint["loops"]["fit_loop"]["state_dict"]

    # Restore training from step 2 and continue 2 more steps (the ledger path is read through
    # Lightning's own TorchCheckpointIO and fsspec: no LedgerCheckpoint on this trainer)
    model = DummyModel()
    trainer = Trainer(**trainer_kwargs, max_steps=4)
    trainer.fit(model, ckpt_path=path)
    assert model.seen_data == batches_after
    assert trainer.global_step == 4 if batches_after else True  # (added)


def test_backends_really_differ(tmp_path: Path) -> None:
    """(added) The ledger backend writes no checkpoint file; Lightning's writes no ledger."""
    for name in BACKENDS:
        backend = make_backend(name, tmp_path / name)
        trainer = Trainer(
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            callbacks=[backend.callback()],
            logger=False,
            default_root_dir=tmp_path / name,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(BoringModel())
        files = {p.suffix for p in (tmp_path / name).rglob("*") if p.is_file()}
        assert (".ckpt" in files) == (name == "modelcheckpoint")
        assert torch.is_tensor(backend.kept()[0]["state_dict"]["layer.weight"])
