"""One process of a 2-process (gloo, CPU) HF Trainer job for tests/test_adapter_hf_ddp.py.

Usage: torchrun --standalone --nproc_per_node 2 adapter_hf_ddp.py PHASE OUT

A tiny GPT-2 (from a config) with dropout and tied embeddings trains under
DDP, evaluating after every step and loading the best checkpoint at the
end, the same job twice side by side: once with the Trainer's own
checkpoint folders (``OUT/folder``), once with ``LedgerCallback``
(ledger ``OUT/lg``, output dir ``OUT/lgout``, where nothing is written).
Each process draws from its RNG after every step a number of times that
depends on its rank, so the two processes' RNG states differ and a resume
that mixed them up would train differently.

- ``first``: both runs save after every step and stop after step 2 (of 4);
  rank 0 then imports the folder's ``checkpoint-2`` into the ledger
  ``OUT/imported`` (``Ledger.import_checkpoints``).
- ``second``: the folder run resumes from ``OUT/folder/checkpoint-2``
  (``resume_from_checkpoint``), the ledger run from ``cb.resume("HEAD")``,
  a third run from the imported ledger the same way; all train to step 4.
  Each process writes ``OUT/<run>-rank<r>`` (``<run>``: folder, ledger,
  imported: its weights, optimizer, scheduler, the losses logged after
  step 2, the best checkpoint's name) and ``OUT/resume-rank<r>.json`` (the
  folder the ledger run resumed from and its files).
- ``both``: ``first`` then ``second`` in the same processes (fresh models,
  Trainers and callbacks; a new ``Ledger`` handle).
- ``fail``: the ledger run alone, with HEAD detached in ``OUT/lg`` (rank 0
  cannot commit); each process writes the error its ``train()`` raised to
  ``OUT/error-rank<r>.json``.

``HF_DDP_FSDP=<option>`` passes ``fsdp=<option>`` to ``TrainingArguments``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from adapter_hf_train import Tokens
from adapter_util import save_image
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from ledger import Ledger
from ledger.adapters.transformers import LedgerCallback

warnings.filterwarnings("ignore")

MAX_STEPS, STOP_AT = 4, 2


class Diverge(TrainerCallback):
    """Draw ``rank + 1`` numbers after every step (each process's RNG takes its own path)."""

    def __init__(self, rank: int, stop_at: int | None) -> None:
        self.rank, self.stop_at = rank, stop_at

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        torch.rand(self.rank + 1)
        if self.stop_at is not None and state.global_step >= self.stop_at:
            control.should_training_stop = True


def trainer(output: Path, rank: int, stop_at: int | None, *extra: TrainerCallback) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    )
    fsdp = os.environ.get("HF_DDP_FSDP", "")
    args = TrainingArguments(
        output_dir=str(output),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=2,
        learning_rate=5e-3,
        lr_scheduler_type="linear",
        warmup_steps=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="loss",
        load_best_model_at_end=True,
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        fsdp=fsdp,
    )
    callbacks = [Diverge(rank, stop_at), *extra]
    return Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(40),
        eval_dataset=Tokens(8),
        callbacks=callbacks,
    )


def image(t: Trainer, path: Path) -> None:
    losses = {
        str(e["step"]): e["loss"]
        for e in t.state.log_history
        if "loss" in e and e["step"] > STOP_AT
    }
    save_image(
        {
            "params": dict(t.model.state_dict()),
            "optimizer": t.optimizer.state_dict(),
            "scheduler": t.lr_scheduler.state_dict(),
            "global_step": t.state.global_step,
            "best": Path(t.state.best_model_checkpoint or "none").name,
            "losses": losses,
            "after": torch.rand(4),  # where each process's RNG stream ends up
        },
        path,
    )


def main() -> None:
    phase, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    if phase == "fail":
        try:
            trainer(out / "lgout", rank, STOP_AT, LedgerCallback(out / "lg", timeout=60)).train()
        except Exception as e:
            error = {"type": type(e).__name__, "message": str(e)}
            (out / f"error-rank{rank}.json").write_text(json.dumps(error))
        return
    if phase in ("first", "both"):
        trainer(out / "folder", rank, STOP_AT).train()
        trainer(out / "lgout", rank, STOP_AT, LedgerCallback(out / "lg")).train()
        if rank == 0:  # every process's files of checkpoint-2 are written by now
            with Ledger.open(out / "imported", create=True) as lg:
                lg.import_checkpoints(out / "folder" / f"checkpoint-{STOP_AT}", branch="main")
    if phase == "first":
        return
    imported = LedgerCallback(out / "imported")
    from_import = trainer(out / "importout", rank, None, imported)
    from_import.train(resume_from_checkpoint=imported.resume("HEAD"))
    image(from_import, out / f"imported-rank{rank}")
    folder = trainer(out / "folder", rank, None)
    folder.train(resume_from_checkpoint=str(out / "folder" / f"checkpoint-{STOP_AT}"))
    image(folder, out / f"folder-rank{rank}")
    cb = LedgerCallback(out / "lg")
    ledger = trainer(out / "lgout", rank, None, cb)
    where = cb.resume("HEAD")
    assert where is not None
    seen = {"path": where, "files": sorted(os.listdir(where))}
    ledger.train(resume_from_checkpoint=where)
    seen["left"] = os.path.exists(where)
    image(ledger, out / f"ledger-rank{rank}")
    (out / f"resume-rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main()
