"""What the ported Lightning tests share: the two checkpoint backends, and Lightning's own test models.

Ported from Lightning 2.6.5 (tag ``2.6.5``, commit
be98784a1a03581b7051a355ae1084fd352d7cea of Lightning-AI/pytorch-lightning;
the installed ``lightning==2.6.6`` is not tagged in the copy we read, and its
``callbacks/model_checkpoint.py`` is byte-identical to 2.6.5's). The models
come from ``lightning.pytorch.demos.boring_classes`` where the package has
them; ``LogInTwoMethods`` (tests_pytorch/checkpointing/test_model_checkpoint.py),
``RangeDataset``, ``PredictableBoringModel``, ``compare_state_dicts`` and the
``(Not)StatefulIterable`` loaders (tests_pytorch/loops/test_loops.py) are
copied, since the package does not ship Lightning's tests.

A ``Backend`` is the one thing a ported test changes: what stands for "a
checkpoint folder". ``ModelCheckpointBackend`` is Lightning's own (files in a
directory); ``LedgerBackend`` is ``LedgerCheckpoint`` on a ledger, where "the
files on disk" are the commits whose state survives ``gc`` (run with no
grace), and a path is the ``ledger://`` path the callback hands out, read
back through fsspec exactly as Lightning reads a file.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torch.utils.data import DataLoader, TensorDataset

from ledger import Commit, Ledger
from ledger.adapters._common import AdapterError
from ledger.adapters.lightning import LedgerCheckpoint, ledger_url

BACKENDS = ("modelcheckpoint", "ledger")
"""Every ported test runs once per backend (pytest parameter ``backend``)."""


class Backend:
    """Lightning's ``ModelCheckpoint`` or ``LedgerCheckpoint``, with one vocabulary for what they kept."""

    name: str
    config_error: type[Exception]

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cb: Any = None

    def callback(self, dirpath: Path | None = None, **kwargs: Any) -> Any:
        """The callback, given ``ModelCheckpoint``'s arguments (``filename`` only matters to files)."""
        raise NotImplementedError

    def kept(self) -> list[dict[str, Any]]:
        """The checkpoints on disk (the ledger: whose state survives gc), sorted by step."""
        raise NotImplementedError

    def find(self, *, epoch: int | None = None, step: int | None = None, version: int = 0) -> str:
        """The path of the ``version``-th checkpoint saved at that epoch/step (0: the first)."""
        raise NotImplementedError

    def load(self, path: str | Path) -> dict[str, Any]:
        """A checkpoint read as Lightning reads one: fsspec, then ``torch.load(weights_only=True)``."""
        with fsspec.open(str(path), "rb") as f:
            return torch.load(f, weights_only=True)  # type: ignore[no-any-return]

    def own_state(self, checkpoint: dict[str, Any], cb: Any = None) -> dict[str, Any]:
        """The callback's own entry in ``checkpoint["callbacks"]``."""
        return checkpoint["callbacks"][(cb or self.cb).state_key]  # type: ignore[no-any-return]

    def saves(self) -> list[tuple[int, int]]:
        """(epoch, step) of every save made so far, in order, kept or not."""
        raise NotImplementedError


class RecordingModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also notes (epoch, step) of each save (instead of a ``Mock``)."""

    saves: list[tuple[int, int]]

    def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
        self.saves.append((trainer.current_epoch, trainer.global_step))
        super()._save_checkpoint(trainer, filepath)


class ModelCheckpointBackend(Backend):
    """Lightning's own checkpointing: ``.ckpt`` files in a directory."""

    name = "modelcheckpoint"
    config_error = MisconfigurationException

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._saves: list[tuple[int, int]] = []

    def callback(self, dirpath: Path | None = None, **kwargs: Any) -> Any:
        self.cb = RecordingModelCheckpoint(
            dirpath=self.folder if dirpath is None else dirpath, **kwargs
        )
        self.cb.saves = self._saves
        return self.cb

    def kept(self) -> list[dict[str, Any]]:
        files = sorted(Path(self.cb.dirpath).glob("*.ckpt"))
        ckpts = [self.load(f) for f in files if f.name != "last.ckpt" and not f.is_symlink()]
        return sorted(ckpts, key=lambda c: c["global_step"])

    def find(self, *, epoch: int | None = None, step: int | None = None, version: int = 0) -> str:
        for f in sorted(Path(self.cb.dirpath).glob("*.ckpt")):
            if f.name.startswith("last"):
                continue
            ckpt = self.load(f)
            same = (epoch is None or ckpt["epoch"] == epoch) and (
                step is None or ckpt["global_step"] == step
            )
            if same and (f.stem.endswith(f"-v{version}") if version else "-v" not in f.stem):
                return str(f)
        raise FileNotFoundError(f"no checkpoint for epoch={epoch} step={step} v{version}")

    def saves(self) -> list[tuple[int, int]]:
        return list(self._saves)


class LedgerBackend(Backend):
    """``LedgerCheckpoint``: commits in a ledger; what is kept is what survives ``gc``."""

    name = "ledger"
    config_error = AdapterError

    def callback(self, dirpath: Path | None = None, **kwargs: Any) -> Any:
        kwargs.pop("filename", None)  # a file-name template: a commit has no file name
        self.cb = LedgerCheckpoint(self.folder if dirpath is None else dirpath, **kwargs)
        return self.cb

    def ledger(self) -> Ledger:
        return self.cb.ledger  # type: ignore[no-any-return]

    def commits(self, lg: Ledger | None = None) -> list[Commit]:
        """Every commit on any branch, oldest first."""
        lg = lg or self.ledger()
        seen: dict[str, Commit] = {}
        for tip in lg.branches().values():
            for c in lg.log(tip):
                seen.setdefault(c.id, c)
        return sorted(seen.values(), key=lambda c: c.time)

    def kept(self, lg: Ledger | None = None) -> list[dict[str, Any]]:
        lg = lg or self.ledger()
        lg.gc(grace=0)
        expired = lg.refs.state().expired
        root = lg.root
        kept = [self.load(ledger_url(root, c.id)) for c in self.commits(lg) if c.id not in expired]
        return sorted(kept, key=lambda c: c["global_step"])

    def find(self, *, epoch: int | None = None, step: int | None = None, version: int = 0) -> str:
        found = [
            c
            for c in self.commits()
            if (epoch is None or c.epoch == epoch) and (step is None or c.step == step)
        ]
        if len(found) <= version:
            raise FileNotFoundError(f"no commit for epoch={epoch} step={step} v{version}")
        return ledger_url(self.ledger().root, found[version].id)

    def saves(self) -> list[tuple[int, int]]:
        return [(c.epoch or 0, c.step or 0) for c in self.commits()]


def make_backend(name: str, folder: Path) -> Backend:
    """The backend called ``name`` ("modelcheckpoint" or "ledger"), writing under ``folder``."""
    return {"modelcheckpoint": ModelCheckpointBackend, "ledger": LedgerBackend}[name](folder)


@pytest.fixture(name="backend", params=BACKENDS)
def backend_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each backend in turn (a test module binds it: ``backend = lm.backend_fixture``)."""
    return make_backend(request.param, tmp_path / "checkpoints")


@pytest.fixture(name="quiet", autouse=True)
def quiet_fixture() -> Iterator[None]:
    """Lightning's advice and deprecation warnings off (a test module binds it too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        yield


# -- from tests_pytorch/checkpointing/test_model_checkpoint.py (2.6.5) ------------------


class LogInTwoMethods(BoringModel):
    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        out = super().training_step(batch, batch_idx)
        self.log("early_stop_on", out["loss"])
        return out

    def on_validation_epoch_end(self) -> None:
        self.log("val_acc", torch.tensor(1.23))


def mock_training_epoch_loop(trainer: Any) -> dict[int, dict[str, Any]]:
    # do not use `unittest.Mock` because we need to store the return value
    calls: dict[int, dict[str, Any]] = {}
    old_get_monitor_value = trainer.fit_loop.epoch_loop._get_monitor_value

    def mock(key: str) -> Any:
        value = old_get_monitor_value(key)
        calls[trainer.current_epoch] = {key: value}
        return value

    trainer.fit_loop.epoch_loop._get_monitor_value = mock
    return calls


# -- from tests_pytorch/loops/test_loops.py (2.6.5) ---------------------------------------


class RangeDataset(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self, size: int, length: int):
        self.len = length
        data = torch.arange(0, size) / size
        self.data = data.unsqueeze(0).repeat(length, 1)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.data[index]

    def __len__(self) -> int:
        return self.len


class PredictableBoringModel(BoringModel):
    def __init__(self) -> None:
        super().__init__()
        self.last_loss = float("inf")

    def train_dataloader(self) -> DataLoader[torch.Tensor]:
        return DataLoader(RangeDataset(32, 64))

    def val_dataloader(self) -> DataLoader[torch.Tensor]:
        return DataLoader(RangeDataset(32, 64))

    def training_step(self, batch: Any, batch_idx: int) -> STEP_OUTPUT:
        loss = self.step(batch)
        self.last_loss = loss
        return {"loss": loss}


def compare_state_dicts(dict1: dict[str, Any], dict2: dict[str, Any]) -> dict[str, Any]:
    def compare_leaves(d1: dict[str, Any], d2: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        all_keys = set(d1.keys()).union(d2.keys())

        for key in all_keys:
            val1 = d1.get(key)
            val2 = d2.get(key)

            if isinstance(val1, dict) and isinstance(val2, dict):
                res = compare_leaves(val1, val2)
                if res:
                    result[key] = res
            elif isinstance(val1, dict) or isinstance(val2, dict):
                raise ValueError("dicts have different leaves")
            elif isinstance(val1, torch.Tensor) and isinstance(val2, torch.Tensor):
                diff = torch.norm(val1 - val2)
                if diff > 1e-8:
                    result[key] = f"{diff} > 1e-8"
            elif isinstance(val1, float) and isinstance(val2, float):
                if abs(val1 - val2) > 1e-8:
                    result[key] = f"{val1} != {val2}"
            elif val1 != val2:
                result[key] = f"{val1} != {val2}"
        return result

    return compare_leaves(dict1, dict2)


class NotStatefulIterable:
    def __init__(self, start: int = 0) -> None:
        self.index = start

    def __iter__(self) -> Any:
        for i in range(self.index, len(self)):
            self.index = i
            yield self.index

    def __len__(self) -> int:
        return 10


class StatefulIterable(NotStatefulIterable):
    def state_dict(self) -> dict[str, int]:
        return {"index": self.index}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.index = state_dict["index"] + 1


def quiet_trainer_kwargs() -> dict[str, Any]:
    """Trainer arguments that only cut console noise (no effect on what is saved)."""
    return {"enable_progress_bar": False, "enable_model_summary": False}


# -- our own (not ported): the behaviour tests of test_lightning_behaviour.py ------------------


class ResumableLoader(DataLoader[Any]):
    """A shuffled loader that resumes mid-epoch exactly: what the data-order warning asks for.

    Its state is the generator's state as of the epoch's start and how many
    batches that epoch has yielded; loading it replays the same permutation
    and skips those batches (torchdata's ``StatefulDataLoader`` does the same).
    """

    def __init__(self, dataset: Any, batch_size: int, generator: torch.Generator | None) -> None:
        super().__init__(dataset, batch_size=batch_size, shuffle=True, generator=generator)
        self._epoch_start: torch.Tensor | None = None
        self._yielded = 0
        self._pending: dict[str, Any] | None = None

    def __iter__(self) -> Any:
        skip = 0
        if self._pending is not None and self.generator is not None:
            self.generator.set_state(self._pending["generator"])
            skip = int(self._pending["yielded"])
        self._pending = None
        self._epoch_start = None if self.generator is None else self.generator.get_state().clone()
        self._yielded = 0
        for i, batch in enumerate(super().__iter__()):
            self._yielded = i + 1
            if i >= skip:
                yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self._epoch_start, "yielded": self._yielded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict


class ShuffledRegressor(LightningModule):
    """Dropout, SGD with momentum, a shuffled loader: every part of the state matters on resume."""

    def __init__(
        self, generator_seed: int | None = 0, batches: int = 8, torchdata: bool = False
    ) -> None:
        super().__init__()
        self.generator_seed = generator_seed
        self.torchdata = torchdata
        self.batches = batches
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.ReLU(), torch.nn.Linear(8, 1)
        )
        self.seen: list[torch.Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.append(x[:, 0].clone())
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self) -> DataLoader[Any]:
        data = torch.Generator().manual_seed(1)
        x = torch.randn(self.batches * 4, 4, generator=data)
        gen = (
            None
            if self.generator_seed is None
            else torch.Generator().manual_seed(self.generator_seed)
        )
        data_set = TensorDataset(x, x.sum(1, keepdim=True))
        if self.torchdata:
            from torchdata.stateful_dataloader import StatefulDataLoader

            return StatefulDataLoader(data_set, batch_size=4, shuffle=True, generator=gen)  # type: ignore[no-any-return]
        return ResumableLoader(data_set, 4, gen)


class SpawnModel(BoringModel):
    """BoringModel that logs a metric to monitor (module level: ``ddp_spawn`` pickles it)."""

    def validation_step(self, batch: Any, batch_idx: int) -> Any:
        out = super().validation_step(batch, batch_idx)
        self.log("val_loss", out["x"], sync_dist=True)
        return out
