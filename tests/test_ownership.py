"""The ledger never touches what it does not own: links inside its directory, a user's files.

Each test plants what a hostile user or a confused script would (a symbolic link
where the ledger keeps a directory or file, a directory of the user's own that
looks like an interrupted init) and checks that nothing outside the ledger
changed and that the refusal is a ``LedgerError`` naming the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from ledger import Ledger
from ledger.api.initdir import write_marker
from ledger.errors import LedgerError, NotALedgerError, UnsafePathError

OLD = time.time() - 3600  # older than any grace period the tests pass


def _outside(tmp_path: Path) -> Path:
    """A directory of the user's, outside the ledger, holding one file that must survive."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    os.utime(mine / "thesis.tex", (OLD, OLD))
    return mine


def _link_dir(path: Path, target: Path) -> None:
    """Replace the ledger's directory ``path`` with a link to ``target``."""
    shutil.rmtree(path)
    path.symlink_to(target, target_is_directory=True)


def test_gc_refuses_a_linked_tmp_dir_and_deletes_nothing_outside(
    lg: Ledger, tmp_path: Path
) -> None:
    lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    mine = _outside(tmp_path)
    _link_dir(lg.root / "objects" / "tmp", mine)
    with pytest.raises(UnsafePathError, match=r"objects/tmp.*symbolic link") as info:
        lg.gc(grace=0)
    assert info.value.path == str(lg.root / "objects" / "tmp")
    assert (mine / "thesis.tex").read_text() == "precious"


def test_a_ledger_whose_directories_are_links_is_refused_at_open(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    Ledger.open(root, create=True, fsync=False).close()
    mine = _outside(tmp_path)
    for name in ("objects/tmp", "objects/packs"):
        shutil.copytree(root / name, mine / name.replace("/", "-"))
        _link_dir(root / name, mine / name.replace("/", "-"))
        with pytest.raises(UnsafePathError, match=name):
            Ledger.open(root)
        (root / name).unlink()
        shutil.copytree(mine / name.replace("/", "-"), root / name)
    with Ledger.open(root) as lg:  # the real directories back: it opens again
        assert lg.head is None


def test_gc_leaves_directories_and_links_inside_tmp_and_reports_them(
    lg: Ledger, tmp_path: Path
) -> None:
    lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    mine = _outside(tmp_path)
    tmp = lg.root / "objects" / "tmp"
    (tmp / "a-dir").mkdir()
    (tmp / "a-dir" / "inner").write_text("x")
    (tmp / "a-link").symlink_to(mine / "thesis.tex")
    (tmp / "leftover.tmp").write_bytes(b"crash")
    for p in (tmp / "a-dir", tmp / "a-dir" / "inner", tmp / "leftover.tmp"):
        os.utime(p, (OLD, OLD))
    os.utime(tmp / "a-link", (OLD, OLD), follow_symlinks=False)
    dry = lg.gc(dry_run=True, grace=0)
    assert dry.plan is not None
    assert dry.plan.temp_files == ["leftover.tmp"]
    assert dry.plan.temp_skipped == ["a-dir", "a-link"]
    report = lg.gc(grace=0)
    assert report.plan is not None and report.plan.temp_skipped == ["a-dir", "a-link"]
    assert sorted(p.name for p in tmp.iterdir()) == ["a-dir", "a-link"]
    assert (tmp / "a-dir" / "inner").read_text() == "x"
    assert (mine / "thesis.tex").read_text() == "precious"
    result = run_cli("--dir", lg.root, "gc", "--grace", "0")
    assert result.exit_code == 0, result.output
    assert "a-dir" in result.output and "never followed" in result.output


def _link_file(path: Path, outside: Path) -> bytes:
    """Move the ledger's file ``path`` to ``outside`` and leave a link to it; its bytes."""
    shutil.move(path, outside)
    path.symlink_to(outside)
    return outside.read_bytes()


def test_a_linked_event_log_is_never_appended_to(lg: Ledger, tmp_path: Path) -> None:
    lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    outside = tmp_path / "elsewhere.log"
    before = _link_file(lg.root / "events.log", outside)
    with pytest.raises(UnsafePathError, match=r"events\.log.*symbolic link"):
        lg.commit({"w": torch.zeros(4)}, step=2, rng=False)
    assert outside.read_bytes() == before


def test_a_linked_ref_view_is_replaced_never_written_through(lg: Ledger, tmp_path: Path) -> None:
    lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    outside = tmp_path / "my-refs"
    before = _link_file(lg.root / "refs", outside)
    second = lg.commit({"w": torch.zeros(4)}, step=2, rng=False)
    assert outside.read_bytes() == before
    assert not (lg.root / "refs").is_symlink()  # the view was rewritten in place of the link
    with Ledger.open(lg.root) as again:
        assert again.resolve("HEAD") == second.id


def test_a_linked_lock_file_is_never_created_outside(lg: Ledger, tmp_path: Path) -> None:
    target = tmp_path / "not-yet"
    (lg.root / "lock").unlink(missing_ok=True)
    (lg.root / "lock").symlink_to(target)  # dangling: O_CREAT would make the target
    with pytest.raises(UnsafePathError, match="lock"):
        lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    assert not target.exists()


def test_a_linked_remotes_dir_is_never_written_through(lg: Ledger, tmp_path: Path) -> None:
    mine = _outside(tmp_path)
    (lg.root / "remotes").symlink_to(mine, target_is_directory=True)
    with pytest.raises(UnsafePathError, match="remotes"):
        lg.remote_add("origin", str(tmp_path / "remote"))
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]


def test_the_cli_names_the_refused_link_in_one_line(lg: Ledger, tmp_path: Path) -> None:
    lg.commit({"w": torch.ones(4)}, step=1, rng=False)
    _link_dir(lg.root / "objects" / "tmp", _outside(tmp_path))
    result = run_cli("--dir", lg.root, "gc", "--grace", "0")
    assert result.exit_code == 1
    assert "symbolic link" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_unsafe_path_error_is_a_ledger_error() -> None:
    assert issubclass(UnsafePathError, LedgerError)
    assert not issubclass(UnsafePathError, NotALedgerError)


# -- init: start over only what the ledger provably began ------------------------------------


def _lookalike(root: Path) -> dict[str, bytes]:
    """A directory of the user's own that looks like an interrupted init (no marker)."""
    (root / "objects" / "packs").mkdir(parents=True)
    (root / "objects" / "tmp").mkdir()
    (root / "refs").write_bytes(b"my refs")
    (root / "events.log").write_bytes(b"my log")
    return {"refs": b"my refs", "events.log": b"my log"}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_init_never_removes_a_lookalike_without_the_marker(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    files = _lookalike(root)
    before = _tree(root)
    with pytest.raises(NotALedgerError, match=r"no \.ledger-init marker.*leaves them alone"):
        Ledger.open(root, create=True)
    result = run_cli("init", root)
    assert result.exit_code == 1 and ".ledger-init" in result.output
    assert _tree(root) == before
    assert {name: (root / name).read_bytes() for name in files} == files


def test_an_init_killed_before_its_config_is_started_over(tmp_path: Path, python: str) -> None:
    # A real init, stopped right before it writes LEDGER: what a crash leaves.
    root = tmp_path / "ckpt"
    code = (
        "import sys, ledger.api.core as core\n"
        "def stop(*a, **k): raise SystemExit(7)\n"
        "core.atomic_write = stop\n"
        f"core.LedgerCore.open({str(root)!r}, create=True, fsync=False)\n"
    )
    assert subprocess.run([python, "-c", code], check=False).returncode == 7
    assert (root / ".ledger-init").is_file() and not (root / "LEDGER").exists()
    with pytest.raises(NotALedgerError, match="interrupted init"):
        Ledger.open(root)
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"w": torch.ones(2)}, step=1, rng=False)
    assert not (root / ".ledger-init").exists()  # a complete ledger keeps no marker


def test_an_interrupted_init_holding_a_foreign_file_is_refused_whole(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    write_marker(root, fsync=False)
    mine = _outside(tmp_path)
    (root / "objects" / "tmp").mkdir(parents=True)
    (root / "objects" / "tmp" / "notes.txt").write_text("mine")
    (root / "refs").symlink_to(mine / "thesis.tex")
    before = _tree(root)
    with pytest.raises(NotALedgerError, match="nothing was removed"):
        Ledger.open(root, create=True)
    assert _tree(root) == before
    assert (mine / "thesis.tex").read_text() == "precious"


def test_an_init_cut_short_after_its_marker_alone_is_started_over(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    root.mkdir()
    write_marker(root, fsync=False)
    with Ledger.open(root, create=True, fsync=False) as lg:
        assert lg.head is None
    assert not (root / ".ledger-init").exists()
