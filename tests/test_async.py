"""Asynchronous commits: snapshot semantics, ordering, error surfacing, draining."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from helpers import FullFile

from ledger import Ledger
from ledger.errors import DiskFullError
from ledger.objects import store as store_module
from ledger.pending import BACKGROUND_NICE


def test_values_changed_after_the_call_do_not_leak_into_the_commit(lg: Ledger) -> None:
    model = torch.nn.Linear(64, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    handle = lg.commit({"model": model}, step=1, blocking=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # dcp.async_save without staging would write these values
    commit = handle.result()
    stored = lg.checkout(commit.id)["model"]
    for key, value in before.items():
        assert torch.equal(stored[key], value)


def test_two_async_commits_land_in_order(lg: Ledger) -> None:
    w = torch.zeros(1000)
    first = lg.commit({"w": w}, step=1, blocking=False)
    w += 1
    second = lg.commit({"w": w}, step=2, blocking=False)
    assert second.result().parents == [first.result().id]
    assert [c.step for c in lg.log()] == [2, 1]
    assert lg.wait() is not None
    assert lg.checkout("HEAD~1")["w"].sum().item() == 0


def test_a_background_failure_surfaces_on_result_and_on_the_next_call(
    lg: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = lg.commit({"w": torch.ones(10)}, rng=False)
    real_open = store_module.PackWriter._open

    def open_full(self: store_module.PackWriter) -> None:
        real_open(self)
        assert self._pack is not None
        self._pack.fh = FullFile(self._pack.fh, lambda data: True)

    monkeypatch.setattr(store_module.PackWriter, "_open", open_full)
    handle = lg.commit({"w": torch.randn(1000)}, rng=False, blocking=False)
    with pytest.raises(DiskFullError):
        handle.result()
    with pytest.raises(DiskFullError):  # surfaced once more, on the next call: never lost
        lg.branches()
    monkeypatch.setattr(store_module.PackWriter, "_open", real_open)
    assert lg.resolve("main") == good.id  # no partial commit became visible
    assert not list((lg.root / "objects" / "tmp").glob("*.pack"))
    assert lg.verify(full=True).ok
    after = lg.commit({"w": torch.zeros(3)}, rng=False, blocking=False).result()
    assert after.parents == [good.id]


def test_close_drains_a_pending_commit(ledger_dir: Path) -> None:
    lg = Ledger.open(ledger_dir, create=True, fsync=False)
    handle = lg.commit({"w": torch.randn(1 << 16)}, step=7, blocking=False)
    lg.close()
    assert handle.done()
    with Ledger.open(ledger_dir) as again:
        assert again.head is not None and again.head.step == 7


def test_a_state_over_the_memory_budget_is_committed_synchronously(ledger_dir: Path) -> None:
    with Ledger.open(ledger_dir, create=True, fsync=False, async_budget=1024) as lg:
        with pytest.warns(UserWarning, match="memory budget"):
            handle = lg.commit({"w": torch.zeros(10_000)}, blocking=False)
        assert handle.done() and handle.result().stats.tensors >= 1


CHILD = textwrap.dedent(
    """
    import sys, time, torch
    from ledger import Ledger
    lg = Ledger.open(sys.argv[1], create=True, fsync=True)
    state = {"w": torch.randn(8 << 20)}   # 32 MiB: takes a moment to write
    lg.commit(state, step=1, blocking=False)
    print("started", flush=True)
    time.sleep(60)
    """
)


def test_sigterm_drains_a_started_commit_before_the_process_dies(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGTERM)
    assert (
        proc.wait(timeout=60) == -signal.SIGTERM
    )  # the default action still happens, after the drain
    with Ledger.open(tmp_path / "ckpt") as lg:
        assert lg.head is not None and lg.head.step == 1
        assert lg.verify(full=True).ok


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_background_commit_threads_run_at_a_lower_cpu_priority(lg: Ledger) -> None:
    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    mine = nice()
    handle = lg.commit({"w": torch.ones(1 << 16)}, rng=False, blocking=False)
    handle.result()
    assert lg.background_pool.submit(nice).result() == min(19, mine + BACKGROUND_NICE)
    assert lg.pool.submit(nice).result() == mine  # blocking commits and reads: unchanged
    assert nice() == mine


def test_snapshot_buffers_are_reused_only_after_the_commit_that_used_them(lg: Ledger) -> None:
    w = torch.randn(1 << 18)
    handles, wanted = [], []
    for _ in range(4):
        wanted.append(w.clone())
        handles.append(lg.commit({"w": w}, rng=False, blocking=False))
        w += 1.0  # the next snapshot overwrites the buffers this one used
    for handle, want in zip(handles, wanted, strict=True):
        assert torch.equal(lg.checkout(handle.result().id)["w"], want)
    staged = lg._staging.take(w.numel() * 4)
    assert staged is not None and torch.equal(staged.view(torch.float32), wanted[-1])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc/self/task (Linux)")
def test_ledger_threads_leave_sigterm_and_sigint_to_the_main_thread(ledger_dir: Path) -> None:
    """A signal handed to an idle worker would not wake a main thread asleep in C (see threads.py)."""
    with Ledger.open(ledger_dir, create=True, fsync=True) as lg:
        big = 3 << 20  # 12 MiB: more than one O_DIRECT buffer, so the flush thread starts
        lg.commit({"w": torch.randn(big)}, rng=False)
        lg.commit({"w": torch.randn(big)}, rng=False, blocking=False).result()
        lg.checkout()
        blocked = {
            t.name: int(
                next(
                    line.split()[1]
                    for line in Path(f"/proc/self/task/{t.native_id}/status")
                    .read_text()
                    .splitlines()
                    if line.startswith("SigBlk:")
                ),
                16,
            )
            for t in threading.enumerate()
        }
    term, intr = 1 << (signal.SIGTERM - 1), 1 << (signal.SIGINT - 1)
    workers = {name: mask for name, mask in blocked.items() if name.startswith("ledger")}
    assert {name.rstrip("_0123456789") for name in workers} >= {
        "ledger",
        "ledger-bg",
        "ledger-commit",
        "ledger-flush",
    }
    assert all(mask & term and mask & intr for mask in workers.values()), workers
    assert not blocked[threading.main_thread().name] & term  # the main thread still takes them
