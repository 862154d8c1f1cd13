"""The gc lock's turnstile: a stream of overlapping commits cannot starve gc."""

from __future__ import annotations

import threading
from pathlib import Path

from ledger.history.refs import GcLock


def test_gc_gets_in_while_overlapping_shared_holders_keep_coming(tmp_path: Path) -> None:
    lock = GcLock(tmp_path / "gc.lock")
    stop = threading.Event()
    gc_done = threading.Event()
    in_gc = threading.Event()
    counts = [0, 0]
    cond = threading.Condition()

    def committer(me: int) -> None:
        # Baton passing: each leaves the lock only once the other has taken it
        # again, so some commit holds it at every instant (as overlapping DDP
        # ranks or processes can). flock queues nobody: without a turnstile an
        # exclusive waiter never finds a gap. The 0.5 s patience is what lets a
        # committer queued behind gc at the turnstile stop being waited for.
        while not stop.is_set():
            with lock.hold(shared=True):
                assert not in_gc.is_set(), "a commit held the lock while gc did"
                with cond:
                    counts[me] += 1
                    seen = counts[1 - me]
                    cond.notify_all()
                    cond.wait_for(lambda s=seen: counts[1 - me] > s or stop.is_set(), timeout=0.5)

    threads = [threading.Thread(target=committer, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    with cond:
        cond.wait_for(lambda: min(counts) > 10, timeout=60)  # the stream flows

    def collect() -> None:
        with lock.hold(shared=False):
            in_gc.set()
            in_gc.clear()
        gc_done.set()

    gc = threading.Thread(target=collect, daemon=True)
    gc.start()
    got_in = gc_done.wait(timeout=20)  # liveness only; without the turnstile: never
    stop.set()
    with cond:
        cond.notify_all()
    for t in [*threads, gc]:
        t.join(timeout=60)
    assert got_in, "gc never got the lock while commits kept overlapping"


def test_a_waiting_gc_holds_new_commits_back_until_it_ran(tmp_path: Path) -> None:
    lock = GcLock(tmp_path / "gc.lock")
    order: list[str] = []
    inside = lock.hold(shared=True)
    inside.__enter__()  # an older commit is inside

    def collect() -> None:
        with lock.hold(shared=False):
            order.append("gc")

    def late_commit() -> None:
        with lock.hold(shared=True):
            order.append("commit")

    gc = threading.Thread(target=collect, daemon=True)
    gc.start()
    threading.Event().wait(0.1)  # gc holds the turnstile and waits for the lock
    late = threading.Thread(target=late_commit, daemon=True)
    late.start()
    threading.Event().wait(0.1)
    try:
        assert order == []  # the late commit queues behind the waiting gc
    finally:
        inside.__exit__(None, None, None)
    gc.join(timeout=60)
    late.join(timeout=60)
    assert order == ["gc", "commit"]
