"""``ledger log``: --metrics chooses columns, watched and eval metrics come first, expired is marked."""

from __future__ import annotations

import json

from helpers import run_cli, tiny_state

from ledger import Ledger
from ledger.history.records import KeepBest


def _metrics_of(line: str) -> list[str]:
    return [word.split("=")[0] for word in line.split() if "=" in word]


def _two_commits(lg: Ledger) -> list[str]:
    metrics = {"loss": 1.0, "lr": 0.1, "grad_norm": 3.0, "eval_loss": 2.0, "val_acc": 0.5}
    return [
        lg.commit(tiny_state(i), step=i, rng=False, metrics={**metrics, "loss": 1.0 / (i + 1)}).id
        for i in range(2)
    ]


def test_default_puts_watched_then_eval_metrics_first(lg: Ledger) -> None:
    _two_commits(lg)
    plain = run_cli("--dir", lg.root, "log").stdout.splitlines()
    assert _metrics_of(plain[0]) == ["eval_loss", "val_acc", "loss"]  # HF's eval_loss is shown
    lg.set_retention(KeepBest("grad_norm"), branch="main")
    assert lg.watched_metrics() == ["grad_norm"]
    watched = run_cli("--dir", lg.root, "log").stdout.splitlines()
    assert _metrics_of(watched[0]) == ["grad_norm", "eval_loss", "val_acc"]


def test_metrics_option_chooses_the_columns_in_order(lg: Ledger) -> None:
    _two_commits(lg)
    result = run_cli("--dir", lg.root, "log", "--metrics", "lr, loss,absent")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [_metrics_of(line) for line in lines] == [["lr", "loss"], ["lr", "loss"]]
    assert "loss=0.5" in lines[0]
    empty = run_cli("--dir", lg.root, "log", "--metrics", ",")
    assert empty.exit_code == 2 and "--metrics" in empty.output


def test_expired_commits_are_marked_in_text_and_json(lg: Ledger) -> None:
    old, new = _two_commits(lg)
    lg.expire(old)
    assert set(lg.expired()) == {old}
    lines = run_cli("--dir", lg.root, "log").stdout.splitlines()
    assert "[expired]" in lines[1] and "[expired]" not in lines[0]
    doc = json.loads(run_cli("--dir", lg.root, "--json", "log").stdout)
    assert doc["expired"] == [old]
    assert [c["id"] for c in doc["commits"]] == [new, old]
