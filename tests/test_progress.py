"""What a user hears while the ledger works: the library's log, the CLI's -v, progress.

The library logs on ``ledger`` and prints nothing (checked in a fresh
interpreter, where no test framework has configured logging, with warnings to
log; commits, checkouts and pushes print nothing either, under ``capsys``); the CLI's
``-v``/``-vv`` show that log on stderr; long commands report progress to a
``progress=`` callback (API) and a rich bar (CLI, on a terminal only).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import random_state, run_cli, tiny_state

from ledger import File, Ledger
from ledger.progress import ProgressFn
from ledger.retention import KeepLast

_QUIET_SCRIPT = """
import socket, sys
from ledger import Ledger
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
with Ledger.open(sys.argv[1], create=True, fsync=False) as lg:
    lg.notify_options(retries=0)
    lg.notify_add("dead", f"http://127.0.0.1:{port}/x", on=["gc"])
    lg.gc(grace=0)
    assert lg.verify(full=True).ok
    assert lg.notifier.flush(30)
    assert not lg.notify_test()[0].ok
    assert not lg.notifier.delivered[-1].ok  # the dead hook failed, and said so only in the log
"""


def test_the_library_prints_nothing_even_when_it_has_warnings_to_log(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _QUIET_SCRIPT, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_meaningful_events_are_logged_on_the_ledger_logger(
    lg: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="ledger"):
        c = lg.commit(tiny_state(1), step=5)
        lg.checkout("HEAD")
        lg.remote_add("origin", str(tmp_path / "remote"))
        lg.push("origin")
        lg.fetch("origin")
        lg.pull("origin")
        lg.gc(grace=0)
        lg.verify()
    said = {(r.name, r.getMessage().split(":")[0].split(" ")[0]) for r in caplog.records}
    assert {
        ("ledger.commit", "commit"),
        ("ledger.restore", "checkout"),
        ("ledger.remotes", "push"),
        ("ledger.remotes", "fetch"),
        ("ledger.remotes", "pull"),
        ("ledger.maintain", "gc"),
        ("ledger.maintain", "verify"),
    } <= said
    assert any(c.id[:12] in r.getMessage() and "step 5" in r.getMessage() for r in caplog.records)
    assert capsys.readouterr() == ("", "")  # logged, never printed


def test_cli_verbosity_turns_the_log_on_for_one_invocation(tmp_path: Path) -> None:
    d = ("--dir", tmp_path / "ckpt")
    run_cli(*d, "init")
    quiet = run_cli(*d, "gc", "--grace", "0")
    assert quiet.exit_code == 0 and "INFO" not in quiet.stderr
    loud = run_cli("-v", *d, "gc", "--grace", "0")
    assert loud.exit_code == 0 and "INFO ledger.maintain: gc:" in loud.stderr
    assert "gc:" not in loud.stdout  # the log goes to stderr; stdout keeps the result
    debug = run_cli("-vv", *d, "notify", "add", "x", "http://127.0.0.1:9/x")
    assert "INFO ledger.notify: notification hook 'x' added" in debug.stderr
    assert logging.getLogger("ledger").level == logging.NOTSET  # nothing left behind
    assert not [h for h in logging.getLogger("ledger").handlers if type(h) is logging.StreamHandler]


def _calls() -> tuple[list[tuple[int, int, str]], ProgressFn]:
    seen: list[tuple[int, int, str]] = []
    return seen, lambda done, total, what: seen.append((done, total, what))


def _monotone_to_total(seen: list[tuple[int, int, str]]) -> None:
    assert seen, "the callback was never called"
    dones = [d for d, _, _ in seen]
    totals = {t for _, t, _ in seen}
    assert dones == sorted(dones) and len(totals) == 1 and dones[-1] == totals.pop()


def test_verify_and_gc_report_monotone_progress_ending_at_the_total(small: Ledger) -> None:
    for i in range(5):
        small.commit(random_state(i, 4096), step=i)
    seen, tick = _calls()
    assert small.verify(full=True, progress=tick).ok
    _monotone_to_total(seen)
    assert seen[-1] == (5, 5, "commits")
    small.set_retention(KeepLast(1))
    seen, tick = _calls()
    report = small.gc(grace=0, progress=tick)
    assert report.expired and report.bytes_freed > 0
    _monotone_to_total(seen)


def test_no_bar_off_a_terminal_or_with_quiet(tmp_path: Path) -> None:
    d = ("--dir", tmp_path / "ckpt")
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        lg.commit(tiny_state(1), step=1)
    for args in (("verify", "--full"), ("gc", "--grace", "0"), ("-q", "verify")):
        result = run_cli(*d, *args)
        assert result.exit_code == 0 and result.stderr == "", (args, result.stderr)


_PTY_SCRIPT = """
import os, pty, subprocess, sys
master, slave = pty.openpty()
cmd = [sys.executable, "-c", "from ledger.cli import main; main()", *sys.argv[1:]]
proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=slave)
os.close(slave)
out = b""
while True:
    try:
        data = os.read(master, 65536)
    except OSError:
        break
    if not data:
        break
    out += data
sys.stdout.write(repr((proc.wait(), out.decode(errors="replace"))))
"""


def _on_a_terminal(*args: str | Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PTY_SCRIPT, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TERM": "xterm", "COLUMNS": "100"},
    )
    assert proc.returncode == 0, proc.stderr
    code, err = eval(proc.stdout)  # a repr of (int, str) this test wrote
    return code, err


def test_a_bar_on_a_terminal_unless_quiet(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        for i in range(3):
            lg.commit(tiny_state(i), step=i)
    code, err = _on_a_terminal("--dir", tmp_path / "ckpt", "verify", "--full")
    assert code == 0 and "verifying" in err and "3/3" in err
    code, err = _on_a_terminal("--dir", tmp_path / "ckpt", "-q", "verify", "--full")
    assert code == 0 and "verifying" not in err


def test_checkout_out_reports_each_part_written(lg: Ledger, tmp_path: Path) -> None:
    from ledger.interop.export import write_safetensors_dir

    c = lg.commit({"model": tiny_state(1), "optim": tiny_state(2), "note": "x"}, step=1)
    seen, tick = _calls()
    write_safetensors_dir(lg.checkout(c.id), c, tmp_path / "out", progress=tick)
    _monotone_to_total(seen)
    assert seen[-1] == (3, 3, "parts")  # model, optim, note (the RNG is left out)
    result = run_cli("--dir", lg.root, "checkout", c.id, "--out", tmp_path / "out2")
    assert result.exit_code == 0 and result.stderr == ""  # no bar off a terminal


def test_import_reports_each_checkpoint_read_then_committed(lg: Ledger, tmp_path: Path) -> None:
    import torch

    torch.save({"model": {"w": torch.ones(4)}, "step": 3}, tmp_path / "a.pt")
    seen, tick = _calls()
    lg.import_checkpoints(tmp_path / "a.pt", branch="imp", progress=tick)
    assert seen == [(0, 2, "steps"), (1, 2, "steps"), (2, 2, "steps")]
    seen, tick = _calls()
    again = lg.import_checkpoints(tmp_path / "a.pt", branch="imp", progress=tick)
    assert again.checkpoints[0].skipped  # nothing to commit: the count still ends at the total
    _monotone_to_total(seen)


def _two_parts() -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    return {
        "model": {"w": torch.randn(20_000, generator=g), "b": torch.randn(64, generator=g)},
        "optim": {"m": torch.randn(5_000, generator=g)},
        "hf_files": {"config.json": File(b'{"model_type": "gpt2"}')},
    }


@pytest.mark.parametrize(
    ("fmt", "options", "reads"),
    [
        ("torch", {}, {"model", "optim", "hf_files"}),
        ("lightning", {}, {"model", "optim", "hf_files"}),
        ("safetensors", {}, {"model", "optim", "hf_files"}),
        ("dcp", {}, {"model", "optim", "hf_files"}),
        ("hf", {"max_shard_size": "40KB"}, {"model", "hf_files"}),  # two shards
    ],
)
def test_export_reports_the_bytes_written_monotone_to_the_total(
    lg: Ledger, tmp_path: Path, fmt: str, options: dict[str, Any], reads: set[str]
) -> None:
    from ledger.interop.export import tensor_bytes

    state = _two_parts()
    c = lg.commit(state, rng=False)
    seen, tick = _calls()
    out = tmp_path / ("out.pt" if fmt in ("torch", "lightning") else "out")
    lg.export(c.id, fmt, out, progress=tick, **options)
    _monotone_to_total(seen)
    total = tensor_bytes({k: state[k] for k in reads})  # of what the format reads
    assert seen[0] == (0, total, "bytes") and seen[-1] == (total, total, "bytes")
    if fmt != "dcp":  # torch.save, shards and parts tell as they go; dcp only at its end
        assert any(0 < d < total for d, _, _ in seen), seen


def test_export_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ckpt", create=True, fsync=False) as lg:
        lg.commit(_two_parts(), rng=False)
    args = ("--dir", tmp_path / "ckpt", "export", "HEAD", tmp_path / "m.pt", "--format", "torch")
    code, err = _on_a_terminal(*args)
    assert code == 0 and "exporting HEAD as torch" in err and "bytes" in err
    quiet = run_cli(*args[:4], tmp_path / "n.pt", *args[5:])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # no bar off a terminal
