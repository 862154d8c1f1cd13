"""One process of a 2-process Lightning job (gloo, CPU) for tests/test_adapter_lightning_ddp.py.

Usage, once per rank: LOCAL_RANK=.. NODE_RANK=0 WORLD_SIZE=2 MASTER_ADDR=.. MASTER_PORT=..
adapter_lightning_ddp.py OUT_DIR [STRATEGY [ACCELERATOR]] (default ``ddp`` ``cpu``; the
GPU test runs ``fsdp`` ``cuda``). Lightning sees the processes were started for it
(its ``LightningEnvironment``), so ``strategy="ddp"`` launches nothing more; this is
what ``strategy="ddp"``'s own launcher does when it re-runs a script.

The job runs the same 4-epoch training (a model with dropout, so each rank's own
RNG matters; a shuffled loader under Lightning's ``DistributedSampler``) as:

- ``straight``: 4 epochs with ``LedgerCheckpoint`` (ledger ``OUT/straight``) and
  Lightning's ``ModelCheckpoint`` (files in ``OUT/files``) side by side;
- ``ledger``: a fresh trainer and model resumed from the commit at the end of epoch 2
  (``cb.resume("HEAD~2")``) for the last 2 epochs, into ``OUT/ledger``;
- ``files``: the same from ``ModelCheckpoint``'s ``epoch=1-step=8.ckpt``.

Every fit starts as a fresh process would (``Seeder``: rank ``r`` seeds its RNG
with ``100 + r`` in ``setup``). ``Recorder`` writes, per run and rank,
``<run>-rank<r>.json`` (per-step losses as float hex, the SHA-256 of the torch RNG
state at each epoch end) and ``<run>-rank<r>.safetensors`` (the final weights).
The test imports :func:`main` for its ``ddp_spawn`` and one-GPU FSDP cases (the
classes are module level, so the spawned processes unpickle them).
"""

from __future__ import annotations

import hashlib
import json
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger.adapters.lightning import LedgerCheckpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "frameworks"))
from lightning_models import ResumableLoader  # tests/frameworks, put on the path just above

EPOCHS, HALF = 4, 2


class Net(L.LightningModule):
    """A small regressor with dropout; records its per-step losses."""

    own_shards = False  # Lightning's DistributedSampler splits the data

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        self.losses: list[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(loss.item())
        self.log(
            "train_loss", loss
        )  # each rank's own (no sync_dist): the callback ranks by rank 0's
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self) -> DataLoader[Any]:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
        return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4, shuffle=True)


class RankNet(Net):
    """Each rank reads its own half of the data, shuffled by a generator of its own.

    Its loader (``ResumableLoader``, stateful) differs per rank, so a resume
    mid-epoch is exact only if each rank gets its own loader state back.
    """

    own_shards = True

    def train_dataloader(self) -> DataLoader[Any]:
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))[self.global_rank :: 2]
        generator = torch.Generator().manual_seed(10 + self.global_rank)
        return ResumableLoader(TensorDataset(x, x.sum(1, keepdim=True)), 4, generator)


class Seeder(Callback):
    """Seeds each rank's RNG at setup, as a freshly started process of that rank would be."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(100 + trainer.global_rank)


class Recorder(Callback):
    """Writes the run's losses, RNG digests at epoch ends and final weights, per rank."""

    def __init__(self, out: Path, run: str) -> None:
        self.out, self.run = out, run
        self.rng: list[str] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs before the checkpoint callbacks (Lightning orders those last): the RNG they store
        self.rng.append(hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert isinstance(pl_module, Net)
        name = self.out / f"{self.run}-rank{trainer.global_rank}"
        record: dict[str, Any] = {"losses": [v.hex() for v in pl_module.losses], "rng": self.rng}
        ours = [c for c in trainer.callbacks if isinstance(c, LedgerCheckpoint)]
        if ours and ours[0].monitor:
            cb = ours[0]
            record["own_metric"] = float(trainer.callback_metrics[cb.monitor]).hex()
            record["ranking"] = {
                "best_model_path": cb.best_model_path,
                "best_model_score": float(cb.best_model_score).hex(),
                "current_score": float(cb.current_score).hex(),
                "best_k_models": {k: float(v).hex() for k, v in cb.best_k_models.items()},
                "last_model_path": cb.last_model_path,
            }
        name.with_suffix(".json").write_text(json.dumps(record))
        full = trainer.strategy.lightning_module_state_dict()  # FSDP: gathered on rank 0
        weights = {k: v.detach().cpu().clone().contiguous() for k, v in full.items()}
        save_file(weights, str(name.with_suffix(".safetensors")))


def fit(
    out: Path,
    run: str,
    checkpoints: list[Callback],
    where: Where,
    ckpt_path: str | None = None,
    model_seed: int = 0,
    module: type[Net] = Net,
) -> None:
    """One fit of ``module`` for ``EPOCHS`` epochs with the ``checkpoints``."""
    torch.manual_seed(model_seed)  # a resumed run starts from other weights: the commit's win
    trainer = L.Trainer(
        accelerator=where.accelerator,
        devices=where.devices,
        strategy=where.strategy,
        max_epochs=EPOCHS,
        callbacks=[Seeder(), Recorder(out, run), *checkpoints],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        deterministic=True,
        use_distributed_sampler=not module.own_shards,
    )
    trainer.fit(module(), ckpt_path=ckpt_path)


class Where(NamedTuple):
    """Where the job runs: Lightning's ``strategy``, ``accelerator`` and ``devices``."""

    strategy: str = "ddp"
    accelerator: str = "cpu"
    devices: int = 2

    @property
    def steps_per_epoch(self) -> int:
        return 32 // (4 * self.devices)


def main(out: Path, where: Where | None = None, files: bool = True) -> None:
    """The runs of the job (``files=False``: only the ledger's, for the slower ``ddp_spawn``)."""
    warnings.filterwarnings("ignore")
    where = where or Where()
    straight = LedgerCheckpoint(out / "straight", monitor="train_loss", save_top_k=-1)
    both = [straight, ModelCheckpoint(out / "files", save_top_k=-1)] if files else [straight]
    fit(out, "straight", both, where)
    half = straight.resume(f"HEAD~{EPOCHS - HALF}")  # the commit at the end of epoch HALF
    fit(out, "ledger", [LedgerCheckpoint(out / "ledger", save_top_k=-1)], where, half, 7)
    if files:
        last = str(out / "files" / f"epoch={HALF - 1}-step={HALF * where.steps_per_epoch}.ckpt")
        again = ModelCheckpoint(out / "files-resumed", save_top_k=-1)
        fit(out, "files", [again], where, last, model_seed=7)


def mid_epoch(out: Path, where: Where) -> None:
    """``RankNet`` committing every 3 steps, resumed from step 6 (mid-epoch 1) into ``OUT/ledger``."""
    warnings.filterwarnings("ignore")
    straight = LedgerCheckpoint(out / "straight", 3, 0, save_top_k=-1)
    fit(out, "straight", [straight], where, module=RankNet)
    at_6 = straight.resume("HEAD~3")  # commits at steps 3, 6, 9, 12, 15
    again = LedgerCheckpoint(out / "ledger", 3, 0, save_top_k=-1)
    fit(out, "ledger", [again], where, at_6, model_seed=7, module=RankNet)


if __name__ == "__main__":
    if sys.argv[4:] == ["mid-epoch"]:
        mid_epoch(Path(sys.argv[1]), Where(*sys.argv[2:4]))
    else:
        main(Path(sys.argv[1]), Where(*sys.argv[2:4]))
