"""``release``: a commit as a plain Hub model repo commit, loaded by the real ``from_pretrained``.

Everything goes through the real ``huggingface_hub`` client and the real
``transformers.AutoModelForCausalLM.from_pretrained`` against the fake Hub on
127.0.0.1 (tests/servers/hub.py), with a tiny GPT-2 built from its config:
outputs identical to the committed model's, only changed files uploaded again
(counted on the server, both upload paths), tags that never move, the branch a
ledger remote pushes to refused, and repos private unless asked otherwise.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import run_cli
from servers.hub import FakeHub, hub_fixture
from servers.training import new_ledger

from ledger import File, Ledger
from ledger.adapters._hf_files import hf_files
from ledger.errors import ExportError, RefNameError, RemoteError, RemoteURLError
from ledger.remotes.release import ReleaseConflictError, release

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "org/tiny-gpt2"
URL = f"hf://{REPO}"
hub = hub_fixture()


def gpt2(seed: int = 0) -> Any:
    """A 2-layer GPT-2 with 32-wide embeddings, built from its config (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        vocab_size=64,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def hf_state(model: Any, **extra: bytes) -> dict[str, Any]:
    """The state the Transformers adapter commits: the model and its ``save_pretrained`` files."""
    files = {**hf_files(model), **{k: File(v) for k, v in extra.items()}}
    return {"model": model, "hf_files": files, "epoch": 1}


def commit(lg: Ledger, model: Any, step: int, **extra: bytes) -> str:
    c = lg.commit(
        hf_state(model, **extra),
        step=step,
        metrics={"loss": 2.5 / step},
        params={"lr": 1e-3, "base_model": "openai-community/gpt2"},
        data={"dataset": "wikitext", "revision": "r1"},
    )
    return c.id


def fine_tune(model: Any) -> None:
    """Change one weight matrix (the others keep their bytes)."""
    with torch.no_grad():
        model.transformer.h[1].mlp.c_proj.weight.add_(0.01)


def load(rev: str, cache: Path, **kw: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(REPO, revision=rev, cache_dir=cache, **kw).eval()


def same_outputs(a: Any, b: Any) -> bool:
    ids = torch.arange(12).reshape(2, 6) % 64
    with torch.no_grad():
        return torch.equal(a(ids).logits, b(ids).logits)


def hub_commits(hub: FakeHub) -> int:
    return len(hub.state.repos[REPO].commits)


def test_a_release_loads_with_plain_from_pretrained(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    cid = commit(lg, model, step=1)
    r = release(lg, "HEAD", URL, tag="v1")
    assert r.commit == cid and r.created_repo and r.private
    assert set(r.uploaded) >= {"README.md", "config.json", "model.safetensors"}
    assert (
        hub.state.repos[REPO].tags["v1"] == r.hub_commit == hub.state.repos[REPO].branches["main"]
    )
    fine_tune(model)
    commit(lg, model, step=2)
    release(lg, "HEAD", URL)
    assert same_outputs(load("main", tmp_path / "cache"), model)
    old = load("v1", tmp_path / "cache")
    assert same_outputs(old, gpt2()) and not same_outputs(old, model)
    card = ModelCard(hub.file(REPO, "README.md", rev="v1").decode())
    meta = card.data.to_dict()
    assert meta["base_model"] == "openai-community/gpt2" and meta["datasets"] == ["wikitext"]
    assert meta["library_name"] == "transformers"
    assert meta["training_ledger"]["commit"] == cid and meta["training_ledger"]["parents"] == []
    assert meta["training_ledger"]["branch"] == "main"
    assert "| loss | 2.5 |" in card.text and "| lr | 0.001 |" in card.text
    assert f'AutoModelForCausalLM.from_pretrained("{REPO}", revision="v1")' in card.text


def test_only_changed_files_are_uploaded_again(hub: FakeHub, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    commit(lg, model, step=1)
    release(lg, "HEAD", URL)
    before = hub.state.uploaded_bytes
    fine_tune(model)
    commit(lg, model, step=2)  # same config, new weights, new card
    r = release(lg, "HEAD", URL)
    assert r.uploaded == ["README.md", "model.safetensors"] and "config.json" in r.unchanged
    assert sorted(hub.tip_added(REPO)) == ["README.md", "model.safetensors"]
    weights = len(hub.file(REPO, "model.safetensors"))
    assert hub.state.uploaded_bytes - before < weights + 10_000
    n = hub_commits(hub)
    again = release(lg, "HEAD", URL)  # the same commit again: nothing to send, no Hub commit
    assert again.uploaded == [] and again.hub_commit == r.hub_commit and hub_commits(hub) == n
    commit(lg, model, step=3)  # a new commit, the same weights: only the card changes
    assert release(lg, "HEAD", URL).uploaded == ["README.md"]
    assert hub.tip_added(REPO) == ["README.md"]


def test_files_an_earlier_release_wrote_are_deleted_and_others_kept(
    hub: FakeHub, tmp_path: Path
) -> None:
    from huggingface_hub import HfApi

    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    commit(lg, model, step=1, **{"tokenizer_config.json": b"{}"})
    release(lg, "HEAD", URL, revision="rc")
    HfApi().upload_file(
        path_or_fileobj=b"mine", path_in_repo="NOTES.md", repo_id=REPO, revision="rc"
    )
    commit(lg, model, step=2)
    r = release(lg, "HEAD", URL, revision="rc")
    assert r.deleted == ["tokenizer_config.json"]
    files = hub.state.repos[REPO].commits[hub.state.repos[REPO].branches["rc"]]
    assert "tokenizer_config.json" not in files and files["NOTES.md"].data == b"mine"


def test_tags_never_move(hub: FakeHub, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    commit(lg, model, step=1)
    first = release(lg, "HEAD", URL, tag="v1")
    fine_tune(model)
    commit(lg, model, step=2)
    n = hub_commits(hub)
    with pytest.raises(ReleaseConflictError, match="tag 'v1' already exists") as e:
        release(lg, "HEAD", URL, tag="v1")
    assert e.value.reason == "tag-exists" and e.value.tag == "v1"
    assert hub_commits(hub) == n and hub.state.repos[REPO].tags["v1"] == first.hub_commit
    second = release(lg, "HEAD", URL, tag="v2")
    assert hub.state.repos[REPO].tags == {"v1": first.hub_commit, "v2": second.hub_commit}


def test_the_branch_a_ledger_remote_pushes_to_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "lg")
    commit(lg, gpt2(), step=1)
    lg.remote_add("origin", URL)
    lg.push()
    pushed = hub.state.repos[REPO].branches["main"]
    with pytest.raises(ReleaseConflictError, match="remote 'origin'"):
        release(lg, "HEAD", URL)
    other = new_ledger(tmp_path / "other")  # no remote configured: the Hub's files say so
    commit(other, gpt2(), step=1)
    with pytest.raises(ReleaseConflictError, match="ledger remote pushes") as e:
        release(other, "HEAD", URL, revision="main")
    assert e.value.reason == "push-branch"
    assert hub.state.repos[REPO].branches["main"] == pushed
    r = release(lg, "HEAD", URL, revision="release")
    assert r.created_branch and hub.state.repos[REPO].branches["main"] == pushed
    files = hub.state.repos[REPO].commits[r.hub_commit]
    assert not any(p.startswith("ledger/") for p in files) and "config.json" in files
    assert same_outputs(load("release", tmp_path / "cache"), gpt2())


def test_a_first_push_onto_a_released_main_is_refused_and_changes_nothing(
    hub: FakeHub, tmp_path: Path
) -> None:
    lg = new_ledger(tmp_path / "lg")
    commit(lg, gpt2(), step=1)
    r = release(lg, "HEAD", URL)  # main: the release
    lg.remote_add("origin", URL)
    with pytest.raises(ReleaseConflictError, match="holds a release") as e:
        lg.push()
    assert e.value.reason == "release-branch" and e.value.remote == "origin"
    repo = hub.state.repos[REPO]
    assert repo.branches["main"] == r.hub_commit
    assert not any(p.startswith("ledger/") for p in repo.commits[r.hub_commit])
    assert same_outputs(load("main", tmp_path / "cache"), gpt2())
    out = run_cli("--dir", lg.root, "push")
    assert out.exit_code != 0 and "holds a release" in out.output
    assert "Traceback" not in out.output
    lg.remote_add("runs", URL + "-runs")  # another repo takes the pushes
    lg.push("runs")
    assert (
        "ledger/refs.json"
        in hub.state.repos[REPO + "-runs"].commits[hub.state.repos[REPO + "-runs"].branches["main"]]
    )


def test_repos_are_private_unless_public_and_never_change(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub.utils import get_session

    lg = new_ledger(tmp_path / "lg")
    commit(lg, gpt2(), step=1)
    assert release(lg, "HEAD", URL).private and hub.state.repos[REPO].private
    url = f"{hub.endpoint}/{REPO}/resolve/main/config.json"
    assert get_session().get(url).status_code == 401  # no token: the private repo is not found
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(OSError):
        load("main", tmp_path / "anon", token=False)
    monkeypatch.setenv("HF_TOKEN", hub.state.token)
    assert release(lg, "HEAD", URL, revision="b", public=True).private  # stays private
    public = release(lg, "HEAD", "hf://org/open", public=True)
    assert not public.private and not hub.state.repos["org/open"].private
    assert get_session().get(f"{hub.endpoint}/org/open/resolve/main/config.json").status_code == 200
    assert not release(lg, "HEAD", "hf://org/open", revision="b").private  # stays public


def test_bad_input_is_refused_before_the_hub_changes(hub: FakeHub, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "lg")
    lg.commit({"weights": torch.ones(3)}, step=1)
    with pytest.raises(ExportError, match=r"no config\.json"):
        release(lg, "HEAD", URL)
    assert REPO not in hub.state.repos
    for bad in ("org/name", "hf://org", "hf://org/a/b", "s3://org/name", "hf://tok:en@org/x"):
        with pytest.raises(RemoteURLError):
            release(lg, "HEAD", bad)
    for name in ("a..b", "-x", "a b", "0" * 40):
        with pytest.raises(RefNameError):
            release(lg, "HEAD", URL, revision=name)
    assert hub.state.repos == {}


def test_cli_release_and_its_hints(hub: FakeHub, tmp_path: Path) -> None:
    import json

    lg = new_ledger(tmp_path / "lg")
    cid = commit(lg, gpt2(), step=1)
    lg.close()
    args = ["--dir", tmp_path / "lg", "release", "HEAD", "--to", URL, "--tag", "v1"]
    out = run_cli(*args, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    assert doc["commit"] == cid and doc["tag"] == "v1" and doc["private"] is True
    again = run_cli(*args)
    assert again.exit_code == 1
    assert "tag 'v1' already exists" in again.output and "hint: tags never move" in again.output
    text = run_cli("--dir", tmp_path / "lg", "release", "HEAD", "--to", URL, "--revision", "x")
    assert text.exit_code == 0 and "(private repo)" in text.output and "@x" in text.output


def test_push_export_weights_load_with_from_pretrained(hub: FakeHub, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    commit(lg, model, step=1)
    lg.remote_add("origin", URL)
    lg.push(export_weights=True)
    assert hub.state.repos[REPO].private
    loaded = AutoModelForCausalLM.from_pretrained(
        REPO, subfolder="weights", cache_dir=tmp_path / "cache"
    )
    assert same_outputs(loaded.eval(), model)


def test_a_hub_killed_mid_release_changes_nothing_and_a_rerun_finishes(
    hub: FakeHub, tmp_path: Path
) -> None:
    lg = new_ledger(tmp_path / "lg")
    model = gpt2()
    commit(lg, model, step=1)
    first = release(lg, "HEAD", URL)
    fine_tune(model)
    commit(lg, model, step=2)

    killer = threading.Thread(target=hub.stop)

    def kill_at_commit(method: str, path: str) -> bool:
        if method == "POST" and "/commit/" in path:
            killer.start()
            return False
        return True

    hub.state.on_request = kill_at_commit
    with pytest.raises(RemoteError, match="cannot reach the Hub"):
        release(lg, "HEAD", URL, tag="v2")
    assert hub.state.repos[REPO].branches["main"] == first.hub_commit
    assert hub.state.repos[REPO].tags == {}
    hub.state.on_request = None
    killer.join()
    back = hub.restart()
    try:
        r = release(lg, "HEAD", URL, tag="v2")
        assert r.uploaded == ["README.md", "model.safetensors"]
        assert hub.state.repos[REPO].tags["v2"] == r.hub_commit
        assert same_outputs(load("v2", tmp_path / "cache"), model)
    finally:
        back.stop()
