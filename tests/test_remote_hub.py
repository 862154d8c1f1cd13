"""Hub remotes through the real huggingface_hub client against a fake Hub on 127.0.0.1.

Covers both upload paths the client takes (``uploadMode: "regular"``: bytes
inline in the NDJSON commit; ``"lfs"`` with Xet disabled: the LFS batch API),
one Hub commit per push with the parent commit as compare-and-swap, range
reads for lazy restore, the model card and exported weights, faults (503s,
dropped connections, a server killed mid-push), the token never reaching
the ledger, and repos a push creates being private unless ``public=True``. The guarantees every backend shares are
tests/test_remote_conformance.py's.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from servers.hub import TOKEN, FakeHub, hub_fixture
from servers.training import fine_tune_last, model, new_ledger, same, secrets_in, state

from ledger import Ledger
from ledger.errors import RemoteConflictError, RemoteError

# huggingface_hub's own LFS upload passes bytes as `data=`, which its HTTP library deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "user/run"
URL = f"hf://{REPO}"
hub = hub_fixture()


def _pushed(tmp_path: Path) -> tuple[Ledger, torch.nn.Sequential]:
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1, metrics={"loss": 0.75}, params={"lr": 3e-4})
    lg.remote_add("origin", URL)
    lg.push()
    return lg, net


def _commits(hub: FakeHub) -> int:
    return len(hub.state.repos[REPO].commits)


def test_push_is_one_hub_commit_and_clone_round_trips(hub: FakeHub, tmp_path: Path) -> None:
    lg, net = _pushed(tmp_path)
    assert _commits(hub) == 2  # the repo's initial commit + one per push
    assert lg.push().bytes_sent == 0 and _commits(hub) == 2
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    r = lg.push()
    assert r.chunks_sent <= 2 and _commits(hub) == 3
    message = hub.state.repos[REPO].messages[hub.state.repos[REPO].branches["main"]]
    assert lg.head.id in message  # type: ignore[union-attr]
    with Ledger.clone(URL, tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        assert same(copy.checkout("HEAD~1"), lg.checkout("HEAD~1"))
        lg.commit(state(net), step=3)
        lg.push()
        assert copy.pull().fast_forward and copy.head.step == 3  # type: ignore[union-attr]


def test_model_card_and_exported_weights(hub: FakeHub, tmp_path: Path) -> None:
    from safetensors.torch import load

    lg, net = _pushed(tmp_path)
    card = hub.file(REPO, "README.md").decode()
    assert card.startswith("---\nlibrary_name: training-ledger")
    assert "loss | 0.75" in card and "lr | 0.0003" in card and lg.head.id in card  # type: ignore[union-attr]
    lg.push(export_weights=True)  # nothing new: weights and card only
    weights = load(hub.file(REPO, "weights/model.safetensors"))
    assert torch.equal(weights["5.weight"], net[5].weight.detach())
    assert "weights/model.safetensors" in hub.file(REPO, "README.md").decode()


def test_lazy_checkout_reads_only_the_missing_ranges(hub: FakeHub, tmp_path: Path) -> None:
    lg, net = _pushed(tmp_path)
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    lg.push()
    mine = new_ledger(tmp_path / "b")
    mine.commit(state(model()), step=1)  # every chunk but the fine-tuned layer's
    hub.state.served_bytes = 0
    assert same(mine.checkout(f"{URL}@main"), lg.checkout("main"))
    total = sum(
        len(b.data)
        for p, b in hub.state.repos[REPO].commits[hub.state.repos[REPO].branches["main"]].items()
        if p.startswith("ledger/packs/")
    )
    assert hub.state.served_bytes < total / 3


def test_a_stale_parent_commit_is_refused(hub: FakeHub, tmp_path: Path) -> None:
    lg, net = _pushed(tmp_path)
    other = Ledger.clone(URL, tmp_path / "b")
    other.commit(state(net), step=2, message="racer")
    lg.commit(state(net), step=2, message="slow")
    raced = threading.Event()

    def race(method: str, path: str) -> bool:
        # The slow push has read the refs; the racer lands its push first.
        if method == "POST" and "/preupload/" in path and not raced.is_set():
            raced.set()
            hub.state.on_request = None
            other.push()
        return True

    hub.state.on_request = race
    with pytest.raises(RemoteConflictError, match="fetch first"):
        lg.push()
    assert raced.is_set()
    with Ledger.clone(URL, tmp_path / "c") as check:
        assert check.head.message == "racer"  # type: ignore[union-attr]
    other.close()


def test_transient_faults_are_retried(hub: FakeHub, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "a")
    lg.commit(state(model()), step=1)
    lg.remote_add("origin", URL)
    hub.state.fail(3, 503)
    lg.push()
    hub.state.drop(2)
    with Ledger.clone(URL, tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))


def test_a_server_killed_mid_push_leaves_the_remote_consistent(
    hub: FakeHub, tmp_path: Path
) -> None:
    lg, net = _pushed(tmp_path)
    before = hub.file(REPO, "ledger/refs.json")
    fine_tune_last(net)
    lg.commit(state(net), step=2)

    def kill_at_commit(method: str, path: str) -> bool:
        if method == "POST" and "/commit/" in path:
            threading.Thread(target=hub.stop).start()
            return False
        return True

    hub.state.on_request = kill_at_commit
    with pytest.raises(RemoteError):
        lg.push()
    assert hub.file(REPO, "ledger/refs.json") == before  # refs did not move
    hub.state.on_request = None
    uploaded = hub.state.uploaded_bytes
    back = hub.restart()
    try:
        r = lg.push()
        assert r.commits == 1
        if hub.state.lfs_threshold is not None:  # LFS objects that arrived are not sent again
            assert hub.state.uploaded_bytes - uploaded < r.bytes_sent / 2
        with Ledger.clone(URL, tmp_path / "b") as copy:
            assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
    finally:
        back.stop()


def test_unknown_repo_and_bad_token_are_clear_errors(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RemoteError, match="holds no ledger"):
        Ledger.clone("hf://user/nothing-here", tmp_path / "b")
    lg = new_ledger(tmp_path / "a")
    lg.commit(state(model()), step=1)
    lg.remote_add("origin", URL)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(RemoteError, match=r"401|credentials"):
        lg.push()
    assert REPO not in hub.state.repos


def test_the_token_never_reaches_the_ledger(hub: FakeHub, tmp_path: Path) -> None:
    lg, net = _pushed(tmp_path)
    lg.commit(state(net), step=2)  # metadata captured with HF_TOKEN in the environment
    lg.push(export_weights=True)
    Ledger.clone(URL, tmp_path / "b", depth=1).close()
    assert secrets_in(tmp_path / "a", TOKEN) == []
    assert secrets_in(tmp_path / "b", TOKEN) == []
    for files in hub.state.repos[REPO].commits.values():
        assert not any(TOKEN.encode() in b.data for b in files.values())


def test_a_push_creates_a_private_repo_unless_public(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub.utils import get_session

    lg, net = _pushed(tmp_path)
    assert hub.state.repos[REPO].private
    assert get_session().get(f"{hub.endpoint}/{REPO}/resolve/main/README.md").status_code == 401
    lg.remote_add("open", "hf://user/open")
    lg.push("open", public=True)
    assert not hub.state.repos["user/open"].private
    lg.commit(state(net), step=2)
    lg.push("origin", public=True)  # existing repos keep their visibility, both ways
    lg.push("open")
    assert hub.state.repos[REPO].private and not hub.state.repos["user/open"].private
    lg.remote_add("cli", "hf://user/cli")
    lg.close()
    out = run_cli("--dir", tmp_path / "a", "push", "cli", "--public")
    assert out.exit_code == 0, out.output
    assert not hub.state.repos["user/cli"].private
