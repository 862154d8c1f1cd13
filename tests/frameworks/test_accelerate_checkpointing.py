"""Accelerate's own checkpointing tests, run with Accelerate's folders and with the ledger.

Ported from huggingface/accelerate at commit b120c1f50bb8de221cec13baf8cce5fc30f1cef2
(the last commit that changed the two test files, read in the stored copy whose
head is 16cb6eb80dd9, version 1.15.0.dev0; there is no v1.15.0 tag in it). The
installed release is accelerate==1.15.0 (pinned in constraints.txt):

- ``tests/test_state_checkpointing.py``: resume (from a folder, with automatic
  naming, from a relative project directory with the folder inferred),
  scheduler, automatic loading, ``total_limit`` (save limit and deletion).
- ``tests/test_accelerator.py``: ``test_save_load_model`` and
  ``test_save_model_with_stateful_dataloader`` (mid-epoch position of a
  stateful loader, with and without ``dispatch_batches``).

Every test runs twice (``backend``): ``"accelerate"`` is ``accelerator.save_state``
/ ``load_state`` with folders, exactly as upstream; ``"ledger"`` is
``ledger.adapters.accelerate.save_state`` / ``load_state``. Models, data,
seeds and assertions are upstream's; what changed is only what stands for a
checkpoint folder (the :class:`Backend` methods): a folder is a ledger
directory, ``checkpoints/checkpoint_<i>`` is the commit of step ``i`` in
``<project_dir>/ledger``, and "the folders left on disk" are the commits whose
state gc kept. Where an upstream assertion is weak (it lists the project
directory, which holds one folder either way) it is kept and a stronger one
follows it. Also changed, for 2 shared CPU cores: ``num_workers=0`` instead of
4 in ``dummy_dataloaders`` (batches and RNG draws are the same), the
``use_safetensors`` parametrization is dropped (safetensors, Accelerate's
default, for the folder backend; the ledger has one format), and six of the
eight cases of the stateful loader test (all with ``num_workers=2``) are
marked slow.

Not ported, and why (also in docs/adapters/accelerate.md):
``test_invalid_registration`` (argument checking of ``register_for_checkpointing``,
no checkpoint involved), ``test_map_location`` (needs an accelerator device;
the ledger restores into the live tensors' own devices, i.e. ``"on_device"``),
``test_save_load_model_with_hooks`` (save/load pre-hooks write files into the
checkpoint folder; the ledger has no folder, see the doc's differences), and
``tests/test_data_loader.py``, whose tests call ``state_dict()`` on loaders
directly and never save a checkpoint.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ledger import Ledger
from ledger.adapters import accelerate as adapter

BACKENDS = ["accelerate", "ledger"]


class Backend:
    """What stands for "a checkpoint folder" in each way of checkpointing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def save_state(self, accelerator: Accelerator, output_dir: str | None = None) -> None:
        if self.name == "accelerate":
            accelerator.save_state(output_dir)
        else:
            commit = adapter.save_state(accelerator, output_dir)
            assert commit is not None

    def load_state(self, accelerator: Accelerator, input_dir: str | None = None) -> None:
        """Load a folder (ledger: that ledger's HEAD), or with None the newest automatic one."""
        if self.name == "accelerate":
            accelerator.load_state(input_dir)
        else:
            assert adapter.load_state(accelerator, input_dir) is not None

    def load_checkpoint(self, accelerator: Accelerator, project_dir: str, i: int) -> None:
        """Load ``<project_dir>/checkpoints/checkpoint_<i>``: the ledger's commit of step ``i``."""
        if self.name == "accelerate":
            accelerator.load_state(os.path.join(project_dir, "checkpoints", f"checkpoint_{i}"))
            return
        with Ledger.open(Path(project_dir) / adapter.LEDGER_FOLDER) as lg:
            (commit,) = [c for c in lg.log() if c.step == i]
        assert adapter.load_state(accelerator, rev=commit.id) is not None

    def kept(self, project_dir: str) -> list[int]:
        """The automatic checkpoints whose state is still on disk, by number."""
        if self.name == "accelerate":
            folders = os.listdir(os.path.join(project_dir, "checkpoints"))
            return sorted(int(re.findall(r"[0-9]+$", f)[0]) for f in folders)
        with Ledger.open(Path(project_dir) / adapter.LEDGER_FOLDER) as lg:
            expired = lg.refs.state().expired
            # the state of expired commits already left the disk: nothing is left to free
            report = lg.gc(dry_run=True, grace=0)
            assert report.objects_freed == 0 and not report.expired
            return sorted(c.step for c in lg.log() if c.id not in expired and c.step is not None)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return Backend(request.param)


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Iterator[None]:
    """What upstream's ``AccelerateTestCase`` does: no Accelerate singleton outlives a test."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


# -- from tests/test_state_checkpointing.py ---------------------------------------------


def dummy_dataloaders(
    a: int = 2,
    b: int = 3,
    batch_size: int = 16,
    n_train_batches: int = 10,
    n_valid_batches: int = 2,
) -> tuple[DataLoader, DataLoader]:
    "Generates a tuple of dummy DataLoaders to test with"

    def get_dataset(n_batches: int) -> TensorDataset:
        x = torch.randn(batch_size * n_batches, 1)
        return TensorDataset(x, a * x + b + 0.1 * torch.randn(batch_size * n_batches, 1))

    train_dataset = get_dataset(n_train_batches)
    valid_dataset = get_dataset(n_valid_batches)
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=batch_size, num_workers=0)
    valid_dataloader = DataLoader(
        valid_dataset, shuffle=False, batch_size=batch_size, num_workers=0
    )
    return (train_dataloader, valid_dataloader)


def step(model: nn.Module, batch: Any, optimizer: Any, accelerator: Accelerator) -> None:
    "One optimizer step on an MSE loss (the loop body of upstream's training loops)"
    x, y = batch
    outputs = model(x)
    loss = torch.nn.functional.mse_loss(outputs, y)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad()


def train(
    num_epochs: int,
    model: nn.Module,
    dataloader: DataLoader,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    scheduler: Any = None,
) -> list[float]:
    "Trains for `num_epochs`"
    rands = []
    for _epoch in range(num_epochs):
        # Train quickly
        model.train()
        for batch in dataloader:
            step(model, batch, optimizer, accelerator)
        rands.append(random.random())  # Introduce some randomness
        if scheduler is not None:
            scheduler.step()
    return rands


class DummyModel(nn.Module):
    "Simple model to do y=mx+b"

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.randn(1))
        self.b = nn.Parameter(torch.randn(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.a + self.b


class Run(NamedTuple):
    accelerator: Accelerator
    model: Any
    optimizer: Any
    train_dataloader: Any
    scheduler: Any


def prepared(scheduler: bool = False, **accelerator_kwargs: Any) -> Run:
    """Upstream's setup, repeated in each of its tests: seed 42, DummyModel, Adam, the loaders."""
    set_seed(42)
    model = DummyModel()
    optimizer = torch.optim.Adam(params=model.parameters(), lr=1e-3)
    sched = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.99) if scheduler else None
    )
    train_dataloader, valid_dataloader = dummy_dataloaders()
    accelerator = Accelerator(**accelerator_kwargs)
    objects = [model, optimizer, train_dataloader, valid_dataloader] + ([sched] if sched else [])
    prepared = accelerator.prepare(*objects)
    return Run(accelerator, prepared[0], prepared[1], prepared[2], prepared[4] if sched else None)


# upstream: CheckpointTest.test_with_save_limit
def test_with_save_limit(backend: Backend, tmp_path: Path) -> None:
    tmpdir = str(tmp_path)
    project_config = ProjectConfiguration(
        total_limit=1, project_dir=tmpdir, automatic_checkpoint_naming=True
    )
    # Train baseline
    accelerator = prepared(project_config=project_config).accelerator
    # Save initial
    backend.save_state(accelerator)

    # Save second state
    backend.save_state(accelerator)
    assert len(os.listdir(accelerator.project_dir)) == 1
    assert backend.kept(tmpdir) == [1]


Place = Callable[[Accelerator, str], None]
"""Saves to or loads from the checkpoint upstream calls ``initial`` or ``checkpoint``."""


def check_resume(first: dict[str, Any], second: dict[str, Any], save: Place, load: Place) -> None:
    """The body of upstream's three resume tests (``first``/``second``: the Accelerators' kwargs)."""
    # Train baseline
    accelerator, model, optimizer, train_dataloader, _ = prepared(**first)
    # Save initial
    save(accelerator, "initial")
    (a, b) = model.a.item(), model.b.item()
    opt_state = optimizer.state_dict()
    ground_truth_rands = train(3, model, train_dataloader, optimizer, accelerator)
    (a1, b1) = model.a.item(), model.b.item()
    opt_state1 = optimizer.state_dict()

    # Train partially
    accelerator, model, optimizer, train_dataloader, _ = prepared(**second)
    load(accelerator, "initial")
    (a2, b2) = model.a.item(), model.b.item()
    opt_state2 = optimizer.state_dict()
    assert a == a2
    assert b == b2
    assert opt_state == opt_state2

    test_rands = train(2, model, train_dataloader, optimizer, accelerator)
    # Save everything
    save(accelerator, "checkpoint")

    # Load everything back in and make sure all states work
    load(accelerator, "checkpoint")
    test_rands += train(1, model, train_dataloader, optimizer, accelerator)
    (a3, b3) = model.a.item(), model.b.item()
    opt_state3 = optimizer.state_dict()
    assert a1 == a3
    assert b1 == b3
    assert opt_state1 == opt_state3
    assert ground_truth_rands == test_rands


# upstream: CheckpointTest.test_can_resume_training_with_folder
def test_can_resume_training_with_folder(backend: Backend, tmp_path: Path) -> None:
    check_resume(
        {},
        {},
        save=lambda accelerator, name: backend.save_state(accelerator, str(tmp_path / name)),
        load=lambda accelerator, name: backend.load_state(accelerator, str(tmp_path / name)),
    )


def _resume_with_automatic_naming(backend: Backend, tmpdir: str, *, infer: bool) -> None:
    """Upstream's two automatic-naming resume tests (``infer``: the first load is ``load_state()``)."""

    def load(accelerator: Accelerator, name: str) -> None:
        if name == "initial" and infer:
            backend.load_state(accelerator)  # <= infer the directory automatically
        else:
            backend.load_checkpoint(accelerator, tmpdir, 0 if name == "initial" else 1)

    check_resume(
        {
            "project_dir": tmpdir,
            "project_config": ProjectConfiguration(automatic_checkpoint_naming=True),
        },
        {
            "project_dir": tmpdir,
            "project_config": ProjectConfiguration(iteration=1, automatic_checkpoint_naming=True),
        },
        save=lambda accelerator, _: backend.save_state(accelerator),
        load=load,
    )


# upstream: CheckpointTest.test_can_resume_training
def test_can_resume_training(backend: Backend, tmp_path: Path) -> None:
    _resume_with_automatic_naming(backend, str(tmp_path), infer=False)


# upstream: CheckpointTest.test_can_resume_training_checkpoints_relative_path (#1983)
def test_can_resume_training_checkpoints_relative_path(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    rand_dir = f"test_path_{uuid.uuid4()}"  # a relative project directory
    os.mkdir(rand_dir)
    _resume_with_automatic_naming(backend, rand_dir, infer=True)


# upstream: CheckpointTest.test_with_scheduler
def test_with_scheduler(backend: Backend, tmp_path: Path) -> None:
    tmpdir = str(tmp_path)
    # Train baseline
    accelerator, model, optimizer, train_dataloader, scheduler = prepared(
        scheduler=True,
        project_dir=tmpdir,
        project_config=ProjectConfiguration(automatic_checkpoint_naming=True),
    )
    # Save initial
    backend.save_state(accelerator)
    scheduler_state = scheduler.state_dict()
    train(3, model, train_dataloader, optimizer, accelerator, scheduler)
    assert scheduler_state != scheduler.state_dict()

    # Load everything back in and make sure all states work
    backend.load_checkpoint(accelerator, tmpdir, 0)
    assert scheduler_state == scheduler.state_dict()


# upstream: CheckpointTest.test_automatic_loading
def test_automatic_loading(backend: Backend, tmp_path: Path) -> None:
    tmpdir = str(tmp_path)
    project_config = ProjectConfiguration(automatic_checkpoint_naming=True)
    # Train baseline
    run = prepared(scheduler=True, project_dir=tmpdir, project_config=project_config)
    accelerator, model, optimizer, train_dataloader, scheduler = run
    # Save initial
    backend.save_state(accelerator)
    train(2, model, train_dataloader, optimizer, accelerator, scheduler)
    (a2, b2) = model.a.item(), model.b.item()
    # Save a first time
    backend.save_state(accelerator)
    train(1, model, train_dataloader, optimizer, accelerator, scheduler)
    (a3, b3) = model.a.item(), model.b.item()

    # Load back in the last saved checkpoint, should point to a2, b2
    backend.load_state(accelerator)
    assert a3 != model.a.item()
    assert b3 != model.b.item()
    assert a2 == model.a.item()
    assert b2 == model.b.item()


# upstream: CheckpointTest.test_checkpoint_deletion
def test_checkpoint_deletion(backend: Backend, tmp_path: Path) -> None:
    tmpdir = str(tmp_path)
    set_seed(42)
    model = DummyModel()
    project_config = ProjectConfiguration(automatic_checkpoint_naming=True, total_limit=2)
    # Train baseline
    accelerator = Accelerator(project_dir=tmpdir, project_config=project_config)
    model = accelerator.prepare(model)
    # Save 3 states:
    for _ in range(11):
        backend.save_state(accelerator)
    kept = backend.kept(tmpdir)
    assert 0 not in kept
    assert 9 in kept
    assert 10 in kept
    assert kept == [9, 10]


# -- from tests/test_accelerator.py -----------------------------------------------------


class ModelWithTiedWeights(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear1 = torch.nn.Linear(2, 4)
        self.linear2 = torch.nn.Linear(4, 2)
        self.linear2.weight = self.linear1.weight
        self.linear2.bias = self.linear1.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x))


def create_components(tied_weights: bool = False) -> tuple[Any, ...]:
    model = ModelWithTiedWeights() if tied_weights else torch.nn.Linear(2, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=0.01, steps_per_epoch=2, epochs=1
    )
    train_dl = DataLoader(TensorDataset(torch.tensor([1, 2, 3])))
    valid_dl = DataLoader(TensorDataset(torch.tensor([4, 5, 6])))
    return model, optimizer, scheduler, train_dl, valid_dl


class ModelForTest(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear1 = torch.nn.Linear(3, 4)
        self.batchnorm = torch.nn.BatchNorm1d(4)
        self.linear2 = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.batchnorm(self.linear1(x)))


def create_dataloaders_for_test(
    batch_size: int = 3, n_train_batches: int = 12, n_valid_batches: int = 2, num_workers: int = 0
) -> tuple[DataLoader, DataLoader]:
    "Generates a tuple of dummy DataLoaders to test with"

    def get_dataset(n_batches: int) -> TensorDataset:
        x = torch.randn(batch_size * n_batches, 3)
        y = torch.randn(batch_size * n_batches, 5)
        return TensorDataset(x, y)

    train_dataset = get_dataset(n_train_batches)
    valid_dataset = get_dataset(n_valid_batches)
    train_dataloader = DataLoader(train_dataset, batch_size=batch_size, num_workers=num_workers)
    valid_dataloader = DataLoader(valid_dataset, batch_size=batch_size, num_workers=num_workers)
    return (train_dataloader, valid_dataloader)


def get_signature(model: nn.Module) -> float:
    return sum(param.abs().sum().item() for param in model.parameters())


def load_random_weights(model: nn.Module) -> None:
    if isinstance(model, torch.nn.Linear):
        state = torch.nn.Linear(*tuple(model.weight.T.shape)).state_dict()
    elif isinstance(model, ModelWithTiedWeights):
        state = ModelWithTiedWeights().state_dict()
    model.load_state_dict(state)


# upstream: AcceleratorTester.test_save_load_model
@pytest.mark.parametrize("tied_weights", [True, False])
def test_save_load_model(backend: Backend, tmp_path: Path, tied_weights: bool) -> None:
    accelerator = Accelerator()
    model, optimizer, scheduler, train_dl, valid_dl = create_components(tied_weights)
    accelerator.prepare(model, optimizer, scheduler, train_dl, valid_dl)

    model_signature = get_signature(model)

    tmpdirname = str(tmp_path / "state")
    backend.save_state(accelerator, tmpdirname)

    # make sure random weights don't match
    load_random_weights(model)
    assert abs(model_signature - get_signature(model)) > 1e-3

    # make sure loaded weights match
    backend.load_state(accelerator, tmpdirname)
    assert abs(model_signature - get_signature(model)) < 1e-3


# upstream: AcceleratorTester.test_save_model_with_stateful_dataloader
@pytest.mark.parametrize(
    ("tied_weights", "num_workers", "dispatch_batches"),
    [
        (tied, workers, dispatch)
        if workers == 0 and tied != dispatch  # two of the eight in the default tier
        else pytest.param(tied, workers, dispatch, marks=pytest.mark.slow)
        for tied in (True, False)
        for workers in (0, 2)
        for dispatch in (True, False)
    ],
)
def test_save_model_with_stateful_dataloader(
    backend: Backend, tmp_path: Path, tied_weights: bool, num_workers: int, dispatch_batches: bool
) -> None:
    """Test that saving and loading a model with a stateful dataloader returns the same model,
    and that the dataloader's iterator is restored properly."""
    set_seed(42)
    n_train_batches = (
        64  # Use enough batches to ensure we can get partial iterations on large compute
    )
    dataloader_config = DataLoaderConfiguration(
        dispatch_batches=dispatch_batches, use_stateful_dataloader=True
    )
    accelerator = Accelerator(dataloader_config=dataloader_config)

    model, optimizer, scheduler, train_dl, valid_dl = create_components(tied_weights)
    train_dl, valid_dl = create_dataloaders_for_test(
        n_train_batches=n_train_batches, num_workers=num_workers
    )
    model = ModelForTest()

    (
        prepared_model,
        prepared_optimizer,
        prepared_scheduler,
        prepared_train_dl,
        prepared_valid_dl,
    ) = accelerator.prepare(model, optimizer, scheduler, train_dl, valid_dl)

    assert isinstance(prepared_train_dl, StatefulDataLoader)
    assert isinstance(prepared_valid_dl, StatefulDataLoader)

    # Perform 3 training iterations to ensure the dataloader's iterator is advanced
    num_batches_to_skip = 3
    model.train()
    untrained_batches = []
    tmpdirname = str(tmp_path)
    for i, batch in enumerate(prepared_train_dl):
        step(prepared_model, batch, prepared_optimizer, accelerator)
        prepared_scheduler.step()
        if i == num_batches_to_skip - 1:
            # Save the state once we've gone through a few batches
            backend.save_state(accelerator, f"{tmpdirname}/state")
        if i >= num_batches_to_skip:
            untrained_batches.append(batch)

    not_skipped_batches = accelerator.gather(untrained_batches)
    # We then unwrap the trained model
    unwrapped_model = accelerator.unwrap_model(prepared_model)

    original_linear1 = unwrapped_model.linear1.weight.clone()
    original_batchnorm = unwrapped_model.batchnorm.weight.clone()
    original_linear2 = unwrapped_model.linear2.weight.clone()

    # Resume the state
    backend.load_state(accelerator, f"{tmpdirname}/state")

    # Train this to the end of the DataLoader
    batches_seen_with_loaded_dl = 0
    for batch in prepared_train_dl:
        step(prepared_model, batch, prepared_optimizer, accelerator)
        prepared_scheduler.step()
        batches_seen_with_loaded_dl += 1

    unwrapped_model_2 = accelerator.unwrap_model(prepared_model)

    new_linear1 = unwrapped_model_2.linear1.weight
    new_batchnorm = unwrapped_model_2.batchnorm.weight
    new_linear2 = unwrapped_model_2.linear2.weight

    # Assert equalities
    assert batches_seen_with_loaded_dl == len(not_skipped_batches)
    assert torch.allclose(original_linear1, new_linear1)
    assert torch.allclose(original_batchnorm, new_batchnorm)
    assert torch.allclose(original_linear2, new_linear2)
