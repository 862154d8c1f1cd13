"""Errors people and programs can act on: fields on every error, stdlib meanings, CLI hints.

Each error here is caused for real (a lost race, a held lock, a missing
revision), never constructed by hand, so the fields asserted are the ones
the raising code fills in.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from helpers import flip_stored_byte, run_cli

from ledger import Ledger
from ledger.errors import (
    AmbiguousRevisionError,
    ClosedLedgerError,
    CommitExpiredError,
    CorruptionError,
    LedgerError,
    LockTimeoutError,
    NotALedgerError,
    RefConflictError,
    RevisionNotFoundError,
    StateMismatchError,
    UnmergedBranchError,
    UnsupportedValueError,
)
from ledger.history.refs import GcLock
from ledger.history.revisions import resolve


def test_a_lost_race_names_the_ref_and_both_ids(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as one:
        first = one.commit({"w": torch.ones(1)})
        with Ledger.open(ledger_dir, fsync=False) as two:
            moved = two.commit({"w": torch.zeros(1)})
        with pytest.raises(RefConflictError) as info:
            one.move_branch("main", first.id, expected=first.id)
    assert info.value.ref == "refs/heads/main"
    assert info.value.expected == first.id and info.value.actual == moved.id
    assert info.value.fields == {
        "ref": "refs/heads/main",
        "expected": first.id,
        "actual": moved.id,
    }


def test_a_held_lock_times_out_as_a_timeout_error(tmp_path: Path) -> None:
    lock = GcLock(tmp_path / "gc.lock", timeout=0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock.hold(shared=False):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(30)
    try:
        with pytest.raises(TimeoutError) as info, lock.hold(shared=True):
            pass
    finally:
        release.set()
        thread.join()
    assert isinstance(info.value, LockTimeoutError) and isinstance(info.value, LedgerError)
    assert info.value.path == str(tmp_path / "gc.lock")


def test_revision_errors_are_lookup_errors_with_the_revision(lg: Ledger) -> None:
    lg.commit({"w": torch.ones(1)}, rng=False)
    with pytest.raises(LookupError) as missing:
        lg.resolve("no-such-branch")
    assert isinstance(missing.value, RevisionNotFoundError)
    assert missing.value.revision == "no-such-branch"
    ids = ["abcd" + "0" * 60, "abcd" + "1" * 60, "ffff" + "0" * 60]
    with pytest.raises(AmbiguousRevisionError) as ambiguous:
        resolve("abcd", {}, lambda: ids, lambda _cid: None)
    assert ambiguous.value.revision == "abcd" and ambiguous.value.candidates == ids[:2]


def test_value_errors_are_value_errors_with_the_path(lg: Ledger) -> None:
    with pytest.raises(ValueError) as info:
        lg.commit({"model": {"bad": object()}})
    assert isinstance(info.value, UnsupportedValueError)
    lg.commit({"w": torch.ones(2)})
    with pytest.raises(ValueError) as mismatch:
        lg.restore({"w": torch.ones(3)})
    assert isinstance(mismatch.value, StateMismatchError)


def test_using_a_closed_ledger_is_a_value_error_like_a_closed_file(ledger_dir: Path) -> None:
    lg = Ledger.open(ledger_dir, create=True, fsync=False)
    lg.close()
    with pytest.raises(ValueError) as info:
        lg.branches()
    assert isinstance(info.value, ClosedLedgerError)


def test_expired_and_unmerged_errors_carry_the_commit(lg: Ledger) -> None:
    base = lg.commit({"w": torch.ones(1)})
    lg.expire(base.id, reason="licence")
    with pytest.raises(CommitExpiredError) as expired:
        lg.checkout(base.id)
    assert expired.value.commit == base.id and expired.value.reason == "licence"
    side = lg.commit({"w": torch.zeros(1)}, branch="side")
    with pytest.raises(UnmergedBranchError) as unmerged:
        lg.delete_branch("side")
    assert unmerged.value.branch == "side" and unmerged.value.commit == side.id
    assert "ledger branch" not in str(unmerged.value)  # shell hints are the CLI's


def test_library_messages_name_no_shell_command(tmp_path: Path) -> None:
    with pytest.raises(NotALedgerError) as info:
        Ledger.open(tmp_path / "nothing")
    assert "`ledger" not in str(info.value) and "create=True" in str(info.value)
    assert info.value.path == str(tmp_path / "nothing") and info.value.exists is False


def test_cli_adds_the_shell_hint_under_the_message(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit({"w": torch.ones(1)})
        lg.commit({"w": torch.zeros(1)}, branch="side")
    result = run_cli("--dir", ledger_dir, "branch", "-d", "side")
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 2
    assert lines[0].startswith("error: branch 'side'")
    assert lines[1] == "hint: `ledger branch -D side` deletes it anyway"


def test_cli_json_errors_carry_the_fields_and_the_hint(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit({"w": torch.ones(1)})
    result = run_cli("--dir", ledger_dir, "show", "nope", "--json")
    doc = json.loads(result.stdout)["error"]
    assert result.exit_code == 1 and doc["type"] == "RevisionNotFoundError"
    assert doc["fields"] == {"revision": "nope"}
    assert "ledger log --all" in doc["hint"]


def test_a_damaged_chunk_names_object_pack_and_tensor(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False) as lg:
        lg.commit({"model": {"w": torch.randn(4096)}}, rng=False)
        _, manifest = lg.manifest("HEAD")
        chunk = manifest.root.values[0].values[0].chunks[0]  # type: ignore[union-attr]
        pack = lg.store.locate(bytes.fromhex(chunk))[0]  # type: ignore[index]
        flip_stored_byte(lg, chunk)
    with Ledger.open(ledger_dir) as lg, pytest.raises(CorruptionError) as info:
        lg.checkout("HEAD")
    assert info.value.object == chunk and info.value.pack == pack
    assert info.value.path is not None and "w" in info.value.path
    assert set(info.value.fields) == {"object", "pack", "path"}
