"""Operating-system failures are ``LedgerError``s naming the file, from the API as from the CLI.

Covered: a missing ``events.log``, a read-only file system (reads work, a write
fails with one error), an event log this process may not read, a directory it
may not write, and a descriptor limit with no descriptor left. Permissions do
not bind root, so under root the permission cases run in a child without the
capabilities that bypass them (``capsh --drop``); the read-only case mounts a
tmpfs and remounts it read-only where that is allowed, and otherwise removes
write permission (which binds a non-root user).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from ledger import Ledger
from ledger.errors import LedgerError, MissingFileError, from_os_error

ROOT = os.geteuid() == 0
BYPASS = "cap_dac_override,cap_dac_read_search,cap_fowner"

# A child that runs API calls (python statements, ``root`` bound), one result line each.
CHILD = """
import sys, resource
from ledger import Ledger
from ledger.errors import LedgerError
root = sys.argv[1]
for stmt in sys.argv[2:]:
    try:
        exec(stmt)
        print("OK")
    except LedgerError as e:
        print("LEDGER", type(e).__name__, "|", str(e).replace("\\n", " "))
    except BaseException as e:
        print("RAW", type(e).__name__, "|", e)
"""
LOG = "list(Ledger.open(root).log())"
CHECKOUT = "import torch; assert Ledger.open(root).checkout('HEAD')['w'].equal(torch.ones(3))"
COMMIT = "import torch; Ledger.open(root).commit({'w': torch.zeros(3)}, step=2, rng=False)"
CLI_LOG = "from ledger.cli.app import main; main(['--dir', root, 'log'])"


def _make(root: Path) -> None:
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"w": torch.ones(3)}, step=1, rng=False)


def _child(root: Path, *stmts: str, unprivileged: bool = False) -> list[str]:
    """Run ``stmts`` in a child process (without DAC capabilities when asked); its lines."""
    cmd = [sys.executable, "-c", CHILD, str(root), *stmts]
    if unprivileged and ROOT:
        if shutil.which("capsh") is None:
            pytest.skip("running as root without capsh: permissions cannot be made to bind")
        cmd = ["capsh", f"--drop={BYPASS}", "--", "-c", shlex.join(cmd)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    return out.stdout.splitlines() + [f"STDERR {line}" for line in out.stderr.splitlines()]


def _assert_cli_error(lines: list[str], *words: str) -> None:
    """The CLI's answer: 1-2 lines naming the file, exit 1, no traceback."""
    stderr = [line[len("STDERR ") :] for line in lines if line.startswith("STDERR ")]
    assert not any("Traceback" in line for line in lines), lines
    assert 1 <= len(stderr) <= 2, lines
    for word in words:
        assert word in " ".join(stderr), lines
    assert "RAW SystemExit | 1" in lines, lines


def test_a_missing_event_log_is_named_by_the_api_and_the_cli(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _make(root)
    (root / "events.log").unlink()
    with Ledger.open(root) as lg, pytest.raises(MissingFileError, match=r"events\.log") as info:
        list(lg.log())
    assert info.value.path == str(root / "events.log")
    assert isinstance(info.value, FileNotFoundError)  # still what OS-error handlers expect
    result = run_cli("--dir", root, "log")
    assert result.exit_code == 1
    assert "events.log" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A ledger with one commit on a read-only file system (or, not root, read-only files)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if ROOT:
        if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=False).returncode:
            pytest.skip("root, but tmpfs cannot be mounted here")
        try:
            _make(mnt / "ckpt")
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            yield mnt / "ckpt"
        finally:
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        return
    _make(mnt / "ckpt")
    for path in [mnt / "ckpt", *(mnt / "ckpt").rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        yield mnt / "ckpt"
    finally:
        for path in [mnt / "ckpt", *(mnt / "ckpt").rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


def test_on_a_read_only_file_system_reads_work_and_a_write_fails_once(read_only: Path) -> None:
    lines = _child(read_only, LOG, CHECKOUT, COMMIT)
    assert lines[:2] == ["OK", "OK"], lines
    kind, _, message = lines[2].partition(" | ")
    assert kind in ("LEDGER ReadOnlyLedgerError", "LEDGER LedgerPermissionError"), lines
    assert str(read_only) in message, lines
    result = run_cli("--dir", read_only, "log")
    assert result.exit_code == 0, result.output


def test_an_unreadable_event_log_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _make(root)
    (root / "events.log").chmod(0)
    lines = _child(root, LOG, CLI_LOG, unprivileged=True)
    assert lines[0].startswith("LEDGER LedgerPermissionError |"), lines
    assert "events.log" in lines[0] and "permission denied" in lines[0], lines
    _assert_cli_error(lines[1:], "events.log", "permission denied")


def test_a_directory_it_may_not_write_is_named(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _make(root)
    (root / "objects" / "packs").chmod(0o555)
    lines = _child(root, LOG, COMMIT, unprivileged=True)
    assert lines[0] == "OK", lines  # reading needs no write
    assert lines[1].startswith("LEDGER LedgerPermissionError |"), lines
    assert str(root / "objects" / "packs") in lines[1], lines
    assert not list((root / "objects" / "tmp").iterdir())  # the half-written pack is gone


def test_no_descriptor_left_is_a_ledger_error_naming_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _make(root)
    # Use every descriptor up to the limit, then read the log (API, then CLI). The limit
    # goes back at exit, before coverage (when the tests are measured) saves its data.
    exhaust = (
        "import atexit, os, resource, ledger.cli.app\n"
        "atexit.register(resource.setrlimit, resource.RLIMIT_NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE))\n"
        "free = os.open(os.devnull, os.O_RDONLY); os.close(free)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (free, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))"
    )
    lines = _child(root, exhaust, LOG, CLI_LOG)
    assert lines[0] == "OK", lines
    assert lines[1].startswith("LEDGER TooManyOpenFilesError |"), lines
    assert "ulimit -n" in lines[1], lines
    _assert_cli_error(lines[2:], "ulimit -n")


def test_from_os_error_keeps_ledger_errors_and_names_the_path() -> None:
    err = LedgerError("already translated")
    assert from_os_error(err, "/x") is err  # type: ignore[arg-type]
    made = from_os_error(OSError(5, "Input/output error"), "/ckpt/refs", "in log")
    assert isinstance(made, LedgerError) and isinstance(made, OSError)
    assert str(made) == "Input/output error: /ckpt/refs (in log)"


def test_the_cli_names_an_os_error_outside_the_api_too(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _make(root)
    out = tmp_path / "no" / "such" / "log.jsonl"  # export-log writes it from the CLI itself
    result = run_cli("--dir", root, "export-log", out)
    assert result.exit_code == 1
    assert result.output.startswith("error: no such file or directory: " + str(out))
    assert len(result.output.strip().splitlines()) == 1
