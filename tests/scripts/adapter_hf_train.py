"""Train a tiny GPT-2 (built from a config, no downloads) with the HF Trainer and ``LedgerCallback``.

Usage: adapter_hf_train.py LEDGER_DIR OUTPUT_DIR MAX_STEPS IMAGE_PATH [STOP_AT]

Resumes from the ledger's HEAD when it has commits (``cb.resume("HEAD")``),
like a user's script. ``STOP_AT`` stops training after that many steps (the
"crash"); the LR schedule still spans ``MAX_STEPS``. Dropout, a shuffled
sampler, AdamW with a linear schedule and tied input/output embeddings make
every part of the resumed state matter. At the end it writes parameters,
optimizer and scheduler state and the losses logged after step 4 as an image
(``adapter_util.save_image``) for the test to compare bitwise.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from adapter_util import save_image
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ledger.adapters.transformers import LedgerCallback

warnings.filterwarnings("ignore")


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        self.ids = torch.randint(0, 64, (n, 12), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


def main() -> None:
    where, output, max_steps, image = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    stop_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    torch.set_num_threads(1)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    args = TrainingArguments(
        output_dir=output,
        max_steps=max_steps,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        metric_for_best_model="loss",
        save_total_limit=2,
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    cb = LedgerCallback(where)
    callbacks: list[Any] = [cb] + ([StopAt(stop_at)] if stop_at else [])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(40),
        eval_dataset=Tokens(8),
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=cb.resume("HEAD"))
    losses = {
        str(e["step"]): e["loss"]
        for e in trainer.state.log_history
        if "loss" in e and e["step"] > 4
    }
    save_image(
        {
            "params": dict(model.state_dict()),
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.lr_scheduler.state_dict(),
            "global_step": trainer.state.global_step,
            "losses": losses,
        },
        image,
    )


if __name__ == "__main__":
    main()
