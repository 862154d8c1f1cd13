"""``ledger.adapters.transformers.LedgerCallback``: the HF Trainer commits into a ledger and resumes from it.

The exact-resume test trains a tiny GPT-2 (from a config; no downloads) for
8 steps straight and for 4 steps + resume in a new process + 4
(tests/scripts/adapter_hf_train.py: dropout, shuffled sampler, AdamW with
warm-up and linear decay, tied embeddings, evaluation every 4 steps) and
compares parameters, optimizer and scheduler state and the logged losses
bitwise. The Trainer's output directory stays empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import SCRIPTS, finish, load_script, start, start_ready
from safetensors.torch import load_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
)
from transformers.trainer_pt_utils import safe_globals

from ledger import Ledger
from ledger.adapters._common import AdapterError, MissingExtraError, ResumeError
from ledger.adapters.transformers import LedgerCallback
from ledger.errors import CommitExpiredError, RevisionNotFoundError

os.environ["HF_HUB_OFFLINE"] = "1"
TRAIN = SCRIPTS / "adapter_hf_train.py"


util = load_script("adapter_util")


def _train(tmp: Path, run: str, *argv: str) -> subprocess.Popen[str]:
    return start(TRAIN, tmp / run, tmp / f"{run}-out", *argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 steps straight (ledger a); 4 steps, then a new process resuming to 8 (ledger b)."""

    def build(tmp: Path) -> None:
        straight = _train(tmp, "a", "8", str(tmp / "a"))
        first = _train(tmp, "b", "8", str(tmp / "b-half"), "4")
        finish(straight)
        finish(first)
        finish(_train(tmp, "b", "8", str(tmp / "b")))

    tmp = util.shared_dir(tmp_path_factory, "hf", build)
    return tmp


def test_four_steps_plus_resume_in_a_new_process_equals_eight_straight(runs: Path) -> None:
    straight, resumed = util.load_image(runs / "a"), util.load_image(runs / "b")
    assert resumed["tensors"] == straight["tensors"]  # parameters and AdamW moments
    assert resumed["plain"] == straight["plain"]  # LR schedule, step, losses of steps 5..8
    assert util.load_image(runs / "b-half")["tensors"] != straight["tensors"]


def test_the_trainer_writes_no_checkpoint_of_its_own(runs: Path) -> None:
    assert list((runs / "a-out").iterdir()) == []
    assert list((runs / "b-out").iterdir()) == []


def test_save_steps_commit_with_logged_metrics_and_arguments(runs: Path) -> None:
    with Ledger.open(runs / "b") as lg:
        log = list(lg.log())
        assert [c.step for c in log] == [8, 4]
        assert all({"loss", "eval_loss", "learning_rate"} <= c.metrics.keys() for c in log)
        assert log[0].params["learning_rate"] == 5e-3 and log[0].params["max_steps"] == 8
        assert lg.retention() == []  # the Trainer's rotation is applied by expiry, not a policy
        assert all(lg.show(c.id).expired is None for c in log)  # 2 saves, save_total_limit=2
        best = min(log, key=lambda c: c.metrics["eval_loss"])
        assert lg.resolve("best") == best.id
        head = lg.checkout("HEAD")
        assert sorted(head) == [
            "__rng__",
            "hf_files",
            "model",
            "optimizer",
            "scheduler",
            "trainer_state",
        ]
        # the model's own files, as the Trainer's checkpoint folder holds them
        config = json.loads(head["hf_files"]["config.json"].data)
        assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]


def test_resume_writes_the_trainer_layout_loadable_without_pickle(runs: Path) -> None:
    cb = LedgerCallback(runs / "b")
    path = cb.resume("HEAD")
    assert path is not None and Path(path).name == "checkpoint-8"
    files = sorted(p.name for p in Path(path).iterdir())
    assert files == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "optimizer.pt",
        "rng_state.pth",
        "scheduler.pt",
        "trainer_state.json",
    ]
    weights = load_file(str(Path(path) / "model.safetensors"))
    assert weights["lm_head.weight"].equal(weights["transformer.wte.weight"])  # tied, both named
    optimizer = torch.load(Path(path) / "optimizer.pt", weights_only=True)
    assert {"state", "param_groups"} <= optimizer.keys()
    torch.load(Path(path) / "scheduler.pt", weights_only=True)
    with safe_globals():  # the Trainer loads its RNG file this way
        rng = torch.load(Path(path) / "rng_state.pth", weights_only=True)
    assert {"python", "numpy", "cpu"} <= rng.keys()
    assert json.loads((Path(path) / "trainer_state.json").read_text())["global_step"] == 8
    cb._cleanup()
    assert not Path(path).exists()


# -- in-process checks ------------------------------------------------------------------


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int) -> None:
        self.ids = torch.randint(0, 32, (n, 8), generator=torch.Generator().manual_seed(n))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _trainer(cb: LedgerCallback, out: Path, **kw: Any) -> Trainer:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2))
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        **kw,
    )
    return Trainer(
        model=model, args=args, train_dataset=Tokens(16), eval_dataset=Tokens(4), callbacks=[cb]
    )


def test_resume_is_none_on_an_empty_ledger_and_an_error_for_unknown_names(
    lg: Ledger, tmp_path: Path
) -> None:
    cb = LedgerCallback(lg)
    assert cb.resume("HEAD") is None
    _trainer(cb, tmp_path / "out", max_steps=2, save_steps=2).train()
    assert lg.head is not None and lg.head.step == 2
    with pytest.raises(RevisionNotFoundError):
        cb.resume("nope")


def test_a_commit_not_made_by_the_callback_is_refused(lg: Ledger) -> None:
    lg.commit({"w": torch.zeros(1)})
    with pytest.raises(ResumeError, match="not made by LedgerCallback"):
        LedgerCallback(lg).resume("HEAD")


def test_save_strategy_best_commits_only_new_bests_and_best_model_is_loaded_at_end(
    lg: Ledger, tmp_path: Path
) -> None:
    cb = LedgerCallback(lg)
    trainer = _trainer(
        cb,
        tmp_path / "out",
        max_steps=8,
        learning_rate=0.05,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="best",
        metric_for_best_model="loss",
        load_best_model_at_end=True,
    )
    trainer.train()
    log = list(lg.log())
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    running, improving = float("inf"), []
    for e in evals:
        if e["eval_loss"] < running:
            running = e["eval_loss"]
            improving.append(e["step"])
    assert sorted(c.step for c in log) == improving
    assert lg.resolve("best") == log[0].id
    best = lg.checkout("best", paths=["model"])["model"]
    live = trainer.model.state_dict()
    assert all(live[k].equal(v) for k, v in best.items())
    with torch.no_grad():  # the end-of-training load really comes from the best commit
        trainer.model.lm_head.weight.add_(1.0)
    trainer._load_best_model()  # the Trainer's own call at the end of train(), now the ledger's
    assert trainer.model.lm_head.weight.equal(best["lm_head.weight"])


def test_importing_without_transformers_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n    import ledger.adapters.transformers\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert MissingExtraError.__name__ in out.stdout
    assert "pip install 'training-ledger[transformers]'" in out.stdout


# -- resume folders survive no crash; lineage; best; free_space ----------------------------

HOLD = SCRIPTS / "adapter_hf_resume_hold.py"


def _trained(lg: Ledger, out: Path, **kw: Any) -> Trainer:
    trainer = _trainer(LedgerCallback(lg), out, max_steps=4, save_steps=2, **kw)
    trainer.train()
    return trainer


@pytest.fixture
def tmp(lg: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ledger with two commits of ``LedgerCallback``; ``tempfile`` writes into the returned folder."""
    _trained(lg, tmp_path / "out")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


def test_a_resume_folder_left_by_a_killed_process_is_removed_at_the_next_start(
    lg: Ledger, tmp: Path
) -> None:
    alive = LedgerCallback(lg)  # this process holds its folder's lock
    live = alive.resume("HEAD")
    assert live is not None
    killed = start_ready(HOLD, lg.root, env={**os.environ, "TMPDIR": str(tmp)})
    try:
        assert killed.stdout is not None
        dead_dir = Path(killed.stdout.readline().strip()).parent
        assert (dead_dir / "checkpoint-4" / "model.safetensors").is_file()  # a full copy
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=60)
        assert dead_dir.exists()  # SIGKILL runs no cleanup
        cb = LedgerCallback(lg)
        mine = cb.resume("HEAD")  # the next start
        assert mine is not None and Path(mine).is_dir()
        assert not dead_dir.exists()
        assert Path(live).is_dir()  # a live process's folder is never touched
        cb._cleanup()
        alive._cleanup()
        assert not Path(mine).exists() and not Path(live).exists()
    finally:
        killed.kill()
        killed.communicate(timeout=60)


def test_a_linked_resume_root_is_refused(lg: Ledger, tmp: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp / f"ledger-hf-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(AdapterError, match="not a folder of this user"):
        LedgerCallback(lg).resume("HEAD")
    assert list(elsewhere.iterdir()) == []


def test_resuming_an_earlier_commit_makes_it_the_next_commits_parent(
    lg: Ledger, tmp_path: Path
) -> None:
    if not hasattr(Ledger, "base_on"):
        pytest.skip("Ledger.base_on (branch lineage) is not merged yet")
    _trained(lg, tmp_path / "out")
    step2 = next(c for c in lg.log() if c.step == 2)
    old_tip = lg.head
    assert old_tip is not None and old_tip.step == 4
    cb = LedgerCallback(lg)
    trainer = _trainer(cb, tmp_path / "out", max_steps=4, save_steps=2)
    trainer.train(resume_from_checkpoint=cb.resume(step2.id))
    new_tip = lg.head
    assert new_tip is not None and new_tip.step == 4 and new_tip.id != old_tip.id
    assert new_tip.parents == [step2.id]
    assert any(tip == old_tip.id for tip in lg.branches().values())  # nothing unreachable


def test_resume_takes_best_model_checkpoint_and_keeps_it_across_the_resume(
    lg: Ledger, tmp_path: Path
) -> None:
    kw: dict[str, Any] = dict(eval_strategy="steps", eval_steps=2, metric_for_best_model="loss")
    first = _trained(lg, tmp_path / "out", learning_rate=0.05, **kw)
    best = first.state.best_model_checkpoint
    assert best is not None and best == str(
        tmp_path / "out" / f"checkpoint-{first.state.best_global_step}"
    )
    cb = LedgerCallback(lg)
    path = cb.resume(best)  # the Trainer's path names the commit at that step
    assert path is not None and Path(path).name == Path(best).name
    assert lg.resolve("best") == next(
        c.id for c in lg.log() if c.step == first.state.best_global_step
    )
    cb._cleanup()
    cb = LedgerCallback(lg)
    trainer = _trainer(cb, tmp_path / "out", max_steps=6, save_steps=2, learning_rate=0.05, **kw)
    seen: list[str | None] = []

    class Spy(TrainerCallback):
        def on_train_begin(self, args: Any, state: TrainerState, control: Any, **k: Any) -> None:
            seen.append(state.best_model_checkpoint)

    trainer.add_callback(Spy())
    folder = cb.resume("HEAD")
    assert folder is not None
    trainer.train(resume_from_checkpoint=folder)
    assert seen == [best]  # the Trainer alone drops it: its folder does not exist
    assert not Path(folder).exists()  # removed once the Trainer had loaded it


def test_free_space_false_leaves_the_bytes_to_the_next_gc(lg: Ledger, tmp_path: Path) -> None:
    cb = LedgerCallback(lg, free_space=False)
    _trainer(cb, tmp_path / "out", max_steps=6, save_steps=2, save_total_limit=1).train()
    expired = [c for c in lg.log() if lg.show(c.id).expired is not None]
    assert [c.step for c in expired] == [4, 2]
    assert lg.gc(grace=0, dry_run=True).bytes_freed > 0
    lg.gc(grace=0)
    with pytest.raises(CommitExpiredError):
        lg.checkout(expired[0].id)
    assert lg.checkout("HEAD")["trainer_state"]["global_step"] == 6
