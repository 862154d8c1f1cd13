"""One process of a 2-process Accelerate (gloo, CPU) job with automatic checkpoint naming.

Usage: RANK=.. WORLD_SIZE=.. MASTER_ADDR=.. MASTER_PORT=.. adapter_accelerate_project.py PROJECT OUT_DIR

The Accelerator has ``ProjectConfiguration(project_dir=PROJECT,
automatic_checkpoint_naming=True, total_limit=2)``. Three times it trains a
step and calls ``save_state(accelerator)`` with no ledger, then
``load_state(accelerator)``; then it resumes the second commit and saves
again (lineage). Each rank writes what it saw (the commits' ids and steps,
``iteration`` after each save, the commit it loaded, the forked commit's id,
step and parents) to ``OUT_DIR/rank<r>.json``.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from accelerate.utils import ProjectConfiguration
from adapter_accelerate_ddp import cpu_accelerator, prepared
from torch import nn

from ledger.adapters.accelerate import load_state, save_state

warnings.filterwarnings("ignore")


def main() -> None:
    project, out = sys.argv[1], Path(sys.argv[2])
    accelerator = cpu_accelerator(
        project_config=ProjectConfiguration(
            project_dir=project, automatic_checkpoint_naming=True, total_limit=2
        )
    )
    model, opt, loader = prepared(accelerator, seed=0)
    seen: dict[str, list[object]] = {"ids": [], "steps": [], "iterations": []}
    batches = iter(loader)
    for _ in range(3):
        xb, yb = next(batches)
        accelerator.backward(nn.functional.mse_loss(model(xb), yb))
        opt.step()
        opt.zero_grad()
        commit = save_state(accelerator)
        assert commit is not None
        seen["ids"].append(commit.id)
        seen["steps"].append(commit.step)
        seen["iterations"].append(accelerator.project_configuration.iteration)
    loaded = load_state(accelerator)
    assert loaded is not None
    seen["loaded"] = [loaded.id]
    older = load_state(accelerator, rev=str(seen["ids"][1]))  # then resume an older commit
    assert older is not None
    forked = save_state(accelerator)
    assert forked is not None
    seen["forked"] = [forked.id, forked.step, forked.parents]
    (out / f"rank{accelerator.process_index}.json").write_text(json.dumps(seen))
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
