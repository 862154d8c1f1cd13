"""``LedgerCheckpoint`` with several processes: DDP over gloo, ``ddp_spawn``, FSDP (GPU), DeepSpeed refused.

One 2-process job (tests/scripts/adapter_lightning_ddp.py, ``strategy="ddp"``
in processes started with Lightning's environment variables, as its own
launcher starts them) trains 4 epochs straight with ``LedgerCheckpoint`` and
``ModelCheckpoint`` side by side, then resumes the last 2 epochs from the
epoch-2 commit, and from ``ModelCheckpoint``'s epoch-2 file. The tests read
what it left: one commit per epoch holding both ranks' RNG as each rank had
it at the commit, the replicated model stored once, a resume that is bitwise
the straight run (per-step losses and final weights, on every rank), while
``ModelCheckpoint``'s resume is not (it keeps no RNG), and commits that hold
exactly what ``ModelCheckpoint``'s files hold. In the slow tier: ``ddp_spawn``
and Lightning's own ``ddp`` launcher run the same ledger runs, and a mid-epoch
resume gives each rank its own stateful loader's state back. FSDP runs where a
GPU is.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import lightning as L
import pytest
import torch
from helpers import SCRIPTS, finish, load_script, start
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from safetensors.torch import load_file

from ledger import Ledger
from ledger.adapters._common import AdapterError
from ledger.adapters._data_position import reseed_rng
from ledger.adapters._lightning_dist import refuse_unsupported
from ledger.adapters.lightning import LedgerCheckpoint, LedgerCheckpointIO, ledger_url
from ledger.state.rng import capture_rng

JOB = SCRIPTS / "adapter_lightning_ddp.py"
util = load_script("adapter_util")
STEPS_PER_EPOCH, HALF = 4, 2  # 32 samples, batch 4, 2 ranks; the job resumes after 2 epochs


def _job_module() -> Any:
    """The job script as an importable module (``ddp_spawn`` pickles its classes by name)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    return importlib.import_module("adapter_lightning_ddp")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2-process ``ddp`` job's output directory (about 15 s on an idle 2-core machine).

    Run once per session even when several xdist workers run these tests.
    """
    return util.shared_dir(
        tmp_path_factory, "lightning-ddp", lambda out: _two_processes(out, "ddp", "cpu")
    )


def _two_processes(out: Path, strategy: str, accelerator: str, *mode: str) -> None:
    """Run the job as 2 processes started with Lightning's environment variables; both exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NODE_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    env["MASTER_PORT"] = str(port)
    procs = [
        start(JOB, out, strategy, accelerator, *mode, env={**env, "LOCAL_RANK": str(rank)})
        for rank in range(2)
    ]
    for proc in procs:
        finish(proc)


def _record(out: Path, run: str, rank: int) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((out / f"{run}-rank{rank}.json").read_text())
    return record


def _weights(out: Path, run: str, rank: int) -> dict[str, bytes]:
    tensors = load_file(str(out / f"{run}-rank{rank}.safetensors"))
    return {k: t.contiguous().view(torch.uint8).numpy().tobytes() for k, t in tensors.items()}


def _digest(state: torch.Tensor) -> str:
    return hashlib.sha256(state.numpy().tobytes()).hexdigest()


# -- one commit per save, every rank's RNG in it ---------------------------------------------


def test_each_commit_holds_every_ranks_rng_as_it_was_at_the_commit(job: Path) -> None:
    with Ledger.open(job / "straight") as lg:
        commits = list(reversed(list(lg.log())))
        assert [(c.epoch, c.step) for c in commits] == [(e, 4 * (e + 1)) for e in range(4)]
        for epoch, commit in enumerate(commits):
            tree = lg.checkout(commit.id, paths=["__ranks__", "__rng__"])
            ranks = tree["__ranks__"]
            assert len(ranks) == 2 and all(r["loaders"] == [] for r in ranks)
            for rank in range(2):  # what each rank's Recorder saw just before the commit
                seen = _record(job, "straight", rank)["rng"][epoch]
                assert _digest(ranks[rank]["rng"]["torch"]) == seen
            assert not torch.equal(ranks[0]["rng"]["torch"], ranks[1]["rng"]["torch"])
            assert torch.equal(tree["__rng__"]["torch"], ranks[0]["rng"]["torch"])


def test_the_replicated_model_and_optimizer_are_stored_once(job: Path) -> None:
    with Ledger.open(job / "straight") as lg:
        show = lg.show("HEAD")
        per_rank = [t for t in show.tensors if t.path.startswith("__ranks__/")]
        rank0_rng = sum(t.nbytes for t in per_rank if t.path.startswith("__ranks__/0/"))
        # under __ranks__ only each rank's RNG: no rank stored its copy of the weights
        assert {t.path.split("/", 2)[2].split("/")[0] for t in per_rank} == {"rng"}
        assert sum(t.nbytes for t in per_rank) == 2 * rank0_rng
        weights = [t.path for t in show.tensors if t.path.startswith("state_dict/")]
        assert sorted(weights) == sorted(
            f"state_dict/net.{k}" for k in ("0.weight", "0.bias", "3.weight", "3.bias")
        )
        model = sum(t.nbytes for t in show.tensors if t.path.startswith("state_dict/"))
        momentum = sum(t.nbytes for t in show.tensors if t.path.startswith("optimizer_states/"))
        assert model == momentum  # SGD's momentum buffers: one copy, like the weights
        assert show.logical_bytes <= model + momentum + 3 * rank0_rng  # + __rng__, deduplicated


def test_every_rank_ranks_by_rank_0s_metric(job: Path) -> None:
    """``monitor="train_loss"`` logged without ``sync_dist``: each rank has its own value."""
    ranks = [_record(job, "straight", rank) for rank in range(2)]
    assert ranks[0]["own_metric"] != ranks[1]["own_metric"]  # so agreeing below means something
    assert ranks[0]["ranking"] == ranks[1]["ranking"]
    with Ledger.open(job / "straight") as lg:
        commits = list(lg.log())
        best = min(commits, key=lambda c: c.metrics["train_loss"])
        assert ranks[0]["ranking"]["best_model_path"] == ledger_url(job / "straight", best.id)
        assert lg.resolve("best") == best.id
        assert float.fromhex(ranks[0]["own_metric"]) == commits[0].metrics["train_loss"]
    ranking = ranks[1]["ranking"]
    assert float.fromhex(ranking["best_model_score"]) == best.metrics["train_loss"]
    assert float.fromhex(ranking["current_score"]) == commits[0].metrics["train_loss"]
    assert len(ranking["best_k_models"]) == 4


# -- resume --------------------------------------------------------------------------------


def test_resume_on_two_processes_is_bitwise_the_straight_run(job: Path) -> None:
    _assert_resumed_bitwise(job, ranks=2, steps_per_epoch=STEPS_PER_EPOCH)


def _assert_resumed_bitwise(out: Path, ranks: int, steps_per_epoch: int) -> None:
    """Per-step losses and final weights of the resumed run are the straight run's, per rank."""
    cut = HALF * steps_per_epoch
    for rank in range(ranks):
        straight = _record(out, "straight", rank)["losses"]
        assert len(straight) == 4 * steps_per_epoch
        assert _record(out, "ledger", rank)["losses"] == straight[cut:]
        assert _weights(out, "ledger", rank) == _weights(out, "straight", rank)
    assert _weights(out, "straight", 0)  # rank 0 holds the full weights (FSDP gathers them)
    with Ledger.open(out / "ledger") as lg:  # resumed from a commit of the straight ledger
        assert [c.step for c in lg.log()] == [steps_per_epoch * e for e in (4, 3)]


def test_modelcheckpoint_files_resume_other_dropout_masks(job: Path) -> None:
    cut = HALF * STEPS_PER_EPOCH
    for rank in range(2):
        straight = _record(job, "straight", rank)["losses"]
        resumed = _record(job, "files", rank)["losses"]
        # Lightning's checkpoint holds no RNG: its resume draws other dropout masks
        assert resumed[0] != straight[cut] and resumed != straight[cut:]


def test_a_commit_holds_what_modelcheckpoints_file_holds(job: Path) -> None:
    with open(job / "files" / f"epoch={HALF - 1}-step={HALF * STEPS_PER_EPOCH}.ckpt", "rb") as f:
        saved = torch.load(f, weights_only=True)
    with Ledger.open(job / "straight") as lg:  # the commit and the file of the same instant
        (commit,) = [c for c in lg.log() if c.step == HALF * STEPS_PER_EPOCH]
        tree = lg.checkout(commit.id)
    for key in ("state_dict", "optimizer_states", "loops", "epoch", "global_step"):
        assert _bits(tree[key]) == _bits(saved[key]), key


def _bits(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (
            str(value.dtype),
            tuple(value.shape),
            value.contiguous().view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, dict):
        return {k: _bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bits(v) for v in value]
    return value


def test_one_process_resumes_a_two_process_commit_with_reseeded_rng(job: Path) -> None:
    url = ledger_url(job / "straight", "HEAD")
    io = LedgerCheckpointIO(job / "straight")
    before = capture_rng()["torch"]
    checkpoint = io.load_checkpoint(url)
    assert torch.equal(
        torch.get_rng_state(), before
    )  # loading sets no RNG: the callback does, later
    assert "__ranks__" not in checkpoint and "__rng__" not in checkpoint
    with Ledger.open(job / "straight") as lg:
        stored = [r["rng"]["torch"] for r in lg.checkout("HEAD", paths=["__ranks__"])["__ranks__"]]
    reseed_rng(stored, 1, 0)  # the documented rule for another number of processes
    expected = torch.get_rng_state()
    assert io.loaded_rng is not None and torch.equal(io.loaded_rng["torch"], expected)
    assert not any(torch.equal(expected, s) for s in stored)
    with fsspec.open(url, "rb") as f:  # load_from_checkpoint's reader: Lightning's own keys only
        assert "__ranks__" not in torch.load(f, weights_only=True)


# -- strategies ----------------------------------------------------------------------------------


class DeepSpeedLike(SingleDeviceStrategy):
    """Stands for a DeepSpeed strategy where DeepSpeed is not installed (it cannot be here)."""

    strategy_name = "deepspeed"


@pytest.fixture
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.usefixtures("quiet")
def test_a_deepspeed_strategy_is_refused_at_setup(tmp_path: Path) -> None:
    cb = LedgerCheckpoint(tmp_path / "lg")
    trainer = L.Trainer(
        strategy=DeepSpeedLike(device=torch.device("cpu")),
        callbacks=[cb],
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(
        AdapterError, match=r"does not support the DeepSpeed strategy \(DeepSpeedLike\)"
    ):
        trainer.fit(_job_module().Net())
    assert not (tmp_path / "lg").exists()  # refused before anything was opened
    # Lightning's own class is recognised without DeepSpeed (its __init__ needs it)
    real = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    with pytest.raises(AdapterError, match="ModelCheckpoint with DeepSpeed"):
        refuse_unsupported(real)


def test_fsdp_with_sharded_state_dicts_is_refused() -> None:
    with pytest.raises(AdapterError, match="state_dict_type='full'"):
        refuse_unsupported(FSDPStrategy(state_dict_type="sharded"))
    refuse_unsupported(FSDPStrategy())  # the default, full state dicts, is accepted


@pytest.mark.slow  # a second 2-process job: ~20 s idle
def test_a_mid_epoch_resume_gives_each_rank_its_own_loader_state(tmp_path: Path) -> None:
    """Each rank shuffles its own shard with its own generator; the resume is from step 6 of 16."""
    _two_processes(tmp_path, "ddp", "cpu", "mid-epoch")
    with Ledger.open(tmp_path / "straight") as lg:
        assert [c.step for c in lg.log()] == [15, 12, 9, 6, 3]
        ranks = lg.checkout("HEAD~3", paths=["__ranks__"])["__ranks__"]
    (first,), (second,) = (r["loaders"] for r in ranks)
    assert first["yielded"] == second["yielded"] == 2  # step 6: 2 batches into epoch 1
    assert not torch.equal(first["generator"], second["generator"])  # each rank's own order
    for rank in range(2):
        straight = _record(tmp_path, "straight", rank)["losses"]
        assert _record(tmp_path, "ledger", rank)["losses"] == straight[6:]
        assert _weights(tmp_path, "ledger", rank) == _weights(tmp_path, "straight", rank)


@pytest.mark.slow  # Lightning's launcher starts rank 1 once rank 0 has imported everything: ~1 min
def test_ddp_launched_by_lightning_from_a_script_resumes_bitwise(tmp_path: Path) -> None:
    """``strategy="ddp"`` as users run it: one command; Lightning re-runs the script as rank 1."""
    launch = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in launch}
    finish(start(JOB, tmp_path, env=env))
    _assert_resumed_bitwise(tmp_path, ranks=2, steps_per_epoch=STEPS_PER_EPOCH)


@pytest.mark.slow  # 2 fits, each spawning 2 processes that import torch and Lightning: ~1-3 min
@pytest.mark.usefixtures("quiet")
def test_ddp_spawn_commits_every_ranks_rng_and_resumes_bitwise(tmp_path: Path) -> None:
    job = _job_module()
    job.main(tmp_path, job.Where("ddp_spawn"), files=False)
    _assert_resumed_bitwise(tmp_path, ranks=2, steps_per_epoch=STEPS_PER_EPOCH)
    with Ledger.open(tmp_path / "straight") as lg:
        ranks = lg.checkout("HEAD", paths=["__ranks__"])["__ranks__"]
    for rank in range(2):
        assert (
            _digest(ranks[rank]["rng"]["torch"]) == _record(tmp_path, "straight", rank)["rng"][-1]
        )


# -- FSDP: Lightning 2.6 runs it on CUDA only ------------------------------------------------

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="Lightning's FSDP needs a CUDA device"
)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("quiet")
def test_fsdp_on_one_gpu_commits_full_state_and_resumes_bitwise(tmp_path: Path) -> None:
    """One process: the commit holds FSDP's full state dict; resuming goes through FSDP's own loader."""
    job = _job_module()
    try:
        job.main(tmp_path, job.Where("fsdp", "cuda", 1), files=True)
    finally:
        if torch.distributed.is_initialized():  # Lightning left a 1-process group in this process
            torch.distributed.destroy_process_group()
    _assert_resumed_bitwise(tmp_path, ranks=1, steps_per_epoch=2 * STEPS_PER_EPOCH)
    steps = 2 * STEPS_PER_EPOCH
    with open(tmp_path / "files" / f"epoch={HALF - 1}-step={HALF * steps}.ckpt", "rb") as f:
        saved = torch.load(f, weights_only=True)
    with Ledger.open(tmp_path / "straight") as lg:
        (commit,) = [c for c in lg.log() if c.step == HALF * steps]
        tree = lg.checkout(commit.id)
    for key in ("state_dict", "optimizer_states"):
        assert _bits(tree[key]) == _bits(saved[key]), key
    assert "cuda" in tree["__rng__"]  # the CUDA RNG (dropout on the GPU) is committed


@pytest.mark.gpu
@needs_cuda
@pytest.mark.usefixtures("quiet")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_fsdp_on_two_gpus_commits_every_rank_and_resumes_bitwise(tmp_path: Path) -> None:
    _two_processes(tmp_path, "fsdp", "cuda")
    _assert_resumed_bitwise(tmp_path, ranks=2, steps_per_epoch=STEPS_PER_EPOCH)
    with Ledger.open(tmp_path / "straight") as lg:
        assert len(lg.checkout("HEAD", paths=["__ranks__"])["__ranks__"]) == 2
