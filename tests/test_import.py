"""``ledger.interop.imports.import_path``: other tools' checkpoints become commits that resume.

Every source is written by the real framework in a temporary directory
(tests/scripts/import_sources.py): the HF Trainer with ``save_steps``,
Lightning's ``ModelCheckpoint``, ``accelerator.save_state``, ``dcp.save``,
``torch.save``, safetensors' ``save_file`` and transformers' sharded
``save_pretrained``. The resume test compares, bitwise, the Trainer's own
resume from a ``checkpoint-N`` folder with ``cb.resume`` of its import.
Bad input (refused types, truncated files, missing shards, unknown layouts)
must leave every byte of the ledger directory as it was.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from helpers import bits, flip_byte, load_script, tree_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from ledger import Ledger
from ledger.errors import LedgerError
from ledger.interop.imports import (
    ImportBranchError,
    ImportRefusedError,
    ImportSourceError,
    import_path,
)

src = load_script("import_sources")


@pytest.fixture(autouse=True)
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _model_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return dict(torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Linear(4, 2)).state_dict())


# -- the HF Trainer ------------------------------------------------------------------


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 6 planned steps that stopped after 4: checkpoint-2, checkpoint-4, final weights."""
    out = tmp_path_factory.mktemp("hf") / "gpt2-run"
    trainer = src.hf_trainer(out, max_steps=6, save_steps=2, callbacks=[src.StopAt(4)])
    trainer.train()
    trainer.save_model()  # the final weights beside the checkpoints, as scripts often do
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    return out


def test_a_trainer_output_dir_becomes_one_root_branch_of_commits_in_step_order(
    lg: Ledger, trainer_run: Path
) -> None:
    lg.commit({"w": torch.zeros(2)}, step=0)  # HEAD has a commit: the import must not hang off it
    report = import_path(lg, trainer_run)
    assert report.branch == "gpt2-run" and report.created_branch
    commits = list(lg.log("gpt2-run"))[::-1]
    assert [c.step for c in commits] == [2, 4]
    assert commits[0].parents == [] and commits[1].parents == [commits[0].id]
    assert [c.id for c in commits] == report.commits
    assert lg.current_branch == "main"  # HEAD did not move
    tip = lg.resolve("main")
    assert lg.commit({"w": torch.ones(2)}, step=1).parents == [tip]  # main continues from its tip
    state4 = lg.checkout(commits[1].id)
    ck = trainer_run / "checkpoint-4"
    assert bits(state4["model"]) == bits(load_file(ck / "model.safetensors"))
    assert bits(state4["optimizer"]) == bits(torch.load(ck / "optimizer.pt", weights_only=True))
    assert state4["trainer_state"]["global_step"] == 4
    logged = {
        k: v for e in state4["trainer_state"]["log_history"] if e["step"] == 4 for k, v in e.items()
    }
    assert commits[1].metrics["loss"] == logged["loss"] and "learning_rate" in commits[1].metrics
    assert commits[1].params["save_steps"] == 2
    info = commits[1].meta["data"]["import"]
    assert info["source"] == str(trainer_run) and info["format"] == "trainer"
    names = {name for name, _, _ in info["files"]}
    assert {"model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"} <= names
    sizes = sum((trainer_run / f"checkpoint-{s}" / n).stat().st_size for s in (2, 4) for n in names)
    assert report.source_bytes == sizes
    assert 0 < report.stored_bytes < report.source_bytes
    assert (
        report.checkpoints[0].not_carried
        and "training_args.bin" in report.checkpoints[0].not_carried[0]
    )


def test_reimporting_adds_only_new_checkpoints_and_the_default_branch_is_guarded(
    lg: Ledger, ledger_dir: Path, trainer_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "gpt2-run"
    run.mkdir()
    shutil.copytree(trainer_run / "checkpoint-2", run / "checkpoint-2")
    first = import_path(lg, run)
    assert len(first.commits) == 1
    shutil.copytree(trainer_run / "checkpoint-4", run / "checkpoint-4")  # training wrote more
    second = import_path(lg, run)
    assert [c.step for c in second.checkpoints] == [2, 4]
    assert second.checkpoints[0].skipped and second.checkpoints[0].commit == first.commits[0]
    assert len(second.commits) == 1 and not second.created_branch
    assert lg.get(second.commits[0]).parents == first.commits
    again = import_path(lg, run)
    assert again.commits == [] and again.source_bytes == 0
    # a branch of that name holding other commits is not taken over
    lg.commit({"w": torch.ones(1)}, branch="other-run")
    (tmp_path / "other-run").mkdir()
    shutil.copytree(trainer_run / "checkpoint-2", tmp_path / "other-run" / "checkpoint-2")
    before = tree_bytes(ledger_dir)
    with pytest.raises(ImportBranchError, match="other-run"):
        import_path(lg, tmp_path / "other-run")
    assert tree_bytes(ledger_dir) == before
    appended = import_path(lg, tmp_path / "other-run", branch="other-run")
    assert lg.get(appended.commits[0]).parents == [lg.get("other-run~1").id]


def test_onto_gives_the_first_commit_a_parent_and_a_new_branch_b_is_created(
    lg: Ledger, trainer_run: Path
) -> None:
    base = lg.commit({"w": torch.zeros(2)}, step=0)
    report = import_path(lg, trainer_run / "checkpoint-2", branch="ft", onto=base.id)
    assert lg.get("ft").parents == [base.id] and report.created_branch
    with pytest.raises(ImportBranchError, match="onto"):
        import_path(lg, trainer_run / "checkpoint-4", branch="ft", onto=base.id)
    import_path(lg, trainer_run / "checkpoint-4", branch="ft")
    assert [c.step for c in lg.log("ft")] == [4, 2, 0]


def test_a_ddp_checkpoint_keeps_its_ranks_rng_in_rank_order(
    lg: Ledger, trainer_run: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoint-2"
    shutil.copytree(trainer_run / "checkpoint-2", ckpt)
    one = torch.load(ckpt / "rng_state.pth", weights_only=False)
    (ckpt / "rng_state.pth").unlink()
    for rank in range(11):  # rank 10 sorts before rank 2 as text
        rng = {**one, "cpu": torch.Generator().manual_seed(rank).get_state()}
        torch.save(rng, ckpt / f"rng_state_{rank}.pth")
    lg.import_checkpoints(ckpt, branch="ddp")
    state = lg.checkout("ddp")
    want = [torch.Generator().manual_seed(r).get_state() for r in range(11)]
    assert [bits(r["torch"]) for r in state["rng_ranks"]] == [bits(w) for w in want]
    assert bits(state["__rng__"]["torch"]) == bits(want[0])
    (ckpt / "rng_state_4.pth").unlink()
    with pytest.raises(ImportSourceError, match=r"not for \[4\]"):
        lg.import_checkpoints(ckpt, branch="gap")
    assert "gap" not in lg.branches()


def test_an_imported_trainer_checkpoint_resumes_exactly_as_the_trainers_own_resume(
    lg: Ledger, trainer_run: Path, tmp_path: Path
) -> None:
    from ledger.adapters.transformers import LedgerCallback

    last = trainer_run / "checkpoint-4"
    ran_native, ran_ledger = src.CountSteps(), src.CountSteps()
    native = src.hf_trainer(tmp_path / "native", max_steps=6, save_steps=2, callbacks=[ran_native])
    native.train(resume_from_checkpoint=str(last))
    import_path(lg, last, branch="run")
    lg.switch("run")
    cb = LedgerCallback(lg, branch="resumed")
    resumed = src.hf_trainer(
        tmp_path / "ledger", max_steps=6, save_steps=2, callbacks=[cb, ran_ledger]
    )
    resumed.train(resume_from_checkpoint=cb.resume("HEAD"))
    assert ran_native.steps == ran_ledger.steps == 2  # both continued from step 4
    a, b = src.trainer_image(native, 4), src.trainer_image(resumed, 4)
    assert a["step"] == b["step"] == 6 and len(a["losses"]) == 2
    assert bits(a) == bits(b)
    assert not (tmp_path / "ledger").exists() or not any((tmp_path / "ledger").iterdir())


# -- Lightning, Accelerate, DCP, torch.save, safetensors ---------------------------------


def test_a_lightning_checkpoints_dir_becomes_commits_in_step_order(
    lg: Ledger, tmp_path: Path
) -> None:
    ckpts = src.lightning_checkpoints(tmp_path, steps=4, every=2)
    report = import_path(lg, ckpts, branch="pl")
    commits = list(lg.log("pl"))[::-1]
    assert [c.step for c in commits] == [2, 4] and commits[0].parents == []
    for commit, file in zip(commits, sorted(ckpts.glob("*.ckpt")), strict=True):
        stored = lg.checkout(commit.id)
        original = torch.load(file, weights_only=True)
        assert bits(stored["state_dict"]) == bits(original["state_dict"])
        assert bits(stored["optimizer_states"]) == bits(original["optimizer_states"])
        assert stored["global_step"] == original["global_step"] == commit.step
        assert commit.metrics["train_loss"] > 0 and commit.params["lr"] == 0.1
    assert len(report.commits) == 2
    # resuming the imported step-2 commit continues exactly as Lightning's own resume
    from ledger.adapters.lightning import LedgerCheckpointIO

    step2 = sorted(ckpts.glob("*.ckpt"))[0]
    native = src.lightning_fit(6, lr=0.5, ckpt_path=str(step2))
    resumed = src.lightning_fit(
        6, lr=0.5, ckpt_path=f"ledger:{commits[0].id}", plugins=[LedgerCheckpointIO(lg)]
    )
    fresh = src.lightning_fit(6, lr=0.5)  # what a resume that restored nothing would give
    assert bits(dict(native.state_dict())) == bits(dict(resumed.state_dict()))
    assert bits(dict(fresh.state_dict())) != bits(dict(native.state_dict()))


def test_an_accelerate_save_state_dir_uses_the_adapters_keys(lg: Ledger, tmp_path: Path) -> None:
    live = src.accelerate_state(tmp_path / "acc" / "checkpoint_3")
    import_path(lg, tmp_path / "acc", branch="acc")
    commit = lg.get("acc")
    state = lg.checkout("acc")
    assert commit.step == 3
    assert {"models", "optimizers", "schedulers", "dataloaders", "custom", "accelerator"} <= set(
        state
    )
    assert bits(state["models"][0]) == bits(live["model"])
    assert bits(state["optimizers"][0]) == bits(live["optimizer"])
    assert state["schedulers"][0]["last_epoch"] == live["scheduler"]["last_epoch"] == 2
    rng = torch.load(tmp_path / "acc" / "checkpoint_3" / "random_states_0.pkl", weights_only=False)
    assert torch.equal(state["__rng__"]["torch"], rng["torch_manual_seed"])
    # and it resumes through the adapter, into a fresh accelerator's prepared objects
    from accelerate import Accelerator

    from ledger.adapters.accelerate import load_state

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    model, opt, sched = accelerator.prepare(model, opt, sched)
    assert load_state(accelerator, lg, "acc") == commit
    assert bits(dict(accelerator.unwrap_model(model).state_dict())) == bits(live["model"])
    assert bits(opt.state_dict()) == bits(live["optimizer"])
    assert sched.state_dict()["last_epoch"] == 2


def test_a_dcp_directory_is_read_without_its_own_unpickler(lg: Ledger, tmp_path: Path) -> None:
    model = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(2, 5)).sum().backward()
    opt.step()
    saved = {"model": model.state_dict(), "optim": opt.state_dict(), "step": 11, "tag": "x"}
    dcp.save(saved, checkpoint_id=tmp_path / "dcp-run")
    import_path(lg, tmp_path / "dcp-run")
    state = lg.checkout("dcp-run")
    assert lg.get("dcp-run").step == 11
    assert bits(state["model"]) == bits(dict(model.state_dict()))
    assert bits(state["optim"]["state"]) == bits(opt.state_dict()["state"])  # int keys again
    assert state["tag"] == "x"
    restored = torch.optim.Adam(torch.nn.Linear(5, 3).parameters())
    restored.load_state_dict(state["optim"])
    assert bits(restored.state_dict()["state"]) == bits(opt.state_dict()["state"])


def test_dcp_metadata_naming_any_other_type_is_refused_and_nothing_runs(
    lg: Ledger, ledger_dir: Path, tmp_path: Path
) -> None:
    dcp.save({"w": torch.ones(3)}, checkpoint_id=tmp_path / "evil")
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(Boom()))
    before = tree_bytes(ledger_dir)
    with pytest.raises(ImportRefusedError, match="pathlib"):
        import_path(lg, tmp_path / "evil")
    assert not marker.exists() and tree_bytes(ledger_dir) == before


def test_torch_and_safetensors_files_single_and_sharded(lg: Ledger, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    weights = _model_state(1)
    torch.save({"model": weights, "step": 7, "epoch": 1}, tmp_path / "run.pt")
    save_file(weights, tmp_path / "w.safetensors")
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    gpt.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    import_path(lg, tmp_path / "run.pt", branch="files")
    import_path(lg, tmp_path / "w.safetensors", branch="files")
    report = import_path(lg, tmp_path / "sharded", branch="gpt")
    st_, pt = lg.log("files")
    assert (pt.step, pt.epoch) == (7, 1) and bits(lg.checkout(pt.id)["model"]) == bits(weights)
    assert bits(lg.checkout(st_.id)["model"]) == bits(weights)
    assert lg.get(st_.id).stats.chunks_written == 0  # the same weights: deduplicated
    expected = {
        k: v for k, v in gpt.state_dict().items() if k != "lm_head.weight"
    }  # tied: saved once
    assert bits(lg.checkout("gpt")["model"]) == bits(expected)
    assert report.checkpoints[0].format == "sharded"


# -- refused and bad input ---------------------------------------------------------------------


def test_a_refused_type_is_named_with_how_to_allow_it_and_allowing_it_works(
    lg: Ledger, ledger_dir: Path, tmp_path: Path
) -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    torch.save({"features": array, "w": torch.ones(2)}, tmp_path / "np.pt")
    before = tree_bytes(ledger_dir)
    allow: list[str] = []
    for _ in range(6):  # follow the error's own advice, one type at a time
        try:
            report = import_path(lg, tmp_path / "np.pt", branch="np", allow=allow)
            break
        except ImportRefusedError as e:
            assert str(tmp_path / "np.pt") in str(e) and f"--allow {e.type}" in str(e)
            assert tree_bytes(ledger_dir) == before
            allow.append(e.type)
    else:
        pytest.fail(f"still refused after allowing {allow}")
    assert allow and allow[0].startswith("numpy")
    assert np.array_equal(lg.checkout(report.commits[0])["features"], array)


def test_no_fallback_to_unpickling(lg: Ledger, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self) -> Any:
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Boom()}, tmp_path / "evil.pt")
    with pytest.raises(ImportRefusedError, match=r"system.*blocks outright"):
        import_path(lg, tmp_path / "evil.pt")
    assert not marker.exists() and lg.branches() == {}


def test_missing_shards_unknown_layouts_and_bad_allow_names_leave_the_ledger_unchanged(
    lg: Ledger, ledger_dir: Path, tmp_path: Path
) -> None:
    lg.commit({"w": torch.zeros(2)})
    before = tree_bytes(ledger_dir)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"metadata": {}, "weight_map": {"w": "model-00001-of-00002.safetensors"}}')
    with pytest.raises(ImportSourceError, match=r"model-00001-of-00002\.safetensors.*missing"):
        import_path(lg, index)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(ImportSourceError, match="no checkpoint layout"):
        import_path(lg, tmp_path / "notes")
    with pytest.raises(ImportSourceError, match="does not exist"):
        import_path(lg, tmp_path / "nowhere")
    torch.save({"w": torch.ones(1)}, tmp_path / "ok.pt")
    with pytest.raises(ImportSourceError, match=r"module\.Type"):
        import_path(lg, tmp_path / "ok.pt", allow=["NoSuchThing"])
    assert tree_bytes(ledger_dir) == before


def test_one_bad_checkpoint_among_many_commits_none(
    lg: Ledger, ledger_dir: Path, trainer_run: Path, tmp_path: Path
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trainer_run, run)
    opt = run / "checkpoint-4" / "optimizer.pt"
    opt.write_bytes(opt.read_bytes()[:-100])
    before = tree_bytes(ledger_dir)
    with pytest.raises(ImportSourceError, match=r"optimizer\.pt"):
        import_path(lg, run)
    assert tree_bytes(ledger_dir) == before


_FILES: dict[str, bytes] = {}


def _source_files(tmp: Path) -> dict[str, bytes]:
    if not _FILES:
        torch.save({"model": _model_state(2), "step": 1}, tmp / "a.pt")
        save_file(_model_state(3), tmp / "a.safetensors")
        dcp.save({"w": torch.arange(10.0)}, checkpoint_id=tmp / "d")
        for p in (tmp / "a.pt", tmp / "a.safetensors", tmp / "d" / ".metadata"):
            _FILES[p.name] = p.read_bytes()
        _FILES["__0_0.distcp"] = (tmp / "d" / "__0_0.distcp").read_bytes()
    return _FILES


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.sampled_from(["a.pt", "a.safetensors", ".metadata", "__0_0.distcp"]),
    cut=st.floats(0, 1),
)
def test_a_file_truncated_anywhere_is_an_error_and_changes_nothing(
    lg: Ledger, ledger_dir: Path, tmp_path_factory: pytest.TempPathFactory, which: str, cut: float
) -> None:
    files = _source_files(tmp_path_factory.mktemp("whole"))
    tmp = tmp_path_factory.mktemp("cut")
    data = files[which]
    at = min(int(cut * len(data)), len(data) - 1)
    if which in (".metadata", "__0_0.distcp"):
        (tmp / "d").mkdir()
        for name in (".metadata", "__0_0.distcp"):
            (tmp / "d" / name).write_bytes(files[name][:at] if name == which else files[name])
        target = tmp / "d"
    else:
        target = tmp / which
        target.write_bytes(data[:at])
    before = tree_bytes(ledger_dir)
    with pytest.raises(LedgerError):
        import_path(lg, target, branch="cut")
    assert tree_bytes(ledger_dir) == before


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.sampled_from(["header", "index"]), where=st.integers(0, 1 << 16))
def test_a_flipped_byte_in_a_safetensors_header_or_a_shard_index_is_an_error(
    lg: Ledger,
    ledger_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    which: str,
    where: int,
) -> None:
    import struct

    tmp = tmp_path_factory.mktemp("flip")
    weights = _model_state(4)
    shards = {"model-00001-of-00002.safetensors": ["0.weight", "0.bias"],
              "model-00002-of-00002.safetensors": ["1.weight", "1.bias"]}  # fmt: skip
    for shard, names in shards.items():
        save_file({n: weights[n] for n in names}, tmp / shard)
    index = tmp / "model.safetensors.index.json"
    weight_map = {n: shard for shard, names in shards.items() for n in names}
    index.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    if which == "header":
        target = tmp / "model-00002-of-00002.safetensors"
        data = target.read_bytes()
        at = where % (8 + struct.unpack("<Q", data[:8])[0])
    else:
        target = index
        at = where % index.stat().st_size
    flip_byte(target, at)  # every byte of these is structure: a flip must be noticed
    before = tree_bytes(ledger_dir)
    with pytest.raises(LedgerError):
        import_path(lg, index, branch="flip")
    assert tree_bytes(ledger_dir) == before


def test_config_and_tokenizer_files_are_stored_as_file_objects(
    lg: Ledger, trainer_run: Path, tmp_path: Path
) -> None:
    files = pytest.importorskip("ledger.state.files")  # file objects in the manifest (export work)
    import_path(lg, trainer_run / "checkpoint-4", branch="hf")
    stored = lg.checkout("hf")["hf_files"]
    ck = trainer_run / "checkpoint-4"
    assert {"config.json", "generation_config.json"} <= set(stored)
    for name, value in stored.items():
        assert isinstance(value, files.File) and value.data == (ck / name).read_bytes()
    assert not {"trainer_state.json", "optimizer.pt", "model.safetensors"} & set(stored)


@pytest.mark.parametrize("fmt", ["torch", "dcp", "hf"])
def test_importing_an_export_gives_back_the_commit_bitwise(
    lg: Ledger, tmp_path: Path, fmt: str
) -> None:
    export = pytest.importorskip("ledger.interop.export")  # the export work
    if fmt == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        gpt = GPT2LMHeadModel(
            GPT2Config(vocab_size=32, n_positions=8, n_embd=8, n_layer=1, n_head=2)
        )
        files = pytest.importorskip("ledger.adapters._hf_files").hf_files(gpt)
        state: dict[str, Any] = {"model": dict(gpt.state_dict()), "hf_files": files}
    else:
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.Adam(model.parameters())
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
        state = {"model": dict(model.state_dict()), "optimizer": opt.state_dict(), "step": 3}
    commit = lg.commit(state, rng=False)
    out = tmp_path / ("exported.pt" if fmt == "torch" else "exported")
    export.export_commit(lg, commit.id, fmt, out)
    report = import_path(lg, out, branch="back")
    back = lg.checkout(report.commits[0])
    if fmt == "hf":
        assert bits(back["model"]) == bits(state["model"])
        assert {n: f.data for n, f in back["hf_files"].items()} == {
            n: f.data for n, f in files.items()
        }
    else:
        assert bits(back) == bits(lg.checkout(commit.id))
