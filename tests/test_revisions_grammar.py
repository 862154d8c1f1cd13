"""The revision grammar on real ledgers: step:, epoch:, best:, scope prefixes and name@{when}.

Every form goes through ``Ledger.resolve``, so checkout, restore, show and the
CLI accept it; errors say what was searched (docs/revisions.md).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import run_cli, tiny_state

from ledger import Ledger
from ledger.errors import (
    AmbiguousRevisionError,
    CommitExpiredError,
    RevisionNotFoundError,
    RevisionSyntaxError,
)


def _commit(lg: Ledger, i: int, **kw: object) -> str:
    return lg.commit(tiny_state(i), step=i * 100, rng=False, **kw).id  # type: ignore[arg-type]


@pytest.fixture
def run(lg: Ledger) -> dict[str, str]:
    """main: steps 0..500, epochs 0,0,1,1,2,2, val_loss dips at step 300; exp forks at 200."""
    losses = [0.9, 0.7, 0.5, 0.2, 0.4, 0.3]
    ids = {}
    for i, loss in enumerate(losses):
        ids[f"s{i * 100}"] = _commit(
            lg, i, epoch=i // 2, metrics={"val_loss": loss, "val_acc": 1 - loss}
        )
    lg.branch("exp", at=ids["s200"])
    lg.switch("exp")
    ids["exp250"] = lg.commit(tiny_state(9), step=250, rng=False, metrics={"val_loss": 0.1}).id
    lg.switch("main")
    return ids


def test_step_epoch_and_best_name_commits_on_heads_first_parent_history(
    lg: Ledger, run: dict[str, str]
) -> None:
    assert lg.resolve("step:300") == run["s300"]
    assert lg.resolve("step:<=350") == run["s300"]
    assert lg.resolve("step:<=999999") == run["s500"]
    assert lg.resolve("epoch:1") == run["s300"]  # the last commit of epoch 1
    assert lg.resolve("best:val_loss") == run["s300"]  # exp's 0.1 is another branch
    assert lg.resolve("best:val_acc:max") == run["s300"]
    assert lg.resolve("step:300~1") == run["s200"]


def test_a_scope_prefix_searches_another_revision(lg: Ledger, run: dict[str, str]) -> None:
    assert lg.resolve("exp:step:250") == run["exp250"]
    assert lg.resolve("exp:step:100") == run["s100"]  # first-parent history reaches main's
    assert lg.resolve("exp:best:val_loss") == run["exp250"]
    assert lg.resolve("main~3:best:val_loss") == run["s200"]
    with pytest.raises(RevisionNotFoundError, match="branch 'main'"):
        lg.resolve("step:250")  # not on main


def test_no_match_says_what_was_searched(lg: Ledger, run: dict[str, str]) -> None:
    with pytest.raises(RevisionNotFoundError) as info:
        lg.resolve("step:1000")
    text = str(info.value)
    assert "branch 'main' (6 commits)" in text and "0..500" in text and "step:<=N" in text
    with pytest.raises(RevisionNotFoundError, match=r"epoch 7 .*'exp'.*epochs 0\.\.1"):
        lg.resolve("exp:epoch:7")
    with pytest.raises(RevisionNotFoundError, match=r"metric 'loss'.*val_acc, val_loss"):
        lg.resolve("best:loss")


def test_two_commits_at_one_step_are_ambiguous_and_named(lg: Ledger) -> None:
    a = _commit(lg, 1)
    b = lg.commit(tiny_state(2), step=100, rng=False).id
    with pytest.raises(AmbiguousRevisionError, match="2 commits have step 100") as info:
        lg.resolve("step:100")
    assert info.value.candidates == [b, a]
    assert lg.resolve("step:<=100") == b  # "latest at or before": the newest of equals
    with pytest.raises(RevisionNotFoundError, match=r"no commit at or before step 50 .*100\.\.100"):
        lg.resolve("step:<=50")


def test_best_skips_expired_commits_and_breaks_ties_as_keep_best_does(lg: Ledger) -> None:
    first = _commit(lg, 1, metrics={"loss": 0.5})
    second = _commit(lg, 2, metrics={"loss": 0.5})
    _commit(lg, 3, metrics={"loss": float("nan")})
    _commit(lg, 4, metrics={"loss": 0.9})
    assert lg.resolve("best:loss") == second  # newest of equal values, like KeepBest(k=1)
    lg.expire(second)
    assert lg.resolve("best:loss") == first
    assert lg.resolve("step:200") == second  # metadata stays: step: still names it
    with pytest.raises(CommitExpiredError):
        lg.checkout("step:200")


def test_checkout_restore_and_switch_take_every_form(lg: Ledger, run: dict[str, str]) -> None:
    assert torch.equal(lg.checkout("best:val_loss")["w"], torch.full((3,), 3.0))
    state = tiny_state(0)
    assert lg.restore(state, "exp:best:val_loss", rng=False).id == run["exp250"]
    assert state["i"] == 9
    lg.switch("epoch:0")
    assert lg.head is not None and lg.head.id == run["s100"]


@pytest.fixture
def timed(lg: Ledger) -> Iterator[tuple[Ledger, str, str, dt.datetime]]:
    a = _commit(lg, 1)
    time.sleep(0.01)
    between = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.01)
    b = _commit(lg, 2)
    yield lg, a, b, between


def test_branch_at_a_time_is_what_the_event_log_had_then(
    timed: tuple[Ledger, str, str, dt.datetime],
) -> None:
    lg, a, b, between = timed
    assert lg.resolve(f"main@{{{between.isoformat()}}}") == a
    assert lg.resolve(f"@{{{between.isoformat()}}}") == a  # the current branch
    assert lg.resolve(f"HEAD@{{{between.isoformat()}}}") == a
    assert lg.resolve("main@{now}") == b
    assert lg.resolve(f"main@{{{between.isoformat()}}}:step:<=1000") == a
    with pytest.raises(RevisionNotFoundError, match="no commit for 'main' at"):
        lg.resolve("main@{1 hour ago}")


def test_a_time_without_offset_is_local_time(
    timed: tuple[Ledger, str, str, dt.datetime], monkeypatch: pytest.MonkeyPatch
) -> None:
    lg, a, b, between = timed
    try:
        for zone, hours in (("Etc/GMT-5", 5), ("Etc/GMT+3", -3)):  # POSIX signs are inverted
            monkeypatch.setenv("TZ", zone)
            time.tzset()
            local = (between + dt.timedelta(hours=hours)).replace(tzinfo=None)
            assert lg.resolve(f"main@{{{local:%Y-%m-%d %H:%M:%S.%f}}}") == a
            if hours > 0:  # the same text read as UTC is hours later: the newer commit
                assert lg.resolve(f"main@{{{local:%Y-%m-%d %H:%M:%S.%f} UTC}}") == b
    finally:
        monkeypatch.undo()
        time.tzset()


def test_time_after_a_remote_url_is_refused(lg: Ledger, tmp_path: Path) -> None:
    _commit(lg, 1)
    with pytest.raises(RevisionSyntaxError, match="refused after a remote URL"):
        lg.resolve(f"file://{tmp_path}/remote@main@{{2 hours ago}}")


def test_the_cli_accepts_the_grammar_and_reports_errors_in_one_line(
    lg: Ledger, run: dict[str, str]
) -> None:
    d = str(lg.root)
    shown = run_cli("--dir", d, "--json", "show", "exp:best:val_loss")
    assert shown.exit_code == 0, shown.output
    assert run["exp250"] in shown.output
    listed = run_cli("--dir", d, "--json", "log", "epoch:1")
    assert json.loads(listed.output)["commits"][0]["id"] == run["s300"]
    bad = run_cli("--dir", d, "show", "step:12345")
    assert bad.exit_code == 1
    assert "no commit at step 12345" in bad.output and "Traceback" not in bad.output
    assert "hint: `ledger log REV --metrics M`" in bad.output
    syntax = run_cli("--dir", d, "show", "best:")
    assert syntax.exit_code == 1 and "metric name" in syntax.output
    assert "docs/revisions.md" in syntax.output
    assert len([line for line in syntax.output.splitlines() if line.strip()]) <= 2


def test_an_adapter_resumes_from_a_selector(lg: Ledger) -> None:
    from ledger.adapters.torch import Checkpointer

    model = torch.nn.Linear(2, 1)
    ckpt = Checkpointer(lg, model=model, every=1)
    for step in range(4):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ckpt.step(step, metrics={"loss": abs(step - 1.0)})
    assert ckpt.resume("best:loss") == 2  # step 1 had the lowest loss
    assert torch.equal(model.weight, torch.full((1, 2), 1.0))
    assert ckpt.resume("step:<=2") == 3


def test_selectors_after_a_remote_url_read_the_remote_records(
    lg: Ledger, run: dict[str, str], tmp_path: Path
) -> None:
    remote = tmp_path / "remote"
    lg.remote_add("origin", str(remote))
    lg.push("origin", all=True)
    with Ledger.open(tmp_path / "fresh", create=True, fsync=False) as fresh:
        assert fresh.resolve(f"file://{remote}@exp:best:val_loss") == run["exp250"]
        assert fresh.resolve(f"file://{remote}@epoch:1") == run["s300"]
