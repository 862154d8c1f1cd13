"""``ledger.adapters.lightning``: LedgerCheckpoint commits Lightning's state; ``ledger:`` paths resume it.

The exact-resume test trains 4 epochs straight and 2 + resume in a new
process + 2 (tests/scripts/adapter_lightning_train.py: dropout, a shuffled
loader, Adam, StepLR, EarlyStopping, ``deterministic=True``, CPU) and compares
parameters, optimizer, scheduler and EarlyStopping state bitwise.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import lightning as L
import pytest
import torch
from helpers import SCRIPTS, finish, load_script, start
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import Ledger
from ledger.adapters._common import AdapterError, MissingExtraError, ResumeError
from ledger.adapters.lightning import LedgerCheckpoint, LedgerCheckpointIO, ledger_url
from ledger.errors import RevisionNotFoundError, UnsupportedValueError
from ledger.retention import KeepBest, KeepLast

TRAIN = SCRIPTS / "adapter_lightning_train.py"


util = load_script("adapter_util")


def _train(ledger: Path, epochs: int, image: Path) -> subprocess.Popen[str]:
    return start(TRAIN, ledger, epochs, image)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 epochs straight (ledger a); 2 epochs, then a new process resuming to 4 (ledger b)."""

    def build(tmp: Path) -> None:
        straight = _train(tmp / "a", 4, tmp / "a")
        first = _train(tmp / "b", 2, tmp / "b-half")
        finish(straight)
        finish(first)
        (tmp / "resumed.log").write_text(finish(_train(tmp / "b", 4, tmp / "b")))

    return util.shared_dir(tmp_path_factory, "lightning", build)


def test_two_epochs_plus_resume_in_a_new_process_equals_four_straight(runs: Path) -> None:
    tmp = runs
    assert (
        "Restoring states from the checkpoint path at ledger:" in (tmp / "resumed.log").read_text()
    )
    straight, resumed = util.load_image(tmp / "a"), util.load_image(tmp / "b")
    assert resumed["tensors"] == straight["tensors"]  # parameters, Adam moments and step
    assert resumed["plain"] == straight["plain"]  # LR schedule, EarlyStopping, global step
    # the comparison is sensitive: half-way the state differs
    assert util.load_image(tmp / "b-half")["tensors"] != straight["tensors"]


def test_each_epoch_commits_lightning_state_metrics_and_hyperparameters(runs: Path) -> None:
    with Ledger.open(runs / "b") as lg:
        log = list(lg.log())
        assert [(c.step, c.epoch) for c in log] == [(32, 3), (24, 2), (16, 1), (8, 0)]
        assert all({"train_loss", "val_loss"} <= c.metrics.keys() for c in log)
        assert log[0].params == {"lr": 0.05, "hidden": 16}
        tree = lg.checkout("HEAD")
        for key in ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"):
            assert key in tree
        assert any(k.startswith("EarlyStopping") for k in tree["callbacks"])
        best = min(log, key=lambda c: c.metrics["val_loss"])
        assert lg.resolve("best") == best.id
        assert lg.retention() == [KeepBest("val_loss", k=2, mode="min")]


# -- in-process checks on a tiny model ------------------------------------------------------


class Tiny(L.LightningModule):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Linear(width, 1)
        self.extra: Any = None

    def training_step(self, batch: Any, idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, idx: int) -> None:
        x, y = batch
        self.log(
            "val_loss", nn.functional.mse_loss(self.net(x), y) + 10.0 / (self.current_epoch + 1)
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.extra is not None:
            checkpoint["extra"] = self.extra


def _loader() -> DataLoader[Any]:
    x = torch.randn(16, 4)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def _trainer(cb: Any, epochs: int = 2, **kw: Any) -> Any:
    return L.Trainer(
        max_epochs=epochs,
        callbacks=[cb],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="lightning")
        yield


def test_every_n_train_steps_commits_at_those_global_steps(lg: Ledger) -> None:
    cb = LedgerCheckpoint(lg, every_n_train_steps=3, every_n_epochs=None)
    _trainer(cb).fit(Tiny(), _loader())
    assert [c.step for c in lg.log()] == [6, 3]


def test_monitor_moves_best_and_ckpt_path_best_loads_it_through_the_plugin(lg: Ledger) -> None:
    cb = LedgerCheckpoint(lg, monitor="val_loss", mode="min")
    model = Tiny()
    trainer = _trainer(cb, epochs=3)
    trainer.fit(model, _loader(), _loader())
    assert lg.get("best").epoch == 2  # val_loss falls every epoch here
    assert cb.best_model_path == ledger_url(lg.root, lg.resolve("best"))
    assert isinstance(trainer.strategy.checkpoint_io, LedgerCheckpointIO)
    trainer.validate(model, _loader(), ckpt_path="best", verbose=False)  # loads ledger:<best>


def test_save_top_k_without_monitor_keeps_the_newest(lg: Ledger) -> None:
    LedgerCheckpoint(lg, save_top_k=1)  # ModelCheckpoint's default, and its only k without monitor
    assert lg.retention() == [KeepLast(1)]


def test_resume_is_none_on_an_empty_ledger_and_an_error_for_unknown_names(lg: Ledger) -> None:
    cb = LedgerCheckpoint(lg)
    assert cb.resume("HEAD") is None
    _trainer(cb, epochs=1).fit(Tiny(), _loader())
    assert cb.resume("HEAD") == ledger_url(lg.root, lg.resolve("HEAD"))
    with pytest.raises(RevisionNotFoundError):
        cb.resume("nope")


def test_a_commit_not_made_by_lightning_is_refused_with_resume_error(lg: Ledger) -> None:
    lg.commit({"w": torch.zeros(1)})
    with pytest.raises(ResumeError, match="not a Lightning checkpoint"):
        LedgerCheckpointIO(lg).load_checkpoint("ledger:HEAD")


def test_the_plugin_refuses_to_save_to_a_ledger_path(lg: Ledger) -> None:
    with pytest.raises(AdapterError, match="LedgerCheckpoint"):
        LedgerCheckpointIO(lg).save_checkpoint({}, "ledger:main")


def test_file_paths_go_to_the_wrapped_plugin(lg: Ledger, tmp_path: Path) -> None:
    io = LedgerCheckpointIO(lg)
    io.save_checkpoint({"w": torch.ones(2)}, tmp_path / "x.ckpt")
    assert io.load_checkpoint(tmp_path / "x.ckpt")["w"].tolist() == [1.0, 1.0]


def test_values_the_ledger_cannot_store_are_converted_with_a_warning(lg: Ledger) -> None:
    model = Tiny()
    model.extra = {"tags": {"b", "a"}, "where": Path("/tmp")}
    with pytest.warns(UserWarning, match=r"set -> list.*PosixPath -> str"):
        _trainer(LedgerCheckpoint(lg), epochs=1).fit(model, _loader())
    assert lg.checkout()["extra"] == {"tags": ["a", "b"], "where": "/tmp"}


def test_values_without_a_conversion_are_refused_with_their_path(lg: Ledger) -> None:
    model = Tiny()
    model.extra = {"fn": lambda: 1}
    with pytest.raises(UnsupportedValueError, match=r"checkpoint\['extra'\]\['fn'\]"):
        _trainer(LedgerCheckpoint(lg), epochs=1).fit(model, _loader())


def test_resume_restores_early_stopping_state(lg: Ledger) -> None:
    stop = EarlyStopping("val_loss", patience=100)
    cb = LedgerCheckpoint(lg)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[cb, stop],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), _loader(), _loader())
    saved = stop.state_dict()
    again = EarlyStopping("val_loss", patience=100)
    cb2 = LedgerCheckpoint(lg)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[cb2, again],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), _loader(), _loader(), ckpt_path=cb2.resume())
    assert util.bits(again.state_dict()) == util.bits(saved)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"save_top_k": 3}, r"save_top_k=3, monitor=None"),
        ({"save_top_k": -2}, "save_top_k=-2"),
        ({"every_n_epochs": -1}, "every_n_epochs=-1"),
        ({"mode": "best"}, "mode='best'"),
    ],
)
def test_bad_arguments_are_adapter_errors(lg: Ledger, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AdapterError, match=match):
        LedgerCheckpoint(lg, **kwargs)


def test_importing_without_lightning_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['lightning'] = None\n"
        "try:\n    import ledger.adapters.lightning\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert MissingExtraError.__name__ in out.stdout
    assert "pip install 'training-ledger[lightning]'" in out.stdout


def test_the_plugin_alone_loads_the_short_form_of_a_ledger_path(lg: Ledger) -> None:
    model = Tiny()
    _trainer(LedgerCheckpoint(lg, monitor="val_loss"), epochs=2).fit(model, _loader(), _loader())
    fresh = Tiny()
    trainer = L.Trainer(
        plugins=[LedgerCheckpointIO(lg.root)],
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.validate(fresh, _loader(), ckpt_path="ledger:best", verbose=False)
    assert torch.equal(fresh.net.weight, lg.checkout("best")["state_dict"]["net.weight"])


def test_the_ledger_filesystem_is_read_only(lg: Ledger) -> None:
    with pytest.raises(AdapterError, match="read-only"):
        fsspec.open(ledger_url(lg.root, "HEAD"), "wb").open()


def test_a_process_that_never_imported_the_adapter_knows_the_ledger_protocol(
    lg: Ledger,
) -> None:
    cb = LedgerCheckpoint(lg, every_n_epochs=1)
    _trainer(cb, epochs=1).fit(Tiny(), _loader())
    url = ledger_url(lg.root, lg.resolve("HEAD"))
    code = (
        "import sys, fsspec, torch\n"
        "with fsspec.open(sys.argv[1], 'rb') as f:\n"
        "    ckpt = torch.load(f, weights_only=True)\n"
        "print(sorted(ckpt['state_dict']), ckpt['global_step'])\n"
        "assert 'ledger.adapters.lightning' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[0] == "['net.bias', 'net.weight'] 4"
