"""Real source checkpoints for the import tests, written by the real frameworks in a directory.

Not a test module: ``tests/test_import*.py`` load it with ``helpers.load_script``.
Every model is tiny and built from a config (no downloads): a GPT-2 for the
HF Trainer, a linear regression for Lightning and Accelerate.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

warnings.filterwarnings("ignore")


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Fixed random token rows; the labels are the inputs (language modelling)."""

    def __init__(self, n: int) -> None:
        self.ids = torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StopAt(TrainerCallback):
    """Stops training after ``step`` steps (the "crash"); the schedule still spans ``max_steps``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


class CountSteps(TrainerCallback):
    """Counts the optimizer steps this process ran (a resume from step 4 of 6 runs 2)."""

    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.steps += 1


def hf_trainer(
    out: Path, *, max_steps: int, save_steps: int, callbacks: list[Any] = (), **kw: Any
) -> Trainer:
    """A Trainer of a tiny GPT-2 with dropout, a shuffled sampler, AdamW and a linear schedule."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **kw,
    )
    return Trainer(
        model=GPT2LMHeadModel(config),
        args=args,
        train_dataset=Tokens(24),
        callbacks=list(callbacks),
    )


def trainer_image(trainer: Trainer, after: int) -> dict[str, Any]:
    """What must match bitwise between two resumes: params, optimizer, scheduler, losses after ``after``."""
    return {
        "params": {k: v.clone() for k, v in trainer.model.state_dict().items()},
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.lr_scheduler.state_dict(),
        "losses": {
            e["step"]: e["loss"]
            for e in trainer.state.log_history
            if "loss" in e and e["step"] > after
        },
        "step": trainer.state.global_step,
    }


def _regression(lr: float) -> Any:
    """A Lightning module of a linear regression with Adam and a step schedule (seeded)."""
    import lightning.pytorch as pl

    class Regression(pl.LightningModule):
        def __init__(self, lr: float = 0.1) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: Any, i: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    torch.manual_seed(0)
    return Regression(lr)


def lightning_fit(
    steps: int,
    *,
    lr: float = 0.1,
    callbacks: list[Any] = (),
    ckpt_path: str | None = None,
    **kw: Any,
) -> Any:
    """Fit the regression for ``steps`` steps (resuming from ``ckpt_path``); the module.

    A resume takes the optimizer's learning rate from the checkpoint, so a run
    started with another ``lr`` shows whether the resume happened.
    """
    import lightning.pytorch as pl

    model = _regression(lr)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))
    data = torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        **kw,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=4), ckpt_path=ckpt_path)
    return model


def lightning_checkpoints(root: Path, *, steps: int = 4, every: int = 2) -> Path:
    """A Lightning run with ``ModelCheckpoint`` every ``every`` steps; its checkpoints dir."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpts = root / "checkpoints"
    every_n = ModelCheckpoint(
        dirpath=ckpts,
        every_n_train_steps=every,
        save_top_k=-1,
        monitor="train_loss",
        filename="{epoch}-{step}",
    )
    lightning_fit(steps, callbacks=[every_n])
    return ckpts


def accelerate_state(out: Path) -> dict[str, Any]:
    """``accelerator.save_state(out)`` after two steps of a linear regression; the live state."""
    from accelerate import Accelerator

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    for _ in range(2):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
    accelerator.save_state(str(out))
    return {
        "model": {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()},
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
    }
