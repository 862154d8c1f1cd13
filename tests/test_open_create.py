"""Creating a ledger: many processes at once (every rank of a job), and an interrupted init."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import torch

from ledger import Ledger
from ledger.api.initdir import write_marker
from ledger.api.inputs import CONFIG_FILE
from ledger.errors import NotALedgerError


def _create_and_commit(root: str, rank: int, barrier: mp.synchronize.Barrier) -> str:
    barrier.wait()  # all processes call open(create=True) at the same moment
    with Ledger.open(root, create=True) as lg:
        c = lg.commit({"w": torch.full((4,), float(rank))}, branch=f"rank{rank}")
        return f"{lg.config.created}|{c.id}"


def _worker(root: str, rank: int, barrier: mp.synchronize.Barrier, out: mp.Queue) -> None:
    try:
        out.put((rank, _create_and_commit(root, rank, barrier)))
    except BaseException as e:  # reported to the test, not swallowed
        out.put((rank, f"ERROR {type(e).__name__}: {e}"))


def test_processes_creating_one_ledger_at_once_all_open_the_same_one(tmp_path: Path) -> None:
    root, n = tmp_path / "ckpt", 4
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), r, barrier, out)) for r in range(n)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    errors = [v for v in results.values() if v.startswith("ERROR")]
    assert errors == []
    created = {v.split("|")[0] for v in results.values()}
    assert len(created) == 1  # one creator; everyone else opened its ledger
    with Ledger.open(root) as lg:
        assert set(lg.branches()) >= {f"rank{r}" for r in range(n)}
        for r in range(n):
            assert lg.checkout(f"rank{r}")["w"].equal(torch.full((4,), float(r)))


def _skeleton(root: Path) -> None:
    """What a crash inside init leaves: its marker, the ledger's own names, no config, no pack."""
    root.mkdir(parents=True)
    write_marker(root, fsync=False)
    (root / "objects" / "packs").mkdir(parents=True)
    (root / "events.log").write_bytes(b"")
    (root / "gc.lock").touch()


def test_an_interrupted_init_is_named_and_started_over_only_with_create(tmp_path: Path) -> None:
    root = tmp_path / "ckpt"
    _skeleton(root)
    with pytest.raises(NotALedgerError, match=r"interrupted init.*create=True"):
        Ledger.open(root)
    with Ledger.open(root, create=True) as lg:
        lg.commit({"w": torch.ones(2)}, step=1)
    assert (root / CONFIG_FILE).is_file()
    with Ledger.open(root) as lg:
        assert lg.checkout("HEAD")["w"].equal(torch.ones(2))


def test_create_refuses_a_directory_holding_other_files_and_leaves_them(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(NotALedgerError, match="not empty"):
        Ledger.open(root, create=True)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    assert (root / "notes.txt").read_text() == "keep me"
