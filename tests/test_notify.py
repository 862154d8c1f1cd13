"""Notifications: payload shapes, events, delivery that never blocks training, URLs kept secret.

Every delivery goes to the real receiver of ``tests/servers/webhook.py`` on
127.0.0.1, which answers 400 to a body that is not what Slack, Discord or our
schema define; slow endpoints are simulated by holding requests (no test
asserts a time), dead ones by a closed port.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import run_cli, stored_byte_strings, tiny_state, tree_bytes
from hypothesis import given
from hypothesis import strategies as st
from servers.webhook import WebhookServer, check_discord, check_json, check_slack

from ledger import Ledger
from ledger.errors import NotifyError
from ledger.notify import EVENTS, NOTIFY_FILE, Event, make_hook
from ledger.notify_delivery import Notifier
from ledger.notify_payloads import discord, generic, slack
from ledger.retention import KeepBest

SECRET = "Zq9xWebhookSecret42"


@pytest.fixture
def hooks() -> Iterator[WebhookServer]:
    with WebhookServer() as server:
        yield server


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/json/dead"


def test_each_kind_gets_the_shape_its_service_documents(lg: Ledger, hooks: WebhookServer) -> None:
    for kind in ("slack", "discord", "json"):
        lg.notify_add(kind, hooks.url(kind), kind=kind, on=["commit"])
    c = lg.commit(tiny_state(1), step=7, epoch=1, metrics={"loss": 0.5}, message="m" * 3000)
    got = dict(hooks.wait_for(3))
    assert hooks.invalid == []
    assert got["json"]["event"] == "commit" and got["json"]["commit"] == c.id
    assert got["json"]["step"] == 7 and got["json"]["metrics"] == {"loss": 0.5}
    assert got["json"]["branch"] == "main" and got["json"]["ledger"] == str(lg.root.resolve())
    assert c.id[:12] in got["slack"]["text"] and "step 7" in got["slack"]["text"]
    assert c.id[:12] in got["discord"]["content"]


def test_a_new_best_is_announced_by_the_keep_best_metric_or_the_hooks_own(
    lg: Ledger, hooks: WebhookServer
) -> None:
    lg.set_retention(KeepBest("loss"))
    lg.notify_add("by-retention", hooks.url("json", "a"), on=["best"])
    lg.notify_add("by-acc", hooks.url("json", "b"), on=["best"], metric="acc:max")
    for i, (loss, acc) in enumerate([(1.0, 0.1), (0.5, 0.3), (0.7, 0.2), (0.2, 0.2)]):
        lg.commit(tiny_state(i), step=i, metrics={"loss": loss, "acc": acc})
    lg.notifier.flush(30)
    bests = [b["detail"] for _, b in hooks.received]
    by_loss = [(d["value"], d["previous"]) for d in bests if d["metric"] == "loss"]
    by_acc = [(d["value"], d["previous"]) for d in bests if d["metric"] == "acc"]
    assert by_loss == [(1.0, None), (0.5, 1.0), (0.2, 0.5)]
    assert by_acc == [(0.1, None), (0.3, 0.1)]


def test_best_compares_with_history_this_process_did_not_write(
    ledger_dir: Path, hooks: WebhookServer
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit(tiny_state(0), step=0, metrics={"loss": 0.3})
    with Ledger.open(ledger_dir, fsync=False) as lg:
        lg.notify_add("h", hooks.url("json"), on=["best"], metric="loss")
        lg.commit(tiny_state(1), step=1, metrics={"loss": 0.4})  # worse than before: quiet
        lg.commit(tiny_state(2), step=2, metrics={"loss": 0.1})
        lg.notifier.flush(30)
    assert [b["detail"]["previous"] for _, b in hooks.received] == [0.3]


def test_push_gc_and_failed_push_are_announced(
    lg: Ledger, hooks: WebhookServer, tmp_path: Path
) -> None:
    lg.notify_add("ops", hooks.url("json"), on=["push", "push-failed", "gc"])
    lg.commit(tiny_state(1), step=1)
    lg.remote_add("origin", str(tmp_path / "remote"))
    lg.push("origin")
    lg.gc(grace=0)
    lg.gc(dry_run=True)  # a dry run changes nothing: no notification
    lg.remote_add("broken", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a remote")
    with pytest.raises(Exception) as failed:
        lg.push("broken")
    got = [b for _, b in hooks.wait_for(3)]
    assert [b["event"] for b in got] == ["push", "gc", "push-failed"]
    assert got[0]["detail"]["remote"] == "origin" and got[0]["detail"]["commits"] == 1
    assert got[2]["detail"]["remote"] == "broken"
    assert got[2]["detail"]["type"] == type(failed.value).__name__


def test_a_commit_that_fails_while_writing_is_announced_and_still_raises(
    ledger_dir: Path, hooks: WebhookServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=True) as lg:
        lg.notify_add("h", hooks.url("discord"), kind="discord", on=["commit-failed", "commit"])

        def full_disk(fd: int) -> None:
            raise OSError(28, os.strerror(28))

        monkeypatch.setattr(os, "fsync", full_disk)
        with pytest.raises(OSError):
            lg.commit(tiny_state(1), step=3)
        monkeypatch.undo()
        (_, body), *_ = hooks.wait_for(1)
    assert "FAILED" in body["content"] and "step 3" in body["content"]


def test_a_held_endpoint_does_not_hold_commits(lg: Ledger, hooks: WebhookServer) -> None:
    lg.notify_add("slow", hooks.url("slack"), kind="slack", on=["commit"])
    hooks.hold()
    for i in range(3):
        lg.commit(tiny_state(i), step=i)
    assert hooks.received == []  # every commit returned while the endpoint answered nothing
    hooks.release()
    assert len(hooks.wait_for(3)) == 3


def test_a_full_queue_drops_with_a_warning(
    lg: Ledger, hooks: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    lg.notify_options(queue_size=1, retries=0)
    lg.notify_add("slow", hooks.url("json"), on=["commit"])
    hooks.hold()
    with caplog.at_level(logging.WARNING, logger="ledger"):
        for i in range(4):
            lg.commit(tiny_state(i), step=i)
    assert lg.notifier.dropped >= 2
    assert any("dropped" in r.getMessage() for r in caplog.records)
    hooks.release()


def test_a_dead_endpoint_is_retried_then_given_up_without_failing_anything(
    lg: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    lg.notify_options(retries=2, backoff=0.01, timeout=2.0)
    lg.notify_add("dead", _closed_port_url(), on=["commit"])
    with caplog.at_level(logging.WARNING, logger="ledger"):
        c = lg.commit(tiny_state(1), step=1)
        assert lg.notifier.flush(30)
    assert lg.head is not None and lg.head.id == c.id
    (done,) = lg.notifier.delivered
    assert not done.ok and done.attempts == 3
    assert any("failed after 3 attempt" in r.getMessage() for r in caplog.records)


def test_server_errors_are_retried_and_client_errors_are_not(
    lg: Ledger, hooks: WebhookServer
) -> None:
    lg.notify_options(retries=3, backoff=0.01)
    lg.notify_add("h", hooks.url("json"), on=["commit"])
    hooks.fail(2, 503)
    lg.commit(tiny_state(1), step=1)
    assert lg.notifier.flush(30)
    assert lg.notifier.delivered[-1].ok and lg.notifier.delivered[-1].attempts == 3
    hooks.fail(1, 404)
    lg.commit(tiny_state(2), step=2)
    assert lg.notifier.flush(30)
    assert not lg.notifier.delivered[-1].ok and lg.notifier.delivered[-1].status == 404
    assert hooks.requests == 4  # 503, 503, 200, then one 404 never repeated


def test_webhook_urls_never_leave_the_local_config(
    ledger_dir: Path, hooks: WebhookServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote, clone = tmp_path / "remote", tmp_path / "clone"
    with caplog.at_level(logging.DEBUG, logger="ledger"):
        with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
            lg.notify_add("team", hooks.url("slack", SECRET), kind="slack", on=list(EVENTS))
            lg.commit(tiny_state(1), step=1, metrics={"loss": 1.0})
            lg.remote_add("origin", str(remote))
            lg.push("origin")
            lg.gc(grace=0)
            lg.notify_test()
        Ledger.clone(str(remote), clone).close()
    config = ledger_dir / NOTIFY_FILE
    assert SECRET.encode() in config.read_bytes()  # the search can see it where it is
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    everywhere = {  # every file and decoded object but notify.json itself
        "ledger": [b for b in stored_byte_strings(ledger_dir) if b != config.read_bytes()],
        "remote": list(tree_bytes(remote).values()),
        "clone": stored_byte_strings(clone),
        "log": [r.getMessage().encode() for r in caplog.records],
    }
    leaked = [where for where, bs in everywhere.items() if any(SECRET.encode() in b for b in bs)]
    assert leaked == []
    assert not (clone / NOTIFY_FILE).exists()
    assert run_cli("--dir", ledger_dir, "verify").exit_code == 0


def test_bad_hooks_are_clear_errors(lg: Ledger) -> None:
    for kwargs, words in [
        ({"name": "a/b", "url": "https://x.example/h"}, "hook name"),
        ({"name": "a", "url": "ftp://x.example/h"}, "http:// or https://"),
        ({"name": "a", "url": "https://x.example/h", "kind": "teams"}, "kind 'teams'"),
        ({"name": "a", "url": "https://x.example/h", "on": ["deploy"]}, "unknown event"),
        ({"name": "a", "url": "https://x.example/h", "metric": "loss:avg"}, "NAME:max"),
    ]:
        with pytest.raises(NotifyError, match=words):
            lg.notify_add(**kwargs)  # type: ignore[arg-type]
    lg.notify_add("a", "https://hooks.slack.com/services/T/B/x")
    assert lg.notify_hooks()["a"].kind == "slack"
    with pytest.raises(NotifyError, match="exists"):
        lg.notify_add("a", "https://x.example/h")
    with pytest.raises(NotifyError, match="no notification hook named 'b'"):
        lg.notify_remove("b")


def test_cli_add_list_test_remove(ledger_dir: Path, hooks: WebhookServer) -> None:
    run_cli("--dir", ledger_dir, "init")
    d = ("--dir", ledger_dir)
    add = run_cli(
        *d,
        "notify",
        "add",
        "team",
        hooks.url("discord", SECRET),
        "--kind",
        "discord",
        "--on",
        "commit,best",
    )
    assert add.exit_code == 0, add.output
    listed = run_cli(*d, "notify", "list")
    assert "team" in listed.output and "discord" in listed.output and "commit,best" in listed.output
    assert (
        SECRET not in listed.output and SECRET not in run_cli(*d, "--json", "notify", "list").output
    )
    tested = run_cli(*d, "notify", "test")
    assert tested.exit_code == 0, tested.output
    assert hooks.wait_for(1)[0][1]["content"].endswith("test notification")
    run_cli(*d, "notify", "add", "dead", _closed_port_url(), "--kind", "json")
    failed = run_cli(*d, "notify", "test", "dead")
    assert failed.exit_code == 1 and "error:" in failed.output and "Traceback" not in failed.output
    assert run_cli(*d, "notify", "remove", "dead").exit_code == 0
    assert "dead" not in run_cli(*d, "notify", "list").output
    bad = run_cli(*d, "notify", "add", "x", "not-a-url")
    assert bad.exit_code == 1 and "http:// or https://" in bad.output


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=5000)


@given(
    event=st.sampled_from([*EVENTS, "test"]),
    message=st.none() | _text,
    branch=st.none() | st.text(max_size=300),
    metrics=st.dictionaries(
        st.text(min_size=1, max_size=400), st.floats(allow_nan=False), max_size=40
    ),
    error=_text,
)
def test_every_payload_stays_within_the_documented_limits(
    event: str, message: str | None, branch: str | None, metrics: dict[str, float], error: str
) -> None:
    e = Event(
        event=event,
        ledger="/runs/" + (branch or "x"),
        branch=branch,
        commit="ab" * 32,
        step=1,
        metrics=metrics,
        message=message,
        detail={"type": "OSError", "error": error, "metric": "loss", "mode": "min", "value": 1.0},
    )
    assert check_slack(slack(e)) is None
    assert check_discord(discord(e)) is None
    assert check_json(generic(e)) is None


def test_a_forked_child_delivers_through_its_own_thread(hooks: WebhookServer) -> None:
    notifier = Notifier()
    hook = make_hook("h", hooks.url("json"), None, ["commit"], None)
    notifier.send({"h": hook}, Event(event="commit", ledger="/parent"))
    assert notifier.flush(30)  # the parent's thread exists now
    pid = os.fork()
    if pid == 0:  # the child: without a thread of its own the event would sit in the queue
        notifier.send({"h": hook}, Event(event="commit", ledger="/child"))
        os._exit(0 if notifier.flush(30) and notifier.delivered[-1].ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [b["ledger"] for _, b in hooks.wait_for(2)] == ["/parent", "/child"]
    notifier.close()


def test_a_malformed_url_or_a_nan_metric_fails_quietly_and_leaks_nothing(
    lg: Ledger, hooks: WebhookServer, caplog: pytest.LogCaptureFixture
) -> None:
    lg.notify_add("bad", f"http://127.0.0.1:{hooks.port}/json/a b {SECRET}", on=["commit"])
    lg.notify_add("good", hooks.url("json"), on=["commit", "best"], metric="loss")
    with caplog.at_level(logging.DEBUG, logger="ledger"):
        lg.commit(tiny_state(1), step=1, metrics={"loss": float("nan")})
        assert lg.notifier.flush(30)
        (done,) = lg.notify_test("bad")
    assert not done.ok and "malformed" in (done.error or "")
    assert not any(SECRET in r.getMessage() or SECRET in (r.exc_text or "") for r in caplog.records)
    (_, body), *_ = hooks.wait_for(1)
    assert body["event"] == "commit" and body["metrics"] == {"loss": None}  # no NaN, no best
