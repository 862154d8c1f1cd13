"""One rank of a gloo job for tests/test_dist_async.py (``distributed.commit(blocking=False)``).

Usage: dist_async_worker.py SCENARIO RANK WORLD INIT_FILE LEDGER OUT_DIR

Scenarios:

- ``async``: a DDP training loop (its all_reduce on the default group) runs
  while commits are written in the background; then ordering and the wait
  of a second commit, a disk that fills up on rank 1 during the background
  write, a value rank 1 cannot store, a state over the memory budget, and a
  pending commit drained by ``Ledger.close()``.
- ``sigterm``: both ranks start a commit whose writes take a second, print
  ``started`` and sleep; the test sends SIGTERM to both.
- ``kill``: rank 1 dies (SIGKILL) right after its chunks are durable; rank 0
  waits on its handle.

Each rank writes what it saw to OUT_DIR/rank<R>.json (plain values).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from adapter_dist_worker import die_after_chunks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ledger import Ledger
from ledger.adapters import distributed
from ledger.objects import store as store_module


def make_state(rank: int) -> tuple[dict[str, Any], DistributedDataParallel]:
    torch.manual_seed(0)  # the same model on every rank, as DDP wants
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    big = torch.randn(4 << 20, generator=torch.Generator().manual_seed(rank))  # 16 MiB per rank
    return {"model": model, "opt": opt, "big": big, "rank": rank}, ddp


def train_step(ddp: DistributedDataParallel, opt: torch.optim.Optimizer) -> None:
    loss = ddp(torch.randn(8, 64)).pow(2).mean()
    opt.zero_grad()
    loss.backward()  # DDP's gradient all_reduce, on the default group
    opt.step()


def error_of(call: Any) -> str | None:
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def fill_disk() -> Any:
    """Make every pack this process opens from now on fail with ENOSPC; returns the undo."""
    real_open = store_module.PackWriter._open

    class Full:
        def __init__(self, f: Any) -> None:
            self._f = f

        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self._f, name)

    def open_full(self: store_module.PackWriter) -> None:
        real_open(self)
        assert self._pack is not None
        self._pack.fh = Full(self._pack.fh)

    store_module.PackWriter._open = open_full  # type: ignore[method-assign]
    return lambda: setattr(store_module.PackWriter, "_open", real_open)


def slow_writes(lg: Ledger, seconds: float) -> None:
    """Make this rank's pack writers take ``seconds`` longer to finish (a slow disk)."""
    make = lg.store.writer

    def writer(*args: Any, **kw: Any) -> Any:
        w = make(*args, **kw)
        finish = w.finish

        def slow_finish() -> Any:
            time.sleep(seconds)
            return finish()

        w.finish = slow_finish
        return w

    lg.store.writer = writer  # type: ignore[method-assign]


def scenario_async(rank: int, where: str, rec: dict[str, Any]) -> None:
    lg = Ledger.open(where, fsync=False)
    state, ddp = make_state(rank)
    opt = state["opt"]
    train_step(ddp, opt)  # an optimizer with state
    want = {k: v.clone() for k, v in state["model"].state_dict().items()}
    want_big = state["big"].clone()

    h1 = distributed.commit(lg, state, step=1, blocking=False, timeout=30)
    rec["pending_after_call"] = not h1.done()
    state["big"].add_(1.0)  # changed right after the call: must not leak into commit 1
    steps_in_flight = 0
    for _ in range(30):
        train_step(ddp, opt)  # all_reduce on the default group while the commit is in flight
        steps_in_flight += not h1.done()
    c1 = h1.result()
    rec["steps_in_flight"] = steps_in_flight
    stored = lg.checkout(c1.id)["ranks"][rank]["state"]
    rec["snapshot_exact"] = torch.equal(stored["big"], want_big) and all(
        torch.equal(stored["model"][k], v) for k, v in want.items()
    )
    rec["c1"] = c1.id

    h2 = distributed.commit(lg, state, step=2, blocking=False, timeout=30)
    h3 = distributed.commit(lg, state, step=3, blocking=False, timeout=30)
    rec["second_waited_for_first"] = h2.done()  # h3's call waited for h2 (one snapshot held)
    c2, c3 = h2.result(), h3.result()
    rec["parents"] = [c2.parents, c3.parents, c2.id]
    rec["c3"] = c3.id

    state["big"].add_(1.0)  # new bytes to write
    undo = fill_disk() if rank == 1 else None  # rank 1's background write hits a full disk
    h4 = distributed.commit(lg, state, step=4, blocking=False, timeout=30)
    rec["h4"] = error_of(h4.result)
    if undo is not None:
        undo()
    rec["h4_next_call"] = error_of(lambda: distributed.commit(lg, state, step=5, timeout=30))
    c6 = distributed.commit(lg, state, step=6, timeout=30)
    rec["c6_parents"] = c6.parents

    if rank == 1:
        state["bad"] = lambda: None  # rank 1 cannot store this: it raises at once
    try:
        h7 = distributed.commit(lg, state, step=7, blocking=False, timeout=30)
        rec["h7_call"], rec["h7"] = None, error_of(h7.result)
    except Exception as e:
        rec["h7_call"] = f"{type(e).__name__}: {e}"
    state.pop("bad", None)
    fresh, _ = make_state(rank)
    rec["h7_next_restore"] = error_of(lambda: distributed.restore(lg, fresh, timeout=30))
    back = distributed.restore(lg, fresh, timeout=30)
    rec["restored"] = back.id if back else None

    tight = Ledger.open(where, fsync=False, async_budget=1024)  # nothing fits: synchronous
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        h8 = distributed.commit(tight, state, step=8, branch="tight", blocking=False)
    rec["h8"] = [h8.done(), [str(w.message) for w in seen]]
    tight.close()

    h9 = distributed.commit(lg, state, step=9, blocking=False, timeout=30)
    lg.close()  # drains the pending commit
    rec["h9_done_at_close"] = h9.done()
    rec["h9"] = h9.result().step


def scenario_sigterm(rank: int, where: str, out: Path, rec: dict[str, Any]) -> None:
    lg = Ledger.open(where, fsync=True)
    slow_writes(lg, 1.0)
    state, _ = make_state(rank)
    handle = distributed.commit(lg, state, step=1, blocking=False, timeout=30)
    drain = signal.getsignal(signal.SIGTERM)  # the ledger's: drain, then the default action

    def on_term(signum: int, frame: Any) -> None:
        (out / f"rank{rank}.json").write_text(json.dumps({"pending_at_signal": not handle.done()}))
        assert callable(drain)
        drain(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    print("started", flush=True)
    time.sleep(60)
    raise SystemExit("no SIGTERM came")


def scenario_kill(rank: int, where: str, rec: dict[str, Any]) -> None:
    lg = Ledger.open(where, fsync=False)
    state, _ = make_state(rank)
    if rank == 1:
        die_after_chunks(lg)  # SIGKILL the moment its chunks are durable
    handle = distributed.commit(lg, state, step=1, blocking=False, timeout=10)
    started = time.monotonic()
    rec["error"] = error_of(handle.result)
    rec["took"] = time.monotonic() - started
    rec["next_call"] = error_of(lambda: distributed.commit(lg, state, step=2, timeout=10))


def main() -> None:
    scenario, rank, world = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    init, where, out = sys.argv[4], sys.argv[5], Path(sys.argv[6])
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=60),
    )
    rec: dict[str, Any] = {}
    if scenario == "async":
        scenario_async(rank, where, rec)
    elif scenario == "sigterm":
        scenario_sigterm(rank, where, out, rec)
    elif scenario == "kill":
        scenario_kill(rank, where, rec)
        (out / f"rank{rank}.json").write_text(json.dumps(rec))
        os._exit(0)  # the process group cannot shut down cleanly without the dead rank
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    (out / f"rank{rank}.json").write_text(json.dumps(rec))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
