"""The Hugging Face Trainer with ``LedgerCallback``: commits instead of ``checkpoint-N/`` folders.

A tiny GPT-2 built from a config (no downloads) trains for 12 steps, "crashes"
after 6, and a fresh Trainer resumes from the ledger with the same
``train(resume_from_checkpoint=cb.resume("HEAD"))`` call that started it. The
script then shows the history, the ``best`` branch that follows
``metric_for_best_model``, and that the Trainer's output directory is empty.
CPU only, a few seconds::

    python examples/transformers_resume.py [--dir /tmp/ckpt]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from ledger.adapters.transformers import LedgerCallback


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token sequences: a stand-in for a tokenized corpus."""

    def __init__(self, n: int, seed: int) -> None:
        self.ids = torch.randint(0, 128, (n, 16), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Crash(TrainerCallback):
    """Stops training after ``step`` steps, as a preemption would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


def train(where: str, output: str, crash_at: int | None) -> LedgerCallback:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=128, n_positions=16, n_embd=32, n_layer=2, n_head=2)
    )
    args = TrainingArguments(
        output_dir=output,
        max_steps=12,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=3,
        save_strategy="steps",
        save_steps=3,  # -> a commit every 3 steps
        eval_strategy="steps",
        eval_steps=3,
        metric_for_best_model="loss",  # -> the `best` branch follows best_model_checkpoint
        save_total_limit=2,  # -> the Trainer's rotation: older commits expired and freed
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    cb = LedgerCallback(where)
    callbacks: list[Any] = [cb] + ([Crash(crash_at)] if crash_at else [])
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(128, 0),
        eval_dataset=Tokens(16, 1),
        callbacks=callbacks,
    )
    start = cb.resume("HEAD")  # None on a new ledger: start from scratch
    print(f"train: resume_from_checkpoint={start}")
    trainer.train(resume_from_checkpoint=start)
    return cb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    where = args.dir or tempfile.mkdtemp(prefix="ledger-hf-")
    output = tempfile.mkdtemp(prefix="hf-output-")

    train(where, output, crash_at=6)
    cb = train(where, output, crash_at=None)

    lg = cb.ledger
    for c in lg.log():
        print(
            f"{c.id[:12]}  step {c.step:>2}  loss {c.metrics['loss']:.4f}  eval_loss {c.metrics['eval_loss']:.4f}"
        )
    best = lg.get("best")
    kept = [c.step for c in lg.log() if lg.show(c.id).expired is None]
    print(f"best: step {best.step} ({best.id[:12]}); steps keeping their state: {kept}")
    print(
        f"files the Trainer wrote into {output}: {sorted(p.name for p in Path(output).iterdir())}"
    )


if __name__ == "__main__":
    main()
