"""``ledger.adapters.accelerate``: save_state/load_state of everything an Accelerator tracks.

A two-process gloo job (tests/scripts/adapter_accelerate_ddp.py) commits
once, and each process gets its own RNG back. The exact-resume test
(tests/scripts/adapter_accelerate_train.py) trains 30
batches straight and 14 + resume in a new process + 16: dropout, a shuffled
stateful loader resumed mid-epoch, gradient accumulation, AdamW, StepLR and
an object registered for checkpointing; parameters, optimizer, scheduler,
the registered object, the accelerator's step and the losses after the
resume point are bitwise equal.

With ``ProjectConfiguration(automatic_checkpoint_naming=True)``: the ledger
under the project directory, commits numbered by ``iteration``,
``total_limit`` as ``KeepLast`` freed after every save (one process, and a
two-process gloo job, tests/scripts/adapter_accelerate_project.py), the
numbering after a resume, and the parent of a save after resuming an older
commit (lineage).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import ProjectConfiguration
from helpers import SCRIPTS, dir_bytes, finish, load_script, start
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import Ledger
from ledger.adapters._common import AdapterError, MissingExtraError, ResumeError
from ledger.adapters.accelerate import LEDGER_FOLDER, load_state, save_state
from ledger.errors import CommitExpiredError, RevisionNotFoundError, StateMismatchError
from ledger.retention import KeepLast

TRAIN = SCRIPTS / "adapter_accelerate_train.py"


util = load_script("adapter_util")


def _train(tmp: Path, run: str, *argv: str) -> subprocess.Popen[str]:
    return start(TRAIN, tmp / run, *argv)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 batches straight (ledger a); 14, then a new process resuming to 30 (ledger b)."""

    def build(tmp: Path) -> None:
        straight = _train(tmp, "a", "30", str(tmp / "a"))
        first = _train(tmp, "b", "30", str(tmp / "b-half"), "14")
        finish(straight)
        finish(first)
        finish(_train(tmp, "b", "30", str(tmp / "b")))

    tmp = util.shared_dir(tmp_path_factory, "accelerate", build)
    return tmp


def test_resume_in_a_new_process_mid_epoch_equals_a_straight_run(runs: Path) -> None:
    straight, resumed = util.load_image(runs / "a"), util.load_image(runs / "b")
    assert resumed["tensors"] == straight["tensors"]
    assert resumed["plain"] == straight["plain"]
    assert len(straight["plain"]) > 30  # losses of batches 15..30 are part of the comparison


def test_the_commit_holds_every_tracked_object_and_the_data_position(runs: Path) -> None:
    with Ledger.open(runs / "b") as lg:
        commits = list(lg.log())
        assert len(commits) == 1 and commits[0].step == 14 and "loss" in commits[0].metrics
        tree = lg.checkout(commits[0].id)
        assert sorted(tree) == [
            "__rng__",
            "accelerator",
            "custom",
            "dataloaders",
            "models",
            "optimizers",
            "schedulers",
        ]
        position = tree["dataloaders"][0]
        assert position["iteration"] == 1  # the second epoch ...
        assert position["stateful"]["_num_yielded"] == 4  # ... 4 batches in
        assert position["sampler"] == {"epoch": 1, "initial_seed": 0}
        assert tree["custom"][0]["count"] == 14


# -- in-process --------------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]


def _prepared(seed: int) -> tuple[Accelerator, nn.Module, torch.optim.Optimizer, Counter]:
    torch.manual_seed(seed)
    accelerator = Accelerator(cpu=True)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loader = DataLoader(TensorDataset(torch.randn(8, 3)), batch_size=2, shuffle=True)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    counter = Counter()
    accelerator.register_for_checkpointing(counter)
    return accelerator, model, opt, counter


def test_registered_objects_models_and_grad_scaler_round_trip(lg: Ledger) -> None:
    accelerator, model, opt, counter = _prepared(0)
    counter.n = 7
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=3)
    saved_scaler = accelerator.scaler.state_dict()
    commit = save_state(accelerator, lg, step=5, metrics={"loss": torch.tensor(0.25)})
    assert commit is not None and commit.metrics == {"loss": 0.25}

    model(torch.ones(1, 3)).sum().backward()
    opt.step()  # momentum buffers to carry over
    commit = save_state(accelerator, lg, step=6)
    again, model2, opt2, counter2 = _prepared(1)
    again.scaler = torch.amp.GradScaler("cpu", init_scale=2.0)
    restored = load_state(again, lg)
    assert restored is not None and restored.step == 6
    assert counter2.n == 7
    assert util.bits(model2.state_dict()) == util.bits(model.state_dict())
    assert util.bits(opt2.state_dict()) == util.bits(opt.state_dict())
    assert again.scaler.state_dict() == saved_scaler


def test_load_state_is_none_on_an_empty_ledger_and_an_error_for_unknown_names(lg: Ledger) -> None:
    accelerator, *_ = _prepared(0)
    assert load_state(accelerator, lg) is None
    save_state(accelerator, lg)
    with pytest.raises(RevisionNotFoundError):
        load_state(accelerator, lg, "nope")


def test_a_commit_not_made_by_save_state_is_refused(lg: Ledger) -> None:
    lg.commit({"w": torch.zeros(1)})
    accelerator, *_ = _prepared(0)
    with pytest.raises(ResumeError, match="not made by"):
        load_state(accelerator, lg)


def test_different_registered_objects_change_nothing(lg: Ledger) -> None:
    accelerator, *_ = _prepared(0)
    save_state(accelerator, lg)
    other, model, _, _ = _prepared(1)
    other.register_for_checkpointing(Counter())  # one more than was committed
    before = util.bits(model.state_dict())
    with pytest.raises(StateMismatchError):
        load_state(other, lg)
    assert util.bits(model.state_dict()) == before


def test_saving_mid_accumulation_warns(lg: Ledger) -> None:
    # Accelerate keeps its state in process-wide singletons; a Trainer test run before this
    # one in the same process leaves gradient_accumulation_steps=1 behind, and then the
    # accumulate() block below would sync at once and nothing would be mid-accumulation.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model = accelerator.prepare(nn.Linear(2, 1))
    with accelerator.accumulate(model):
        model(torch.ones(1, 2)).sum().backward()
    with pytest.warns(UserWarning, match="gradient accumulation"):
        save_state(accelerator, lg)


# -- ProjectConfiguration: the project ledger, numbering, total_limit --------------------


def _project(tmp: Path, **config: Any) -> tuple[Accelerator, nn.Module]:
    """A fresh Accelerator with automatic naming in ``tmp`` (Accelerate's singletons reset)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()  # an earlier test may have left it mid-accumulation
    torch.manual_seed(0)
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(tmp), automatic_checkpoint_naming=True, **config
        ),
    )
    return accelerator, accelerator.prepare(nn.Linear(128, 128))


def _change(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))  # every save has new bytes to store


def test_automatic_naming_commits_to_the_project_ledger_numbered_by_iteration(
    tmp_path: Path,
) -> None:
    accelerator, _ = _project(tmp_path, iteration=3)
    steps = [save_state(accelerator).step for _ in range(2)]  # type: ignore[union-attr]
    assert steps == [3, 4]  # as Accelerate names checkpoint_3, checkpoint_4
    assert accelerator.project_configuration.iteration == 5
    assert save_state(accelerator, step=40).step == 40  # type: ignore[union-attr]
    assert accelerator.project_configuration.iteration == 6  # every save counts, as upstream
    assert sorted(os.listdir(tmp_path)) == [LEDGER_FOLDER]
    with Ledger.open(tmp_path / LEDGER_FOLDER) as lg:
        assert [c.step for c in lg.log()] == [40, 4, 3]
        assert lg.retention() == []  # no total_limit: nothing is ever expired


def test_without_automatic_naming_save_state_needs_a_ledger(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True, project_dir=str(tmp_path))
    with pytest.raises(AdapterError, match="automatic_checkpoint_naming=True"):
        save_state(accelerator)
    with pytest.raises(AdapterError, match="pass a ledger directory"):
        load_state(accelerator)
    assert os.listdir(tmp_path) == []


def test_total_limit_frees_what_it_expired_after_every_save(tmp_path: Path) -> None:
    accelerator, model = _project(tmp_path, total_limit=2)
    objects = tmp_path / LEDGER_FOLDER / "objects"
    sizes = []
    for _ in range(5):
        _change(model)
        save_state(accelerator)
        sizes.append(dir_bytes(objects))
    assert max(sizes[2:]) < 1.2 * sizes[1]  # two states on disk, never more
    with Ledger.open(tmp_path / LEDGER_FOLDER) as lg:
        log = list(lg.log())
        assert [c.step for c in log] == [4, 3, 2, 1, 0]
        assert set(lg.refs.state().expired) == {c.id for c in log[2:]}
        freeable = lg.gc(dry_run=True, grace=0)
        assert freeable.objects_freed == 0 and not freeable.expired
        with pytest.raises(CommitExpiredError):
            lg.checkout(log[2].id)


def test_free_space_false_leaves_the_bytes_to_a_later_gc(tmp_path: Path) -> None:
    accelerator, model = _project(tmp_path, total_limit=1)
    for _ in range(3):
        _change(model)
        save_state(accelerator, free_space=False)
    with Ledger.open(tmp_path / LEDGER_FOLDER) as lg:
        assert lg.retention() == [KeepLast(1)]  # installed all the same
        assert lg.refs.state().expired == {}
        report = lg.gc(grace=0)
        assert len(report.expired) == 2 and report.bytes_freed > 0


def test_load_state_continues_the_numbering_of_the_commit_it_loaded(tmp_path: Path) -> None:
    accelerator, _ = _project(tmp_path)
    for _ in range(3):
        save_state(accelerator)
    restarted, _ = _project(tmp_path)  # a new run that forgot ProjectConfiguration(iteration=3)
    loaded = load_state(restarted)
    assert loaded is not None and loaded.step == 2
    assert restarted.project_configuration.iteration == 3
    ahead, _ = _project(tmp_path, iteration=10)  # never lowered
    load_state(ahead)
    assert ahead.project_configuration.iteration == 10


def test_resuming_an_older_commit_makes_it_the_parent_of_the_next_save(tmp_path: Path) -> None:
    accelerator, model = _project(tmp_path)
    commits = [save_state(accelerator) for _ in range(3)]
    assert all(c is not None for c in commits)
    first, _, tip = (c.id for c in commits if c is not None)
    assert load_state(accelerator, rev=first) is not None
    _change(model)
    forked = save_state(accelerator)
    assert forked is not None and forked.parents == [first] and forked.step == 3
    with Ledger.open(tmp_path / LEDGER_FOLDER) as lg:
        assert lg.resolve("HEAD") == forked.id
        assert tip in lg.branches().values()  # the old tip stays on a branch


def test_importing_without_accelerate_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['accelerate'] = None\n"
        "try:\n    import ledger.adapters.accelerate\n"
        "except ImportError as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert MissingExtraError.__name__ in out.stdout
    assert "pip install 'training-ledger[accelerate]'" in out.stdout


def _two_processes(script: str, *args: Path) -> None:
    """Run ``tests/scripts/<script>`` as the 2 processes of a gloo job; both must exit 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [
        start(
            SCRIPTS / script,
            *args,
            env={
                **os.environ,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
            },
        )
        for rank in range(2)
    ]
    for proc in procs:
        finish(proc)


@pytest.mark.parametrize("mode", ["blocking", "async"])
def test_two_processes_commit_once_and_each_gets_its_own_rng_back(
    tmp_path: Path, mode: str
) -> None:
    _two_processes("adapter_accelerate_ddp.py", tmp_path / "lg", tmp_path, Path(mode))
    saved = [util.load_image(tmp_path / f"rank{r}-saved") for r in range(2)]
    assert saved[0] != saved[1]  # each process's own RNG stream
    for rank in range(2):
        assert util.load_image(tmp_path / f"rank{rank}") == saved[rank]
    with Ledger.open(tmp_path / "lg") as lg:
        assert len(list(lg.log())) == 1
        assert lg.checkout("HEAD", paths=["world_size"])["world_size"] == 2


def test_two_processes_number_commits_by_iteration_keep_the_total_limit_and_fork(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    _two_processes("adapter_accelerate_project.py", project, tmp_path)
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert seen[0] == seen[1]  # one commit per save, the same on both processes
    assert seen[0]["steps"] == [0, 1, 2]  # checkpoint_0, checkpoint_1, checkpoint_2
    assert seen[0]["iterations"] == [1, 2, 3]
    ids = seen[0]["ids"]
    assert seen[0]["loaded"] == [ids[2]]  # load_state() with no folder: the newest
    fork, fork_step, fork_parents = seen[0]["forked"]
    assert fork_step == 3 and fork_parents == [ids[1]]  # resumed from the second commit
    assert sorted(os.listdir(project)) == [LEDGER_FOLDER]
    with Ledger.open(project / LEDGER_FOLDER) as lg:
        assert [c.id for c in lg.log()] == [fork, ids[1], ids[0]]
        assert ids[2] in lg.branches().values()  # the old tip, on its automatic branch
        assert lg.checkout("HEAD", paths=["world_size"])["world_size"] == 2
        assert lg.retention() == [KeepLast(2)]
        assert set(lg.refs.state().expired) == {ids[0]}  # a branch head keeps its state
        with pytest.raises(CommitExpiredError):
            lg.checkout(ids[0])
        freeable = lg.gc(dry_run=True, grace=0)  # the main process freed it already
        assert freeable.objects_freed == 0 and not freeable.expired


class _EngineAccelerator(Accelerator):
    """An accelerator that reports another strategy, as Accelerate does once its plugin is set."""

    kind: str | None = None  # until set: the real one (prepare looks at it)

    @property
    def distributed_type(self) -> Any:
        from accelerate.utils import DistributedType

        return DistributedType(self.kind) if self.kind else super().distributed_type


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP", "MEGATRON_LM", "XLA"])
def test_engines_whose_state_is_their_own_are_refused_and_nothing_is_written(
    lg: Ledger, kind: str
) -> None:
    accelerator = _EngineAccelerator(cpu=True)
    model = accelerator.prepare(nn.Linear(2, 1))
    accelerator.kind = kind
    with pytest.raises(AdapterError, match=f"distributed_type {kind}.*accelerator.save_state"):
        save_state(accelerator, lg, step=1)
    with pytest.raises(AdapterError, match=f"distributed_type {kind}.*accelerator.load_state"):
        load_state(accelerator, lg)
    assert list(lg.log()) == [] and model.weight.shape == (1, 2)


def test_a_background_save_holds_the_state_of_the_call_and_frees_space_at_the_next(
    tmp_path: Path,
) -> None:
    accelerator = Accelerator(
        cpu=True,
        project_config=ProjectConfiguration(
            project_dir=str(tmp_path), automatic_checkpoint_naming=True, total_limit=1
        ),
    )
    model = accelerator.prepare(nn.Linear(64, 64))
    handles = []
    for i in range(3):
        with torch.no_grad():
            model.weight.fill_(float(i))
        handles.append(save_state(accelerator, blocking=False))
        with torch.no_grad():
            model.weight.fill_(-1.0)  # after the call: not in the commit
    commits = [h.result() for h in handles]
    with Ledger.open(tmp_path / LEDGER_FOLDER) as lg:
        assert [c.step for c in lg.log()] == [2, 1, 0]
        assert lg.checkout(commits[2].id)["models"][0]["weight"].eq(2.0).all()
        # the second and third saves freed what KeepLast(1) expired before them: commit 0's
        # state is gone, commit 1's stays until the next save (or a gc)
        assert lg.show(commits[0].id).expired and not lg.show(commits[1].id).expired
    loaded = load_state(accelerator)
    assert loaded is not None and loaded.id == commits[2].id
    assert model.weight.eq(2.0).all()
