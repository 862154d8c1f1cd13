"""Bring a Trainer run in, continue it from the ledger, hand a model out.

A tiny GPT-2 (built from a config, no downloads) trains with the plain Hugging
Face ``Trainer``, which writes ``checkpoint-2`` and ``checkpoint-4`` folders and
stops after 4 of 6 planned steps. The script then

1. imports the whole ``output_dir`` (one commit per checkpoint, in step order)
   and prints what the import stored against what the folders hold;
2. continues training from the imported ``HEAD`` with ``LedgerCallback`` and
   checks, bitwise, that it equals the Trainer's own resume from
   ``checkpoint-4``;
3. exports the last commit in the ``save_pretrained`` layout and checks that
   ``AutoModelForCausalLM.from_pretrained`` gives the live model's logits.

Each check prints ``OK`` or ``FAIL``; any ``FAIL`` exits with status 1. CPU only,
a few seconds::

    python examples/import_export.py [--dir /tmp/ckpt]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback
from transformers.utils import logging as hf_logging

from ledger import Ledger
from ledger.adapters.transformers import LedgerCallback

MAX_STEPS = 6  # the run's plan; the first process stops after STOP_AT
STOP_AT = 4


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """Random token rows, the labels are the inputs: a stand-in for a tokenized corpus."""

    def __init__(self, n: int) -> None:
        self.ids = torch.randint(0, 64, (n, 8), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class StopAt(TrainerCallback):
    """Stops training after ``step`` steps, as a preemption would; the schedule spans MAX_STEPS."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step >= self.step:
            control.should_training_stop = True


def make_trainer(output_dir: Path, callbacks: list[Any]) -> Trainer:
    """A Trainer of a tiny GPT-2 with dropout, a shuffled sampler, AdamW and a linear schedule."""
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=1,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,  # -> checkpoint-2, checkpoint-4 (and checkpoint-6 on a full run)
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=GPT2LMHeadModel(config), args=args, train_dataset=Tokens(32), callbacks=callbacks
    )
    trainer.remove_callback(PrinterCallback)  # keep the output to this script's lines
    return trainer


def check(name: str, ok: bool, failures: list[str]) -> None:
    """Print ``OK name`` or ``FAIL name`` and remember a failure."""
    print(f"{'OK' if ok else 'FAIL'} {name}")
    if not ok:
        failures.append(name)


def same_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same names, dtypes, shapes and bytes."""
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="ledger directory (default: a new temp dir)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="ledger-interop-"))
    where = args.dir or str(work / "ledger")
    failures: list[str] = []

    # 0. A run the way it is usually done: the Trainer writes checkpoint-N folders.
    run = work / "gpt2-run"
    make_trainer(run, [StopAt(STOP_AT)]).train()
    folders = sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint-"))
    print(f"the Trainer wrote {folders} into {run}")

    # 1. Import them: one commit per checkpoint, on a new branch named after the folder.
    lg = Ledger.open(where, create=True)
    report = lg.import_checkpoints(run)
    print(f"import: branch {report.branch!r}, {len(report.commits)} commits")
    for ck in report.checkpoints:
        print(
            f"  {ck.name:<14} {ck.format:<12} step {ck.step}  -> {(ck.commit or '-')[:12]}"
            f"  {ck.source_bytes:>8} B read, {ck.stored_bytes:>8} B stored"
        )
    saved = 100 * (1 - report.stored_bytes / max(report.source_bytes, 1))
    print(
        f"bytes before {report.source_bytes}, after {report.stored_bytes} "
        f"({saved:.0f}% saved by deduplication)"
    )
    check("one commit per checkpoint folder", len(report.commits) == len(folders), failures)
    steps = [c.step for c in lg.log(report.branch)][::-1]
    check(f"commits in step order {steps}", steps == [2, 4], failures)

    # 2. Continue from the ledger, and from the folder as the Trainer itself would.
    native = make_trainer(work / "native", [])
    native.train(resume_from_checkpoint=str(run / f"checkpoint-{STOP_AT}"))
    lg.switch(report.branch)
    cb = LedgerCallback(lg)  # commits the continuation onto the imported branch
    resumed = make_trainer(work / "resumed", [cb])
    resumed.train(resume_from_checkpoint=cb.resume("HEAD"))
    print(f"continued to step {resumed.state.global_step}; history {steps} -> ", end="")
    print([c.step for c in lg.log(report.branch)][::-1])
    check(
        "continuation equals the Trainer's own resume (parameters, bitwise)",
        resumed.state.global_step == native.state.global_step == MAX_STEPS
        and same_bits(native.model.state_dict(), resumed.model.state_dict()),
        failures,
    )
    losses = [
        [e["loss"] for e in t.state.log_history if "loss" in e and e["step"] > STOP_AT]
        for t in (native, resumed)
    ]
    check(f"same losses after step {STOP_AT}: {losses[1]}", losses[0] == losses[1], failures)

    # 3. Hand it out: the save_pretrained layout, loadable with no ledger installed.
    out = work / "gpt2-export"
    exported = lg.export("HEAD", "hf", out)
    print(f"export of {exported.commit[:12]}: {exported.files}, {exported.bytes} B in {out}")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    live = resumed.model.eval()
    ids = Tokens(4).ids
    with torch.no_grad():
        same = torch.equal(loaded(ids).logits, live(ids).logits)
    check("from_pretrained(export) gives the live model's logits", same, failures)

    print("FAIL:" if failures else "all checks OK", *failures)
    lg.close()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
