"""Train a tiny Lightning model with ``LedgerCheckpoint``; resume from the ledger if it has commits.

Usage: adapter_lightning_train.py LEDGER_DIR MAX_EPOCHS IMAGE_PATH

The same script starts (empty ledger) and resumes (``cb.resume("HEAD")``),
like a user's. Dropout, a shuffled loader, Adam, StepLR and EarlyStopping
make every part of the resumed state matter. At the end it writes the
parameters, optimizer and scheduler state and EarlyStopping's state as an
image (``adapter_util.save_image``) for the test to compare bitwise.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from adapter_util import save_image
from lightning.pytorch.callbacks import EarlyStopping
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger.adapters.lightning import LedgerCheckpoint

warnings.filterwarnings("ignore")


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(4, hidden), nn.Dropout(0.25), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> dict[str, object]:
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 1, 0.7)}


def main() -> None:
    where, max_epochs, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    data = torch.Generator().manual_seed(0)
    x = torch.randn(96, 4, generator=data)
    y = x.sum(1, keepdim=True) + 0.1 * torch.randn(96, 1, generator=data)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=8, shuffle=True)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=16)

    model = Regressor()
    cb = LedgerCheckpoint(where, every_n_epochs=1, monitor="val_loss", save_top_k=2)
    stop = EarlyStopping("val_loss", patience=50)
    trainer = L.Trainer(
        max_epochs=max_epochs,
        callbacks=[cb, stop],
        accelerator="cpu",
        deterministic=True,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train, val, ckpt_path=cb.resume("HEAD"))
    save_image(
        {
            "params": model.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict(),
            "scheduler": trainer.lr_scheduler_configs[0].scheduler.state_dict(),
            "early_stopping": stop.state_dict(),
            "global_step": trainer.global_step,
        },
        out,
    )


if __name__ == "__main__":
    main()
