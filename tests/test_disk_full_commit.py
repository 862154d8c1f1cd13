"""A full disk under the ledger itself: commits check first, gc and pull fail cleanly.

On a real, small tmpfs (mounted for the test; skipped where this process may
not mount one): a commit whose new bytes cannot fit is refused before it
writes anything, blocking or in the background; an unchanged re-commit on an
almost-full disk still lands (its chunks are stored already); and when gc's
repack, a pull or a clone runs out of space part-way, the API raises
``DiskFullError``, the CLI prints one line and exits 1, and no half-written
pack or temporary file is left (a push to a full directory remote: one line
naming the OS's reason, nothing partial on the remote).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import Result
from helpers import pack_ids, run_cli, tiny_disk

from ledger import Ledger
from ledger.errors import DiskFullError
from ledger.history.records import Commit
from ledger.objects.packs import read_pack_index

KEEP_FREE = 160 << 10  # what fill_disk leaves: room for metadata, not for a tensor


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def one_line_error(result: Result, says: str = "disk is full") -> None:
    """The command failed with exit status 1 and one line saying ``says``, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert says in lines[0], lines[0]


def fill_disk(where: Path, keep: int = KEEP_FREE) -> Path:
    """Take all but ``keep`` bytes of the disk ``where`` is on, with one filler file."""
    filler = where / "filler"
    free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
    filler.write_bytes(b"\0" * max(0, free - keep))
    return filler


def state(seed: int, n: int = 150_000) -> dict[str, torch.Tensor]:
    """600 KB of random 32-bit words (n values) that do not compress, distinct per seed.

    Not ``randn``: the float codec stores normal floats at ~0.8 of raw, which let the
    "more than the disk holds" states fit.
    """
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randint(-(2**31), 2**31 - 1, (n,), dtype=torch.int32, generator=g)}


@pytest.fixture
def disk() -> Iterator[Path]:
    """A 4 MiB tmpfs."""
    with tiny_disk("4m") as where:
        yield where


@contextlib.contextmanager
def full_after_one_commit(
    disk: Path,
) -> Iterator[tuple[Ledger, Commit, dict[str, tuple[int, int]]]]:
    """A ledger on ``disk`` with one commit, the disk then filled; the files as they were."""
    root = disk / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        first = lg.commit(state(1), rng=False)
        fill_disk(disk)
        yield lg, first, tree(root)


def test_a_commit_too_big_for_the_disk_is_refused_before_writing(disk: Path) -> None:
    with full_after_one_commit(disk) as (lg, first, before):
        root = lg.root
        with pytest.raises(DiskFullError) as info:
            lg.commit(state(2), rng=False)
        said = str(info.value)
        assert "needs up to 66" in said and "KiB is free" in said and "nothing was written" in said
        assert tree(root) == before  # not a byte written, not even a temporary pack
        assert lg.resolve("main") == first.id
        small = lg.commit({"w": torch.ones(8)}, rng=False)  # what fits still commits
        assert small.parents == [first.id]
        assert lg.verify(full=True).ok


def test_a_stage_part_too_big_for_the_disk_is_refused_and_a_stored_one_is_not(
    disk: Path,
) -> None:
    # Stage.write: one rank's share of a multi-process commit (adapters/distributed.py)
    with full_after_one_commit(disk) as (lg, first, before):
        root = lg.root
        with lg.stage() as st:
            with pytest.raises(DiskFullError, match="this part of the commit needs up to"):
                st.write(state(2))
            assert tree(root) == before  # not a byte written
            part = st.write(state(1))  # its chunks are stored: it fits
            assert part.stats.chunks_written == 0
            again = st.commit({"shard": part})
        assert again.parents == [first.id]
        assert torch.equal(lg.checkout(again.id)["shard"]["w"], state(1)["w"])


def test_an_unchanged_recommit_on_an_almost_full_disk_is_never_refused(disk: Path) -> None:
    root = disk / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        first = lg.commit(state(1), rng=False)
    fill_disk(disk)
    # a new process: nothing remembered, the chunks are fingerprinted and found stored
    with Ledger.open(root, fsync=False) as lg:
        again = lg.commit(state(1), rng=False)
        assert again.parents == [first.id] and again.stats.chunks_written == 0
        with pytest.raises(DiskFullError):
            lg.commit(state(2), rng=False)  # while a changed one does not fit
    with Ledger.open(root, fsync=False, trust_versions=True) as lg:
        live = state(1)
        lg.commit(live, rng=False)
        trusted = lg.commit(live, rng=False)  # unchanged tensors are not even read
        assert trusted.stats.chunks_trusted == trusted.stats.chunks_total > 0
        assert torch.equal(lg.checkout("HEAD")["w"], live["w"])


def test_a_background_commit_reports_the_refusal_like_any_background_failure(
    disk: Path,
) -> None:
    with full_after_one_commit(disk) as (lg, first, before):
        root = lg.root
        handle = lg.commit(state(2), rng=False, blocking=False)
        with pytest.raises(DiskFullError, match="nothing was written"):
            handle.result()
        with pytest.raises(DiskFullError):  # and once more on the next call: never lost
            lg.branches()
        assert tree(root) == before
        assert lg.resolve("main") == first.id


def _age(root: Path) -> None:
    when = time.time() - 3600
    for pack in (root / "objects" / "packs").iterdir():
        os.utime(pack, (when, when))


def test_a_gc_repack_that_fills_the_disk_leaves_every_pack_as_it_was(disk: Path) -> None:
    root = disk / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        both = {"keep": state(1)["w"], "drop": state(2)["w"]}
        lg.commit(both, rng=False, branch="x")  # one pack: keep (live later) and drop
        lg.commit({"keep": both["keep"]}, rng=False)  # main reuses keep's chunks
        lg.delete_branch("x", force=True)
        _age(root)
        assert lg.gc(dry_run=True, grace=0).packs_rewritten == 1
    fill_disk(disk, keep=300 << 10)  # room for the events, not for keep's copy
    packs = pack_ids(root)
    one_line_error(run_cli("--dir", root, "gc", "--grace", "0"))
    assert pack_ids(root) == packs
    assert list((root / "objects" / "tmp").iterdir()) == []
    with Ledger.open(root, fsync=False) as lg:
        with pytest.raises(DiskFullError):
            lg.gc(grace=0)
        assert pack_ids(root) == packs and list((root / "objects" / "tmp").iterdir()) == []
        (disk / "filler").unlink()
        assert lg.gc(grace=0).packs_rewritten == 1  # with space again it finishes the job
        assert lg.verify(full=True).ok
        assert torch.equal(lg.checkout("main")["keep"], state(1)["w"])


def pushed_big_state(tmp_path: Path) -> Path:
    """A directory remote holding a 4.8 MB commit (more than the disk holds), pushed from the
    ledger ``tmp_path / "src"`` (its remote ``origin``)."""
    remote = tmp_path / "remote"
    with Ledger.open(tmp_path / "src", create=True, fsync=False) as src:
        src.commit(state(1, 1_200_000), rng=False)
        src.remote_add("origin", str(remote))
        src.push("origin")
    return remote


def test_a_pull_that_fills_the_disk_is_one_line_and_leaves_no_partial_pack(
    disk: Path, tmp_path: Path
) -> None:
    remote = pushed_big_state(tmp_path)
    root = disk / "ckpt"
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.remote_add("origin", str(remote))
    one_line_error(run_cli("--dir", root, "pull", "origin", "main"))
    # the history fetched first is whole; the state's pack never became visible half-written
    for name in pack_ids(root):
        read_pack_index(root / "objects" / "packs" / f"{name}.pack")
    assert list((root / "objects" / "tmp").iterdir()) == []
    with Ledger.open(root, fsync=False) as lg:
        with pytest.raises(DiskFullError):
            lg.pull("origin", "main")
        assert list((root / "objects" / "tmp").iterdir()) == []
        assert "main" not in lg.branches()
        assert lg.verify(full=True).ok


def test_a_clone_or_push_that_fills_the_disk_is_one_line_and_leaves_no_partial_file(
    disk: Path, tmp_path: Path
) -> None:
    remote = pushed_big_state(tmp_path)
    with Ledger.open(tmp_path / "src", fsync=False) as src:
        src.remote_add("full", str(disk / "remote"))
        pushed = run_cli("--dir", tmp_path / "src", "push", "full")
    cloned = run_cli("clone", remote, disk / "copy")
    # the remote's own error names the write and the OS's reason; the clone's is ours
    one_line_error(pushed, "No space left on device")
    one_line_error(cloned)
    assert not (disk / "copy").exists()  # a failed clone removes what it made
    assert [p for p in (disk / "remote").rglob("*") if p.is_file() and "tmp" in p.parent.name] == []
    with Ledger.open(tmp_path / "src", fsync=False) as src:
        assert "refs/remotes/full/main" not in src.refs.snapshot()  # the failed push moved no ref
        assert "refs/remotes/origin/main" in src.refs.snapshot()  # (the one that landed did)
