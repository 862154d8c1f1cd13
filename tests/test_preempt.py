"""Preemption: a signal mid-epoch commits at the next safe point, and the resumed run is exact.

Child processes (tests/scripts/preempt_train.py) run a real training loop with
a ``Checkpointer``; the test sends the signal with ``os.kill`` once the child
reported the step, so it lands between a step and the next ``ckpt.step``.
The child commits that step, hands the signal to the default action (it dies
by the signal), and a second run resumes to final weights bit-exact equal to
an uninterrupted run's. Also: SIGUSR1 configured instead of SIGTERM, two gloo
ranks where only one gets the signal and both commit the same step, an
``every_seconds`` schedule on an injected clock, and the SIGTERM drain of
``ledger.pending`` leaving the signal to a watch that holds it.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import SCRIPTS, load_script

from ledger import Ledger
from ledger.adapters.torch import Checkpointer
from ledger.errors import PreemptConfigError
from ledger.preempt import PreemptSignal, claim

SCRIPT = SCRIPTS / "preempt_train.py"
TOTAL = 14
PAUSE = 7  # epoch 1, batch 2 (5 batches an epoch)
util = load_script("adapter_util")


def spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(proc: subprocess.Popen[str], line: str) -> list[str]:
    """Read the child's lines up to ``line``; fail with its output if it ends first."""
    assert proc.stdout is not None
    seen: list[str] = []
    while (got := proc.stdout.readline()) != line + "\n":
        if not got:
            proc.wait(timeout=60)
            raise AssertionError(f"child ended before {line!r}:\n{''.join(seen)}")
        seen.append(got)
    return seen


def ends(proc: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> object:
    """The final weights of an uninterrupted run (its own ledger)."""
    tmp = tmp_path_factory.mktemp("straight")
    code, text = ends(spawn(tmp / "ckpt", TOTAL, -1, "SIGTERM", tmp / "out"))
    assert code == 0 and text.endswith("done\n"), text
    return util.load_image(tmp / "out")


def preempt(ledger: Path, sig: signal.Signals, signals: str) -> None:
    """Run the loop, send ``sig`` after step PAUSE, and see it commit that step and die by it."""
    proc = spawn(ledger, TOTAL, PAUSE, signals, ledger.parent / "unused")
    wait_for(proc, f"step {PAUSE}")
    os.kill(proc.pid, sig)
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    code, text = ends(proc)
    assert code == -sig, text  # the default action ran after the commit
    with Ledger.open(ledger) as lg:
        head = lg.get("HEAD")
        assert (head.step, head.message) == (PAUSE, "preempted"), text


def test_sigterm_mid_epoch_commits_that_step_and_the_resumed_run_is_bit_exact(
    tmp_path: Path, straight: object
) -> None:
    ledger = tmp_path / "ckpt"
    preempt(ledger, signal.SIGTERM, "SIGTERM")
    out = tmp_path / "resumed"
    code, text = ends(spawn(ledger, TOTAL, -1, "SIGTERM", out))
    assert code == 0 and text.startswith(f"step {PAUSE + 1}\n"), text
    assert util.load_image(out) == straight


def test_sigusr1_configured_commits_like_sigterm(tmp_path: Path) -> None:
    preempt(tmp_path / "ckpt", signal.SIGUSR1, "SIGUSR1")


def test_only_the_configured_signals_are_taken_over(lg: Ledger) -> None:
    before = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(lg, state={"w": torch.ones(1)}, signals=["SIGUSR2"])
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGUSR2) is not signal.SIG_DFL
    ckpt.close()
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL
    assert Checkpointer(lg, state={"w": torch.ones(1)}, signals=None).safe_point.watch is None


@pytest.mark.slow
def test_two_ranks_commit_the_same_step_when_only_one_gets_the_signal(tmp_path: Path) -> None:
    init = tmp_path / "rendezvous"
    ranks = [
        spawn(tmp_path / "ckpt", TOTAL, PAUSE, "SIGTERM", tmp_path / "out", r, 2, init)
        for r in range(2)
    ]
    for proc in ranks:
        wait_for(proc, f"step {PAUSE}")
    os.kill(ranks[1].pid, signal.SIGTERM)
    for proc in ranks:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    (code0, text0), (code1, text1) = ends(ranks[0]), ends(ranks[1])
    assert code0 == 0 and text0.endswith(f"preempted {PAUSE}\n"), text0
    assert code1 == -signal.SIGTERM, text1
    for r in range(2):
        with Ledger.open(tmp_path / "ckpt" / f"rank{r}") as lg:
            head = lg.get("HEAD")
            assert (head.step, head.message) == (PAUSE, "preempted"), r


def test_every_seconds_commits_at_the_first_step_after_the_interval(lg: Ledger) -> None:
    now = [100.0]
    w = torch.zeros(2)
    ckpt = Checkpointer(lg, state={"w": w}, every=None, every_seconds=60, clock=lambda: now[0])
    made = []
    for step, advance in enumerate([10, 30, 25, 1, 59, 0.5, 200, 0]):
        now[0] += advance
        if ckpt.step(step) is not None:
            made.append(step)
    # 10+30+25 >= 60 at step 2; then 1+59 at step 4; then 200 at step 6
    assert made == [2, 4, 6]
    assert [c.step for c in lg.log()] == [6, 4, 2]
    ckpt.close()


def test_a_commit_for_any_reason_restarts_the_interval(lg: Ledger) -> None:
    now = [0.0]
    ckpt = Checkpointer(
        lg, state={"w": torch.ones(1)}, every=3, every_seconds=10, clock=lambda: now[0]
    )
    made = []
    for step in range(1, 8):
        now[0] += 4
        if ckpt.step(step) is not None:
            made.append(step)
    # step 3 (schedule, t=12 also due) restarts the clock; t=24 at step 6 is the schedule again
    assert made == [3, 6]
    ckpt.close()


@pytest.mark.parametrize("bad", [0, -1.5, "soon", True])
def test_every_seconds_must_be_a_positive_number(lg: Ledger, bad: object) -> None:
    with pytest.raises(PreemptConfigError, match="every_seconds"):
        Checkpointer(lg, state={"w": torch.ones(1)}, every_seconds=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["SIGNOPE", "KILL", 99999])
def test_signals_must_name_a_catchable_signal(lg: Ledger, bad: object) -> None:
    with pytest.raises(PreemptConfigError, match="signals="):
        Checkpointer(lg, state={"w": torch.ones(1)}, signals=[bad])  # type: ignore[list-item]


def test_in_process_the_signal_commits_the_next_step_and_the_previous_handler_runs(
    lg: Ledger, recorded: list[int]
) -> None:
    ckpt = Checkpointer(lg, state={"w": torch.ones(1)}, every=None, signals=["USR2"])
    assert ckpt.step(0) is None
    signal.raise_signal(signal.SIGUSR2)
    assert recorded == []  # the handler only set the flag
    made = ckpt.step(1)
    assert made is not None and lg.get("HEAD").step == 1
    assert recorded == [signal.SIGUSR2] and ckpt.preempted
    ckpt.close()
    signal.raise_signal(signal.SIGUSR2)  # the previous handler is back
    assert recorded == [signal.SIGUSR2] * 2


def test_the_pending_drain_leaves_a_held_signal_to_the_watch() -> None:
    watch = PreemptSignal(["SIGUSR2"])
    try:
        assert claim(signal.SIGUSR2) and watch.requested()
    finally:
        watch.close()
    assert not claim(signal.SIGUSR2)


def test_made_off_the_main_thread_it_installs_on_the_main_thread_later() -> None:
    import threading

    made: list[PreemptSignal] = []
    t = threading.Thread(target=lambda: made.append(PreemptSignal(["SIGUSR2"])))
    t.start()
    t.join()
    watch = made[0]
    try:
        assert not watch.installed
        assert not watch.requested() and watch.installed  # installed on first main-thread call
        signal.raise_signal(signal.SIGUSR2)
        assert watch.requested()
    finally:
        watch.close()


def test_off_the_main_thread_it_warns_once_that_it_cannot_watch() -> None:
    import threading

    caught: list[str] = []

    def body() -> None:
        import warnings

        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            watch = PreemptSignal(["SIGUSR2"])
            watch.requested()
            watch.requested()
            watch.close()
        caught.extend(str(x.message) for x in w)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert len(caught) == 1 and "main thread" in caught[0]


def test_a_hand_written_accelerate_or_distributed_loop_uses_the_safe_point(
    recorded: list[int],
) -> None:
    from ledger.adapters.distributed import SafePoint

    now = [0.0]
    point = SafePoint(["SIGUSR2"], every_seconds=5, clock=lambda: now[0])
    assert not point.due()
    now[0] = 5.0
    due = point.due()
    assert due.timed and not due.signalled and point.done(due) is False
    assert not point.due()  # the interval started again at the commit
    signal.raise_signal(signal.SIGUSR2)
    assert recorded == []
    due = point.due()
    assert due.signalled and point.done(due) is True and recorded == [signal.SIGUSR2]
    point.close()


@pytest.fixture
def recorded() -> Iterator[list[int]]:
    """SIGUSR2's handler before the ledger's: it records each signal it gets."""
    seen: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGUSR2, before)


def test_an_abandoned_checkpointer_takes_no_signal_from_the_next_one(
    lg: Ledger, recorded: list[int]
) -> None:
    old = Checkpointer(lg, state={"w": torch.ones(1)}, every=None, signals=["USR2"])
    del old
    gc.collect()
    with Checkpointer(lg, state={"w": torch.ones(1)}, every=None, signals=["USR2"]) as ckpt:
        signal.raise_signal(signal.SIGUSR2)
        assert ckpt.step(1) is not None
        assert recorded == [signal.SIGUSR2]  # handed to the handler before the ledger's


def test_the_same_signal_twice_before_a_safe_point_is_one_preemption(
    lg: Ledger, recorded: list[int]
) -> None:
    with Checkpointer(lg, state={"w": torch.ones(1)}, every=None, signals=["USR2"]) as ckpt:
        signal.raise_signal(signal.SIGUSR2)
        signal.raise_signal(signal.SIGUSR2)  # e.g. the scheduler's, then torchrun's copy
        assert recorded == []
        assert ckpt.step(3) is not None and recorded == [signal.SIGUSR2]
        assert ckpt.step(4) is None  # the flag was consumed once
    signal.raise_signal(signal.SIGUSR2)  # closed: the previous handler is back
    assert recorded == [signal.SIGUSR2] * 2
