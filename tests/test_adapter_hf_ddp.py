"""The HF Trainer under DDP (2 gloo processes on CPU) with ``LedgerCallback``, against its own folders.

tests/scripts/adapter_hf_ddp.py runs the same 2-process job twice: with the
Trainer's own checkpoint folders and with ``LedgerCallback``; both stop after
step 2 and resume (``resume_from_checkpoint`` on the folder, ``cb.resume``
on the ledger) to step 4. The resumed runs must agree bitwise (weights,
optimizer, scheduler, per-step losses, and where each process's RNG stream
ends), each commit must hold both processes' RNG and the weights once, and
the ledger must keep the commits the Trainer keeps folders for. The
strategies the adapter refuses (DeepSpeed, FSDP) are refused before
training starts, tested by building the condition the adapter checks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SCRIPTS, load_script
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from ledger import Ledger
from ledger.adapters._common import AdapterError
from ledger.adapters.transformers import LedgerCallback
from ledger.state.rng import RNG_KEY

util = load_script("adapter_util")
SCRIPT = SCRIPTS / "adapter_hf_ddp.py"
RANKS_KEY = "rng_ranks"


def _two_processes(phase: str, out: Path, **env: str) -> None:
    """Run the script's ``phase`` as the 2 processes of a gloo job under ``torchrun``; both must exit 0."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*command, str(SCRIPT), phase, str(out)],
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


def _check_job(out: Path) -> None:
    """What every job must show."""
    folder = [util.load_image(out / f"folder-rank{r}") for r in range(2)]
    ledger = [util.load_image(out / f"ledger-rank{r}") for r in range(2)]
    imported = [util.load_image(out / f"imported-rank{r}") for r in range(2)]
    for rank in range(2):
        assert ledger[rank] == folder[rank], f"rank {rank} resumed differently from the Trainer"
        # the Trainer's own DDP folder, imported, resumes through the callback the same way
        assert imported[rank] == folder[rank], f"rank {rank}: the imported folder differs"
    plain = folder[0]["plain"]
    assert plain["global_step"] == 4 and sorted(k for k in plain if k.startswith("losses/")) == [
        "losses/3",
        "losses/4",
    ]
    # each process's RNG took its own path, and each got its own back
    assert folder[0]["tensors"]["after"] != folder[1]["tensors"]["after"]

    seen = [json.loads((out / f"resume-rank{r}.json").read_text()) for r in range(2)]
    assert seen[0]["path"] == seen[1]["path"]  # rank 0 wrote it, rank 1 read it
    for rank in range(2):
        files = set(seen[rank]["files"])
        assert {"rng_state_0.pth", "rng_state_1.pth", "model.safetensors"} <= files
        assert "rng_state.pth" not in files
    assert not seen[0]["left"] and not seen[1]["left"]  # removed once both had loaded it

    assert not list((out / "lgout").glob("checkpoint-*"))  # the Trainer wrote no folder
    kept_folders = sorted(int(p.name.split("-")[1]) for p in (out / "folder").glob("checkpoint-*"))
    with Ledger.open(out / "lg") as lg:
        commits = list(lg.log())
        assert [c.step for c in commits] == [4, 3, 2, 1]  # one commit per save
        kept = sorted(c.step for c in commits if lg.show(c.id).expired is None)
        assert kept == kept_folders and len(kept) == 2  # save_total_limit=2, the Trainer's rule
        best = plain["best"]  # the same on both sides: the images are equal
        assert best.startswith("checkpoint-") and int(best.split("-")[1]) in kept
        assert lg.get("best").step == int(best.split("-")[1])
        assert lg.gc(dry_run=True, grace=0).objects_freed == 0  # rank 0 freed their state

        head = lg.checkout("HEAD", paths=[RANKS_KEY, RNG_KEY])
        ranks = head[RANKS_KEY]
        assert len(ranks) == 2
        assert not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
        assert torch.equal(head[RNG_KEY]["torch"], ranks[0]["torch"])

        show = lg.show("HEAD")
        weights = util.load_image(out / "ledger-rank0")["tensors"]
        model = [t for t in show.tensors if t.path.startswith("model/")]
        n_params = sum(1 for k in weights if k.startswith("params/"))
        assert len(model) == n_params  # the weights once, not once per process
        roots = {t.path.split("/")[0] for t in show.tensors}  # (show leaves out the RNG key)
        assert roots == {"model", "optimizer", RANKS_KEY}
        per_rank = [t for t in show.tensors if t.path.startswith(f"{RANKS_KEY}/")]
        assert {t.path.split("/")[1] for t in per_rank} == {"0", "1"}
        # RNG states only: per rank torch 5056 B, numpy 2496 B, Python 2500 B
        assert sum(t.nbytes for t in per_rank) < 2 * 12_000
        model_bytes = sum(t.nbytes for t in model)
        rest = sum(t.nbytes for t in show.tensors if not t.path.startswith("model/"))
        # everything the commit holds, the RNG key's tensors included: the weights once, not twice
        assert (
            rest
            < show.commit.stats.logical_bytes
            < rest + model_bytes + 10_000
            < rest + 2 * model_bytes
        )


def test_two_processes_commit_once_per_save_and_resume_as_the_trainer_does(
    tmp_path: Path,
) -> None:
    _two_processes("both", tmp_path)
    _check_job(tmp_path)


@pytest.mark.slow
def test_two_processes_resume_in_new_processes(tmp_path: Path) -> None:
    _two_processes("first", tmp_path)
    _two_processes("second", tmp_path)
    _check_job(tmp_path)


@pytest.mark.slow
def test_fsdp_on_cpu_runs_as_ddp_and_commits_like_it(tmp_path: Path) -> None:
    """Accelerate ignores ``fsdp=`` on CPU (no FSDP plugin): the job is plain DDP, committed as such."""
    _two_processes("both", tmp_path, HF_DDP_FSDP="full_shard")
    _check_job(tmp_path)


@pytest.mark.slow
def test_a_save_rank_0_cannot_commit_fails_on_every_process_and_commits_nothing(
    tmp_path: Path,
) -> None:
    with Ledger.open(tmp_path / "lg", create=True) as lg:
        first = lg.commit({"w": torch.ones(2)}, "before the job")
        lg.switch(first.id)  # HEAD detached: a commit without branch= is refused
    _two_processes("fail", tmp_path)
    errors = [json.loads((tmp_path / f"error-rank{r}.json").read_text()) for r in range(2)]
    assert errors[0]["type"] == "DetachedHeadError"  # rank 0: its own error
    assert errors[1]["type"] == "DistributedCommitError"  # rank 1: names rank 0's
    assert "rank 0 failed while writing the commit: DetachedHeadError" in errors[1]["message"]
    with Ledger.open(tmp_path / "lg") as lg:
        assert [c.id for c in lg.log(first.id)] == [first.id]
        assert [c.id for c in lg.log("main")] == [first.id]  # no commit appeared


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rng_files_of_a_multi_process_commit_give_every_cuda_device_its_state_back(
    tmp_path: Path,
) -> None:
    """The CUDA part of ``rng_state_{rank}.pth``: every device's state, as the Trainer's DDP save has it."""
    from transformers.trainer_pt_utils import safe_globals, set_rng_state_for_device

    from ledger.adapters._hf_resume import write_checkpoint
    from ledger.state.rng import capture_rng

    torch.cuda.manual_seed_all(7)
    torch.rand(3, device="cuda")
    saved = torch.cuda.get_rng_state_all()
    with Ledger.open(tmp_path / "lg", create=True) as lg:
        rng = capture_rng()  # what each process stores as its part
        state = {"model": {"w": torch.ones(2)}, "trainer_state": {"global_step": 1}}
        lg.commit({**state, RANKS_KEY: [rng, rng]})
        tree = lg.checkout("HEAD")
    out = tmp_path / "checkpoint-1"
    out.mkdir()
    write_checkpoint(tree, out)
    torch.rand(3, device="cuda")  # the stream moves on
    with safe_globals():
        loaded = torch.load(out / "rng_state_1.pth", weights_only=True)
    assert isinstance(loaded["cuda"], list) and len(loaded["cuda"]) == torch.cuda.device_count()
    set_rng_state_for_device("CUDA", torch.cuda, loaded, is_distributed=True)  # the Trainer's call
    assert all(
        torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), saved, strict=True)
    )


# -- refusals --------------------------------------------------------------------------


class _Flagged(Trainer):
    """A Trainer that, once its accelerator exists, has the attributes a test gives it.

    The Trainer sets ``is_deepspeed_enabled`` / ``is_fsdp_enabled`` right after
    creating its accelerator (from Accelerate's plugins), before any callback
    runs: this sets them there, as a DeepSpeed or FSDP launch would, without
    DeepSpeed installed or a GPU.
    """

    flags: dict[str, Any] = {}

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        for name, value in self.flags.items():
            setattr(self, name, value)


def _refused(tmp_path: Path, args: dict[str, Any], flags: dict[str, Any]) -> AdapterError:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=1))
    training = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=1, report_to=[], use_cpu=True
    )
    for name, value in args.items():
        setattr(training, name, value)  # after __post_init__, which would import DeepSpeed
    trainer = type("Flagged", (_Flagged,), {"flags": flags})
    cb = LedgerCallback(tmp_path / "lg")
    with pytest.raises(AdapterError) as caught:
        trainer(model=model, args=training, callbacks=[cb])
    with Ledger.open(tmp_path / "lg") as lg:
        assert lg.head is None  # refused before anything was committed
    return caught.value


@pytest.mark.parametrize(
    ("args", "flags"),
    [
        (
            {"deepspeed": {"zero_optimization": {"stage": 2}}},
            {},
        ),  # TrainingArguments(deepspeed=...)
        ({}, {"is_deepspeed_enabled": True}),  # a DeepSpeed plugin from accelerate launch
    ],
)
def test_deepspeed_is_refused_with_the_reason(
    tmp_path: Path, args: dict[str, Any], flags: dict[str, Any]
) -> None:
    error = _refused(tmp_path, args, flags)
    assert "DeepSpeed" in str(error) and "DDP" in str(error)


def test_fsdp_is_refused_with_the_reason(tmp_path: Path) -> None:
    error = _refused(tmp_path, {}, {"is_fsdp_enabled": True})  # Accelerate made an FSDP plugin
    assert "FSDP" in str(error) and "GPU" in str(error)
