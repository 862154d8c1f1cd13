"""training-ledger in five minutes: commit, crash, resume bit-exactly, branch, compare.

Run it with ``make demo`` (or ``.venv/bin/python examples/demo.py [--dir DIR]``).
It needs no downloads and no GPU, and takes well under a minute on two cores.

The model is a small classifier: a frozen random-feature encoder (standing in
for a pretrained backbone) and a trainable MLP head with dropout, trained with
AdamW, a warm-up + cosine LR schedule and a shuffled DataLoader to imitate a
fixed random "teacher" network. The demo:

1. trains in a child process that commits every few steps and is killed
   with SIGKILL part-way through (a crash: no clean shutdown, no last save);
2. opens the ledger, shows HEAD, restores model, optimizer, scheduler, data
   position and every RNG from it, finishes training, and proves the result
   equals an uninterrupted run bit for bit;
3. branches a second experiment from an earlier commit with a larger LR;
4. prints the history of both branches;
5. shows what deduplication saved;
6. diffs the two experiments and collects garbage (when those features exist).

The library calls are ``Ledger.open``, ``commit``, ``head``, ``restore``,
``branch``, ``switch``, ``log``, ``get``, ``resolve`` and ``diff``; everything
else is ordinary PyTorch. The demo exits non-zero if any check fails.
"""

from __future__ import annotations

import argparse
import io
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ledger import Commit, Ledger
from ledger.retention import KeepBest, KeepLast

SEED = 1234
IN_DIM, CLASSES = 32, 4
TRAIN_SIZE, VAL_SIZE, BATCH = 4096, 1024, 128
STEPS_PER_EPOCH = TRAIN_SIZE // BATCH  # 32
EPOCHS = 8
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH  # 256
WARMUP_STEPS = 24
COMMIT_EVERY = 16  # steps; two commits per epoch, so most land mid-epoch
CRASH_AFTER_STEP = 112  # the parent kills the child once it has committed this step
BASE_LR = 1e-3
BRANCH = "lr-3e-3"
BRANCH_LR = 3e-3
BRANCH_FROM_STEP = 64

console = Console(highlight=False)
failures: list[str] = []


def dir_bytes(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def check(ok: bool, what: str) -> bool:
    """Print a check's outcome and remember failures for the exit code."""
    mark = "[green]ok[/green]" if ok else "[bold red]FAILED[/bold red]"
    console.print(f"  {mark}  {what}")
    if not ok:
        failures.append(what)
    return ok


def section(title: str) -> None:
    """Print a section heading."""
    console.rule(f"[bold]{title}")


# -- the experiment: data, model, optimizer, schedule --------------------------------------


def make_data() -> tuple[TensorDataset, TensorDataset]:
    """Points in R^32 labelled by a fixed random two-layer 'teacher' network."""
    g = torch.Generator().manual_seed(SEED)
    teacher = [
        torch.randn(IN_DIM, 64, generator=g) / math.sqrt(IN_DIM),
        torch.randn(64, CLASSES, generator=g),
    ]
    x = torch.randn(TRAIN_SIZE + VAL_SIZE, IN_DIM, generator=g)
    y = (torch.tanh(x @ teacher[0]) @ teacher[1]).argmax(dim=1)
    train = TensorDataset(x[:TRAIN_SIZE], y[:TRAIN_SIZE])
    val = TensorDataset(x[TRAIN_SIZE:], y[TRAIN_SIZE:])
    return train, val


def make_model() -> nn.Module:
    """A frozen encoder (never changes, so it is stored once) and a trainable head."""
    encoder = nn.Sequential(nn.Linear(IN_DIM, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU())
    encoder.requires_grad_(False)
    head = nn.Sequential(nn.Linear(256, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, CLASSES))
    return nn.Sequential(encoder, head)


def warmup_cosine(step: int) -> float:
    """LR multiplier: linear warm-up, then cosine decay to 10% at TOTAL_STEPS."""
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = min(1.0, (step - WARMUP_STEPS) / (TOTAL_STEPS - WARMUP_STEPS))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Trainer:
    """Everything a bit-exact resume needs, plus the loop that uses it."""

    model: nn.Module
    opt: torch.optim.AdamW
    sched: torch.optim.lr_scheduler.LambdaLR
    loader: DataLoader[tuple[torch.Tensor, ...]]
    val: TensorDataset
    # The data position: which epoch, how many of its batches are done, and the
    # seed the loader's shuffle is drawn from (like DistributedSampler.set_epoch).
    data: dict[str, int] = field(default_factory=lambda: {"epoch": 0, "batch": 0, "seed": SEED})
    losses: list[float] = field(default_factory=list)

    @property
    def step(self) -> int:
        """Global optimizer step, derived from the data position."""
        return self.data["epoch"] * STEPS_PER_EPOCH + self.data["batch"]

    def state(self) -> dict[str, Any]:
        """The state to commit and restore: live objects, restored in place."""
        return {"model": self.model, "optim": self.opt, "sched": self.sched, "data": self.data}

    @property
    def peak_lr(self) -> float:
        """The schedule's peak LR (the ``lr`` hyper-parameter of this experiment)."""
        return float(self.sched.base_lrs[0])

    def set_peak_lr(self, lr: float) -> None:
        """Change the schedule's peak LR from the current step on (for a new experiment)."""
        self.sched.base_lrs = [lr for _ in self.opt.param_groups]
        for group in self.opt.param_groups:
            group["initial_lr"] = lr
            group["lr"] = lr * warmup_cosine(self.sched.last_epoch)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of the current epoch's batches, in the order an uninterrupted run sees."""
        gen = self.loader.generator
        assert gen is not None
        gen.manual_seed(self.data["seed"] * 1000 + self.data["epoch"])
        it = iter(self.loader)
        for _ in range(self.data["batch"]):  # fast-forward to the saved position
            next(it)
        yield from it

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.data["batch"] += 1
        if self.data["batch"] == STEPS_PER_EPOCH:
            self.data["epoch"] += 1
            self.data["batch"] = 0
        return loss.item()

    @torch.no_grad()
    def val_accuracy(self) -> float:
        self.model.eval()
        x, y = self.val.tensors
        return (self.model(x).argmax(dim=1) == y).float().mean().item()

    def train(self, until: int, on_commit: Callable[[Trainer], None] | None = None) -> None:
        """Train to step ``until``, calling ``on_commit`` every COMMIT_EVERY steps."""
        while self.step < until:
            for x, y in self.batches():
                self.losses.append(self.train_step(x, y))
                if on_commit is not None and self.step % COMMIT_EVERY == 0:
                    on_commit(self)
                if self.step >= until:
                    return


def make_trainer() -> Trainer:
    """A fresh run; every random choice flows from SEED."""
    torch.manual_seed(SEED)
    train, val = make_data()
    model = make_model()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=BASE_LR, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)
    loader = DataLoader(train, batch_size=BATCH, shuffle=True, generator=torch.Generator())
    return Trainer(model, opt, sched, loader, val)


def committer(
    lg: Ledger, message: str, announce: Callable[[Commit], None]
) -> Callable[[Trainer], None]:
    """A callback that commits the trainer's state with its step, metrics and params."""

    def commit(tr: Trainer) -> None:
        recent = tr.losses[-COMMIT_EVERY:]
        c = lg.commit(
            tr.state(),
            step=tr.step,
            epoch=tr.data["epoch"],
            metrics={"loss": sum(recent) / len(recent), "val_acc": tr.val_accuracy()},
            params={"lr": tr.peak_lr, "batch_size": BATCH, "weight_decay": 0.01},
            message=message,
        )
        announce(c)

    return commit


# -- comparing runs -------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Bitwise equality of nested state dicts (tensors compared byte for byte)."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def snapshot(tr: Trainer) -> dict[str, Any]:
    """Everything that must match after a bit-exact resume, global RNG included."""
    return {
        "model": tr.model.state_dict(),
        "optim": tr.opt.state_dict(),
        "sched": tr.sched.state_dict(),
        "data": dict(tr.data),
        "torch_rng": torch.get_rng_state(),
    }


# -- the crashing child ---------------------------------------------------------------------


def announcer(who: str) -> Callable[[Commit], None]:
    """Print one line per commit, prefixed with who made it."""

    def announce(c: Commit) -> None:
        line = f"  {who:<12} commit {c.id[:12]}  step {c.step:>3}  loss {c.metrics['loss']:.4f}"
        console.print(line, markup=False)

    return announce


def child_main(ledger_dir: Path) -> None:
    """Phase one, in its own process: train and commit until the parent kills us."""
    lg = Ledger.open(ledger_dir, create=True)
    tr = make_trainer()

    def report(c: Commit) -> None:  # one line per commit on stdout, read by the parent
        print(f"{c.step} {c.id} {c.metrics['loss']:.4f}", flush=True)

    tr.train(TOTAL_STEPS, committer(lg, "before crash", report))
    print("finished", flush=True)  # never reached: the parent kills us first


def run_crashing_child(ledger_dir: Path) -> int:
    """Start the child, echo its commits, SIGKILL it after CRASH_AFTER_STEP; return its code."""
    cmd = [sys.executable, __file__, "--dir", str(ledger_dir), "--crash-child"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    who = f"child {proc.pid}"
    for line in proc.stdout:
        parts = line.split()
        if parts[0] == "finished":
            break
        step, cid, loss = int(parts[0]), parts[1], float(parts[2])
        console.print(
            f"  {who:<12} commit {cid[:12]}  step {step:>3}  loss {loss:.4f}", markup=False
        )
        if step >= CRASH_AFTER_STEP:
            proc.kill()  # SIGKILL: no cleanup, no atexit, no final save
            console.print(f"  [bold red]kill -9 {proc.pid}[/bold red] while it keeps training")
            break
    proc.stdout.close()
    return proc.wait()


# -- the demo --------------------------------------------------------------------------------


def resume_after_crash(ledger_dir: Path, reference: dict[str, Any]) -> Ledger:
    section("1-2. Train in a child process, crash it, resume from the ledger")
    code = run_crashing_child(ledger_dir)
    check(code == -9, f"the child died of SIGKILL (exit status {code})")

    lg = Ledger.open(ledger_dir)
    torn = list(lg.root.glob("objects/tmp/*"))  # a pack the child was writing when killed
    console.print(
        f"  temp files left by the crash: {len(torn)} (a kill mid-commit leaves one; never read)"
    )
    head = lg.head
    assert head is not None
    console.print(
        f"\n  HEAD -> {lg.current_branch} @ {head.id[:12]}, committed {head.time:%X} UTC:"
    )
    console.print(
        f"          step {head.step}, epoch {head.epoch}, loss {head.metrics['loss']:.4f}, "
        f"val acc {head.metrics['val_acc']:.3f}"
    )
    tr = make_trainer()  # fresh objects, as in a new job after the crash
    lg.restore(tr.state(), "HEAD")  # weights, optimizer, schedule, data position, RNG
    console.print(f"  lg.restore(state, 'HEAD'): data {tr.data}", markup=False)
    console.print(
        f"  current lr {tr.opt.param_groups[0]['lr']:.3e}, schedule at {tr.sched.last_epoch}"
    )
    check(tr.step == head.step, f"the data position matches HEAD's step ({tr.step})")
    tr.train(TOTAL_STEPS, committer(lg, "resumed", announcer("resumed")))

    exact = same(snapshot(tr), reference)
    console.print(f"\n  crashed-and-resumed run vs one uninterrupted run of {TOTAL_STEPS} steps:")
    console.print(f"  bit-exact: {exact}")
    check(exact, "weights, AdamW moments, schedule, data position, RNG: bitwise equal")
    return lg


def branch_experiment(lg: Ledger) -> None:
    section(f"3. Branch a second experiment from step {BRANCH_FROM_STEP} with lr {BRANCH_LR:g}")
    fork = next(c for c in lg.log("main") if c.step == BRANCH_FROM_STEP)
    packs_before = len(list(lg.root.glob("objects/packs/*.pack")))
    lg.branch(BRANCH, at=fork.id[:10])  # any revision works: a short id, "main~12", a tag ...
    packs_after = len(list(lg.root.glob("objects/packs/*.pack")))
    console.print(f"  lg.branch({BRANCH!r}, at={fork.id[:10]!r})  (step {fork.step} on main)")
    check(packs_after == packs_before, "forking an experiment writes no object, only one event")
    lg.switch(BRANCH)
    tr = make_trainer()
    lg.restore(tr.state(), "HEAD")
    tr.set_peak_lr(BRANCH_LR)
    console.print(f"  on {lg.current_branch}: restored step {tr.step}, peak lr now {tr.peak_lr:g}")
    tr.train(TOTAL_STEPS, committer(lg, f"lr {BRANCH_LR:g}", announcer(BRANCH)))
    lg.switch("main")
    steps_on_branch = (TOTAL_STEPS - BRANCH_FROM_STEP) // COMMIT_EVERY
    check(
        lg.resolve(f"{BRANCH}~{steps_on_branch}") == fork.id,
        f"{BRANCH}~{steps_on_branch} resolves to the fork point on main",
    )


def human(n: float) -> str:
    """Bytes as B / KiB / MiB."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def print_logs(lg: Ledger) -> list[Commit]:
    section("4. History of both branches")
    seen: dict[str, Commit] = {}
    for rev in ("main", BRANCH):
        console.print()
        table = Table(title=f"lg.log({rev!r})", title_justify="left", box=None)
        for col in ("id", "branch", "step", "loss", "lr", "chunks", "written"):
            table.add_column(col, justify="left" if col in ("id", "branch") else "right")
        table.add_column("message")
        for c in lg.log(rev):
            seen[c.id] = c
            table.add_row(
                c.id[:10],
                c.branch or "",
                str(c.step),
                f"{c.metrics['loss']:.4f}",
                f"{c.params['lr']:g}",
                f"{c.stats.chunks_written}/{c.stats.chunks_total}",
                human(c.stats.bytes_written),
                c.message or "",
            )
        console.print(table)
    console.print("  chunks: new / total chunks of the commit; written: bytes added to the store")
    for c in (lg.get("main"), lg.get(BRANCH)):
        console.print(
            f"  {c.branch:<8} (peak lr {c.params['lr']:g}) ends at loss {c.metrics['loss']:.4f}, "
            f"val acc {c.metrics['val_acc']:.3f}"
        )
    first, last = min(seen.values(), key=lambda c: c.step or 0), lg.get("main")
    check(last.metrics["loss"] < 0.6 * first.metrics["loss"], "the model learned (loss down 40%+)")
    return list(seen.values())


def show_dedup(lg: Ledger, commits: list[Commit]) -> None:
    section("5. What deduplication saved")
    on_disk = dir_bytes(lg.root)
    logical = sum(c.stats.logical_bytes for c in commits)
    tr = make_trainer()
    buf = io.BytesIO()
    torch.save({k: v.state_dict() for k, v in tr.state().items() if hasattr(v, "state_dict")}, buf)
    console.print(f"  one torch.save of model + optim + sched (step 0): {human(buf.tell()):>10}")
    console.print(
        f"  {len(commits)} full checkpoints (sum of stats.logical_bytes): {human(logical):>10}"
    )
    console.print(
        f"  the whole ledger directory, {len(commits)} commits:         {human(on_disk):>10}"
    )
    console.print(f"  -> {logical / on_disk:.1f}x less space")
    s = lg.get("main").stats
    console.print(
        f"  last commit: {s.chunks_written} of {s.chunks_total} chunks new, "
        f"{human(s.bytes_written)} written for {human(s.logical_bytes)}, {s.duration_s * 1e3:.0f} ms"
    )
    console.print("  what does not change is stored once: the frozen encoder, numpy's RNG,")
    console.print("  AdamW's step counters (equal for all params); changed floats are stored")
    console.print("  exponent-split + zstd when that is smaller")
    check(on_disk < logical / 2, "the ledger takes less than half the space of full checkpoints")


def render(value: Any, indent: int = 4, width: int = 78) -> list[str]:
    """Plain data as YAML-like lines: whatever fits on one line stays on one line."""
    if isinstance(value, float):
        value = float(f"{value:.4g}")
    pad = " " * indent
    flat = msgspec.json.encode(value).decode()
    if indent + len(flat) <= width or not isinstance(value, dict | list):
        return [pad + flat]
    lines = []
    if isinstance(value, list):
        for item in value[:3]:
            block = render(item, indent + 2, width)
            lines += [f"{pad}- {block[0].lstrip()}", *block[1:]]
        if len(value) > 3:
            lines.append(f"{pad}- ... and {len(value) - 3} more")
        return lines
    for key, item in value.items():
        block = render(item, indent + 2, width)
        if len(block) == 1 and indent + len(key) + len(block[0]) <= width:
            lines.append(f"{pad}{key}: {block[0].strip()}")
        else:
            lines += [f"{pad}{key}:", *block]
    return lines


def show_diff_and_gc(lg: Ledger) -> None:
    section("6. Diff and garbage collection")
    if hasattr(lg, "diff"):
        report = lg.diff("main", BRANCH)
        data = msgspec.to_builtins(report) if isinstance(report, msgspec.Struct) else report
        if isinstance(data, dict):  # keep what differs: ids for the commits, changed fields
            for side in ("a", "b"):
                if isinstance(data.get(side), dict):
                    data[side] = data[side].get("id", "")[:12]
            for key, items in data.items():
                if isinstance(items, list) and all(isinstance(v, dict) for v in items):
                    data[key] = [v for v in items if not v.get("same", False)]
        console.print(f"  lg.diff('main', {BRANCH!r}), what differs:")
        lines = render(data)
        console.print("\n".join(lines[:40]), markup=False)
        if len(lines) > 40:
            console.print(f"    ... ({len(lines) - 40} more lines)")
    else:
        console.print("  lg.diff arrives with the history features (not in this build yet)")
    # Retention: keep the last 3 commits and the best by loss on every branch (heads
    # and tags are always kept); everything else is expired and its bytes freed.
    lg.set_retention(KeepLast(3), KeepBest("loss", k=1, mode="min"))
    size_before = dir_bytes(lg.root / "objects")
    report = lg.gc(grace=0)  # grace=0: nothing else writes to this ledger right now
    size_after = dir_bytes(lg.root / "objects")
    console.print(
        f"  lg.set_retention(KeepLast(3), KeepBest('loss')); lg.gc(grace=0): expired "
        f"{len(report.expired)} commits, freed {report.bytes_freed / 2**20:.2f} MiB "
        f"(objects {size_before / 2**20:.2f} -> {size_after / 2**20:.2f} MiB)"
    )
    history = list(lg.log("main"))
    console.print(f"  history stays whole: {len(history)} commits on main still in the log")
    check(lg.verify(full=True).ok, "verify after gc")
    check(report.bytes_freed == size_before - size_after, "gc reports the bytes it freed")
    kept = [c for c in history if c.id not in lg.refs.state().expired]
    for c in kept:
        lg.checkout(c.id, paths=["model"])  # every kept commit still reads
    console.print(f"  {len(kept)} kept commits on main still check out")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="ledger directory (default: a new temp dir)")
    parser.add_argument("--crash-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # the same kernels in every process: bitwise-reproducible math
    if args.crash_child:
        child_main(args.dir)
        return 0

    started = time.perf_counter()
    ledger_dir = args.dir or Path(tempfile.mkdtemp(prefix="ledger-demo-")) / "ckpt"
    if ledger_dir.exists() and any(ledger_dir.iterdir()):
        parser.error(f"{ledger_dir} is not empty; give a new directory")
    console.print(f"[bold]training-ledger demo[/bold]  ledger: {ledger_dir}")
    console.print(f"  reference: one uninterrupted run of {TOTAL_STEPS} steps, no ledger")
    ref = make_trainer()
    ref.train(TOTAL_STEPS)
    reference = snapshot(ref)

    with resume_after_crash(ledger_dir, reference) as lg:
        branch_experiment(lg)
        commits = print_logs(lg)
        show_dedup(lg, commits)
        show_diff_and_gc(lg)

    section("Done")
    console.print(f"  {time.perf_counter() - started:.1f} s; the ledger stays in {ledger_dir}")
    for what in failures:
        console.print(f"  [bold red]FAILED[/bold red]: {what}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
