"""Lightning with ``LedgerCheckpoint`` instead of ``ModelCheckpoint``: commit every epoch, resume.

The same ``fit`` call starts a run on a new ledger and resumes it on an
existing one (``ckpt_path=cb.resume("HEAD")``). By default this script trains
2 epochs, then builds a *fresh* model and trainer that resume from the ledger
and train to 4 epochs, and prints the history and the ``best`` branch. CPU
only, no downloads, a few seconds::

    python examples/lightning_resume.py
    python examples/lightning_resume.py --dir /tmp/ckpt --epochs 6   # resume further
"""

from __future__ import annotations

import argparse
import tempfile
import warnings

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger.adapters.lightning import LedgerCheckpoint


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()  # -> the commits' params
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Dropout(0.1), nn.ReLU(), nn.Linear(32, 1))

    def training_step(self, batch: list[torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)  # -> the commits' metrics
        return loss

    def validation_step(self, batch: list[torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def fit(where: str, epochs: int) -> LedgerCheckpoint:
    data = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=data)
    y = x.sin().sum(1, keepdim=True)
    train = DataLoader(TensorDataset(x[:448], y[:448]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[448:], y[448:]), batch_size=64)

    cb = LedgerCheckpoint(where, every_n_epochs=1, monitor="val_loss", save_top_k=2)
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=[cb],  # replaces ModelCheckpoint; no checkpoint files are written
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Regressor(), train, val, ckpt_path=cb.resume("HEAD"))  # None on a new ledger
    return cb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    parser.add_argument("--epochs", type=int, default=None, help="train (or resume) to this epoch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    L.seed_everything(0, verbose=False)
    where = args.dir or tempfile.mkdtemp(prefix="ledger-lightning-")

    if args.epochs is None:
        fit(where, 2)  # a first run ...
        cb = fit(where, 4)  # ... and a fresh process-like restart that resumes it
    else:
        cb = fit(where, args.epochs)

    lg = cb.ledger
    for c in lg.log():
        print(
            f"{c.id[:12]}  epoch {c.epoch}  step {c.step:>3}  val_loss {c.metrics['val_loss']:.4f}"
        )
    best = lg.get("best")
    print(f"best: epoch {best.epoch} ({best.id[:12]}); resume it with ckpt_path=cb.resume('best')")
    print(f"ledger at {where}; params of the last commit: {lg.get('HEAD').params}")


if __name__ == "__main__":
    main()
