"""``auto_gc``: gc runs by itself every N commits, blocking or not."""

from __future__ import annotations

from pathlib import Path

import torch

from ledger import Ledger
from ledger.retention import KeepLast


def test_auto_gc_expires_after_every_n_commits(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, auto_gc=2) as lg:
        lg.set_retention(KeepLast(1))
        ids = [lg.commit({"w": torch.full((8,), float(i))}, rng=False).id for i in range(4)]
        expired = lg.refs.state().expired
        assert set(expired) == set(ids[:3])  # the 4th commit triggered the second gc
        assert lg.checkout("HEAD")["w"][0].item() == 3.0


def test_auto_gc_after_async_commits_runs_on_the_callers_thread(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, auto_gc=1) as lg:
        lg.set_retention(KeepLast(1))
        first = lg.commit({"w": torch.zeros(8)}, rng=False, blocking=False).result()
        second = lg.commit({"w": torch.ones(8)}, rng=False, blocking=False).result()
        assert lg.refs.state().expired == {}  # the gc due after `second` has not run yet
        third = lg.commit({"w": torch.ones(8) * 2}, rng=False)  # runs it, then its own
        assert set(lg.refs.state().expired) == {first.id, second.id}
        assert lg.resolve("HEAD") == third.id
