"""The remote commands from a shell: remote add/list, push, fetch, pull, clone, checkout REMOTE/BRANCH."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli
from servers.training import fine_tune_last, model, new_ledger, same, state

from ledger import Ledger


def test_remote_push_clone_fetch_pull_from_the_shell(tmp_path: Path) -> None:
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    net = model()
    with new_ledger(a) as lg:
        lg.commit(state(net), step=1)
    assert run_cli("--dir", str(a), "remote", "add", "origin", str(remote)).exit_code == 0
    listed = json.loads(run_cli("--dir", str(a), "--json", "remote").output)
    assert listed == {"remotes": [{"name": "origin", "url": str(remote)}]}
    pushed = json.loads(run_cli("--dir", str(a), "--json", "push").output)
    assert pushed["commits"] == 1 and pushed["chunks_sent"] > 0
    again = run_cli("--dir", str(a), "push")
    assert again.exit_code == 0 and "up to date" in again.output

    cloned = run_cli("--json", "clone", str(remote), str(b), "--depth", "1")
    assert cloned.exit_code == 0 and json.loads(cloned.output)["branch"] == "main"

    with Ledger.open(a) as lg:
        fine_tune_last(net)
        lg.commit(state(net), step=2)
    assert run_cli("--dir", str(a), "-q", "push", "origin", "main").exit_code == 0
    fetched = json.loads(run_cli("--dir", str(b), "--json", "fetch").output)
    assert fetched["commits"] == 1 and set(fetched["updated"]) == {"main"}
    switched = run_cli("--dir", str(b), "checkout", "origin/main")
    assert switched.exit_code == 0 and "detached" in switched.output
    assert run_cli("--dir", str(b), "checkout", "main").exit_code == 0
    pulled = run_cli("--dir", str(b), "pull", "origin", "main")
    assert pulled.exit_code == 0 and "fast-forwarded main" in pulled.output
    with Ledger.open(a) as one, Ledger.open(b) as two:
        assert same(one.checkout("HEAD"), two.checkout("HEAD"))
    collected = json.loads(run_cli("--dir", str(a), "--json", "remote", "gc", "--dry-run").output)
    assert collected["dry_run"] and collected["expired"] == []  # no retention set: all kept


def test_remote_errors_exit_1_with_one_line(tmp_path: Path) -> None:
    a = tmp_path / "a"
    new_ledger(a).close()
    bad = run_cli("--dir", str(a), "remote", "add", "origin", "s3://key:secret@bucket/x")
    assert bad.exit_code == 1 and "credentials" in bad.output and "secret" not in bad.output
    missing = run_cli("--dir", str(a), "--json", "push", "nope")
    assert missing.exit_code == 1
    assert json.loads(missing.output)["error"]["type"] == "RemoteError"


def test_push_dry_run_prints_the_plan_and_sends_nothing(tmp_path: Path) -> None:
    a, remote = tmp_path / "a", tmp_path / "remote"
    with new_ledger(a) as lg:
        lg.commit(state(model()), step=1)
        head = lg.head.id  # type: ignore[union-attr]
    assert run_cli("--dir", str(a), "remote", "add", "origin", str(remote)).exit_code == 0
    shown = run_cli("--dir", str(a), "push", "--dry-run")
    assert shown.exit_code == 0
    assert "refs/heads/main" in shown.output and "(new) -> " + head[:12] in shown.output
    assert "would push to origin: 1 commits" in shown.output
    plan = json.loads(run_cli("--dir", str(a), "--json", "push", "--dry-run").output)
    assert plan["commits"] == [head] and plan["version"] is None
    assert plan["refs"] == [{"ref": "refs/heads/main", "old": None, "new": head}]
    assert plan["bytes"] == sum(o["bytes"] for o in plan["objects"]) > 0
    assert not remote.exists()  # nothing was written
    pushed = json.loads(run_cli("--dir", str(a), "--json", "push").output)
    assert pushed["objects_sent"] == len(plan["objects"])
    assert "up to date" in run_cli("--dir", str(a), "push", "--dry-run").output
