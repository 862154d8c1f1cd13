"""``ledger status`` / ``Ledger.status``: HEAD, branch, last commit, retention, space, remotes.

Remotes are compared as the last fetch or push left the tracking refs: a push
from elsewhere is not seen until this ledger fetches (status never uses the
network).
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_cli, tiny_state

from ledger import Ledger
from ledger.history.records import KeepBest, KeepLast


def _commit(lg: Ledger, i: int) -> str:
    return lg.commit(tiny_state(i), f"c{i}", step=i, rng=False, metrics={"loss": 1 / (i + 1)}).id


def test_a_new_ledger_is_on_unborn_main(lg: Ledger) -> None:
    report = lg.status()
    assert (report.branch, report.head, report.remotes, report.retention) == ("main", None, [], [])
    result = run_cli("--dir", lg.root, "status")
    assert result.exit_code == 0, result.output
    assert "on branch main, no commit yet" in result.stdout
    assert "retention: none" in result.stdout


def test_status_names_the_last_commit_retention_and_space(lg: Ledger) -> None:
    _commit(lg, 1)
    last = _commit(lg, 2)
    lg.set_retention(KeepLast(5))
    lg.set_retention(KeepBest("loss"), branch="main")
    lg.expire("HEAD~1")
    report = lg.status()
    assert report.head is not None and report.head.id == last and report.head.step == 2
    assert report.retention == ["KeepLast(5)", "KeepBest('loss', k=1, mode='min')"]
    assert report.expired == 1
    assert report.stored_bytes > 0 and report.free_bytes > 0
    text = run_cli("--dir", lg.root, "status").stdout
    assert f"on branch main at {last[:12]}  step 2  loss=0.3333" in text
    assert "KeepBest('loss'" in text and "expired: 1" in text and "free on disk:" in text
    doc = json.loads(run_cli("--dir", lg.root, "--json", "status").stdout)
    assert doc["head"]["id"] == last and doc["branch"] == "main"
    assert doc["stored_bytes"] == report.stored_bytes
    lg.switch("HEAD~1")
    assert "HEAD detached at" in run_cli("--dir", lg.root, "status").stdout


def test_remotes_compare_as_of_the_last_fetch(lg: Ledger, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    lg.remote_add("origin", str(remote))
    _commit(lg, 1)
    lg.push("origin")
    (track,) = lg.status().remotes[0].branches
    assert (track.branch, track.ahead, track.behind) == ("main", 0, 0)
    _commit(lg, 2)
    _commit(lg, 3)
    with Ledger.clone(str(remote), tmp_path / "other") as other:
        _commit(other, 10)
        other.push("origin")
    status = lg.status().remotes[0]
    assert status.fetched is not None
    assert [(t.ahead, t.behind) for t in status.branches] == [(2, 0)]  # not fetched yet
    lg.fetch("origin")
    assert [(t.ahead, t.behind) for t in lg.status().remotes[0].branches] == [(2, 1)]
    text = run_cli("--dir", lg.root, "status").stdout
    assert f"remote origin ({remote})" in text and "main: ahead 2, behind 1" in text
