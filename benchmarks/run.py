"""Baseline harness: ledger vs torch.save, safetensors and torch.distributed.checkpoint.

Builds a training state of about ``--size-mb`` MB (fp32 ``nn.Linear`` stack +
AdamW moments after one step), then times, for every method, a durable and a
non-durable save and a warm and a cold (page cache evicted per file) restore.
Every (method, operation) runs in a fresh subprocess so that its peak RSS is its
own; each is repeated ``--repeat`` times and the median is reported.

Ratios are time / baseline time (below 1 = faster than the baseline):
saves against ``safetensors.save_file`` + fsync, restores against
``safetensors.load_file`` + copy into live tensors with the same cache state.

Run:  ``.venv/bin/python benchmarks/run.py [--size-mb 1500] [--repeat 3] [--json out.json]``
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import _methods as m
import torch
from _state import build_state, digests, flatten, layout, live_tensors, state_nbytes
from _util import (
    GB,
    MiB,
    NoiseMeter,
    evict,
    format_table,
    fsync_tree,
    iter_files,
    machine_info,
    peak_rss_bytes,
    prefault,
    reset_peak_rss,
    resident_fraction,
    rss_bytes,
    summarize,
    wait_for_idle,
)

HERE = Path(__file__).resolve().parent
RESULT_TAG = "@@RESULT "


@dataclass(frozen=True)
class Case:
    """One (method, operation, variant) measured in its own subprocess."""

    key: str
    method: str  # torch | safetensors | dcp | ledger
    label: str
    kind: str  # save | restore | commit
    fsync: bool = True
    cache: str = ""  # warm | cold, for restores


CASES: tuple[Case, ...] = (
    Case("torch.save.fsync", "torch", "torch.save", "save", True),
    Case("torch.save.nofsync", "torch", "torch.save", "save", False),
    Case("torch.load.warm", "torch", "torch.load", "restore", cache="warm"),
    Case("torch.load.cold", "torch", "torch.load", "restore", cache="cold"),
    Case("torch.load_copy.warm", "torch", "torch.load+copy", "restore", cache="warm"),
    Case("torch.load_copy.cold", "torch", "torch.load+copy", "restore", cache="cold"),
    Case("safetensors.save.fsync", "safetensors", "safetensors save_file", "save", True),
    Case("safetensors.save.nofsync", "safetensors", "safetensors save_file", "save", False),
    Case(
        "safetensors.load_copy.warm",
        "safetensors",
        "safetensors load+copy",
        "restore",
        cache="warm",
    ),
    Case(
        "safetensors.load_copy.cold",
        "safetensors",
        "safetensors load+copy",
        "restore",
        cache="cold",
    ),
    Case("dcp.save.fsync", "dcp", "dcp.save", "save", True),
    Case("dcp.save.nofsync", "dcp", "dcp.save", "save", False),
    Case("dcp.load.warm", "dcp", "dcp.load (in place)", "restore", cache="warm"),
    Case("dcp.load.cold", "dcp", "dcp.load (in place)", "restore", cache="cold"),
    Case("ledger.commit.fsync", "ledger", "ledger commit", "commit", True),
    Case("ledger.commit.nofsync", "ledger", "ledger commit", "commit", False),
    Case("ledger.trusted.fsync", "ledger", "ledger commit, trust_versions", "commit", True),
    Case("ledger.compressed.fsync", "ledger", "ledger commit, compress=True", "commit", True),
    Case("ledger.restore.warm", "ledger", "ledger restore", "restore", cache="warm"),
    Case("ledger.restore.cold", "ledger", "ledger restore", "restore", cache="cold"),
    Case("ledger.checkout.warm", "ledger", "ledger checkout", "restore", cache="warm"),
    Case("ledger.checkout.cold", "ledger", "ledger checkout", "restore", cache="cold"),
    Case("ledger.checkout_mmap.warm", "ledger", "ledger checkout, mmap", "restore", cache="warm"),
    Case("ledger.checkout_mmap.cold", "ledger", "ledger checkout, mmap", "restore", cache="cold"),
)
CASE_BY_KEY = {c.key: c for c in CASES}
SAVE_BASELINE = "safetensors.save.fsync"
RESTORE_BASELINE = {"warm": "safetensors.load_copy.warm", "cold": "safetensors.load_copy.cold"}

SAVERS: dict[str, Callable[[m.Model, m.Optim, Path, bool], None]] = {
    "torch": m.torch_save,
    "safetensors": m.safetensors_save,
    "dcp": m.dcp_save,
    "ledger": m.ledger_save,
}


@dataclass
class Record:
    """The figures of one measured operation (one row of the report)."""

    key: str
    method: str
    label: str
    op: str
    fsync: bool | None
    cache: str
    state_bytes: int
    times_s: list[float] = field(default_factory=list)
    median_s: float = float("nan")
    best_s: float = float("nan")
    gbps: float = float("nan")
    disk_bytes: int | None = None  # bytes written (for commits: growth of the ledger)
    n_files: int | None = None  # files in the checkpoint / ledger directory
    peak_rss_bytes: int = 0  # highest RSS during the operation (any repeat)
    delta_rss_bytes: int = 0  # that peak minus the RSS just before the operation
    process_maxrss_bytes: int = 0  # ru_maxrss of the whole worker (state building incl.)
    resident_after_evict: float | None = None  # page-cache fraction left, cold runs
    verified: bool | None = None  # restored bytes equal the saved ones (blake3)
    ratio: float | None = None  # median time / baseline median time
    noise: float | None = None  # CPU share other processes used while the case ran
    waited_s: float = 0.0  # time spent waiting for a quiet machine before the case
    prefault_s: float = 0.0  # untimed seconds spent pre-faulting memory (VM artifact)
    error: str | None = None

    def finish(self) -> Record:
        """Fill median, best and throughput from ``times_s``."""
        if self.times_s:
            s = summarize(self.times_s)
            self.median_s, self.best_s = s["median_s"], s["best_s"]
            self.gbps = self.state_bytes / GB / self.median_s
        return self


class Meter:
    """Times one call and records the peak RSS it reached."""

    def __init__(self, rec: Record, prefault_bytes: int = 0) -> None:
        self.rec = rec
        self.prefault_bytes = prefault_bytes

    def __call__(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` once (timed); return its result, freed by the caller *after* timing."""
        gc.collect()
        self.rec.prefault_s += prefault(self.prefault_bytes)
        reset_peak_rss()
        before = rss_bytes()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        peak = peak_rss_bytes()
        self.rec.times_s.append(dt)
        self.rec.peak_rss_bytes = max(self.rec.peak_rss_bytes, peak)
        self.rec.delta_rss_bytes = max(self.rec.delta_rss_bytes, peak - before)
        return result


def dir_bytes(path: Path) -> int:
    """Bytes in all files under ``path``."""
    return sum(p.stat().st_size for p in iter_files(path))


# --------------------------------------------------------------------------- worker


def prefault_bytes(args: argparse.Namespace, state_bytes: int) -> int:
    """Bytes to pre-fault before each timed call: ``--prefault-mb``, or 2 x state + 512 MiB."""
    if args.prefault_mb >= 0:
        return int(args.prefault_mb * MiB)
    return 2 * state_bytes + 512 * MiB


def new_record(case: Case, nbytes: int, op: str | None = None) -> Record:
    """An empty record for ``case`` (``op`` overrides the operation label)."""
    return Record(
        key=case.key if op is None else f"{case.key}.{op}",
        method=case.method,
        label=case.label if op is None else f"{case.label} ({op})",
        op=case.kind if op is None else op,
        fsync=case.fsync if case.kind != "restore" else None,
        cache=case.cache,
        state_bytes=nbytes,
    )


def work_save(case: Case, args: argparse.Namespace, workdir: Path) -> list[Record]:
    """Save ``--repeat`` times, each into a fresh directory (no deletes between repeats)."""
    model, opt = build_state(args.size_mb, seed=0)
    rec = new_record(case, state_nbytes(live_tensors(model, opt)))
    meter = Meter(rec, prefault_bytes(args, rec.state_bytes))
    saver = SAVERS[case.method]
    for i in range(args.repeat):
        d = workdir / f"rep{i}"
        meter(partial(saver, model, opt, d, case.fsync))
        if not case.fsync:
            fsync_tree(d)  # untimed: do not leave writeback for the next repeat
        rec.disk_bytes = dir_bytes(d)
        rec.n_files = sum(1 for _ in iter_files(d))
    return [rec]


def work_commit(case: Case, args: argparse.Namespace, workdir: Path) -> list[Record]:
    """Ledger full commit, unchanged re-commit and incremental commit, per repeat."""
    model, opt = build_state(args.size_mb, seed=0)
    nbytes = state_nbytes(live_tensors(model, opt))
    recs = {op: new_record(case, nbytes, op) for op in ("full", "unchanged", "incremental")}
    for i in range(args.repeat):
        d = workdir / f"rep{i}"
        options = {"trust_versions": True} if ".trusted." in case.key else {}
        if ".compressed." in case.key:
            options["compress"] = True
        lg = m.ledger_open(d, fsync=case.fsync, create=True, **options)
        pf = prefault_bytes(args, nbytes)
        Meter(recs["full"], pf)(partial(m.ledger_commit, lg, model, opt, step=0))
        recs["full"].disk_bytes = dir_bytes(d)
        before = dir_bytes(d)
        Meter(recs["unchanged"], pf)(partial(m.ledger_commit, lg, model, opt, step=1))
        recs["unchanged"].disk_bytes = dir_bytes(d) - before
        m.ledger_touch_last_layer(model)
        before = dir_bytes(d)
        Meter(recs["incremental"], pf)(partial(m.ledger_commit, lg, model, opt, step=2))
        recs["incremental"].disk_bytes = dir_bytes(d) - before
        for r in recs.values():
            r.n_files = sum(1 for _ in iter_files(d))
        del lg
        if not case.fsync:
            fsync_tree(d)
    return list(recs.values())


def work_restore(case: Case, args: argparse.Namespace, workdir: Path) -> list[Record]:
    """Save once (durably, untimed), drop the source, then restore ``--repeat`` times."""
    model, opt = build_state(args.size_mb, seed=0)
    src = workdir / "ckpt"
    SAVERS[case.method](model, opt, src, True)
    want = digests(live_tensors(model, opt))
    rec = new_record(case, state_nbytes(live_tensors(model, opt)))
    rec.disk_bytes = dir_bytes(src)
    rec.n_files = sum(1 for _ in iter_files(src))
    del model, opt
    gc.collect()

    kind = case.key.rsplit(".", 1)[0]  # e.g. "torch.load_copy"
    live: tuple[m.Model, m.Optim] | None = None
    fn: Callable[[], Any]
    if kind == "torch.load":
        fn = partial(m.torch_load, src)
    elif kind in ("ledger.checkout", "ledger.checkout_mmap"):
        fn = partial(m.ledger_checkout, src, mmap=kind.endswith("mmap"))
    else:  # restore into a second, preallocated model + optimizer (other values)
        live = model2, opt2 = build_state(args.size_mb, seed=1)
        dest = live_tensors(model2, opt2)
        fn = {
            "torch.load_copy": partial(m.torch_load_copy, src, dest),
            "safetensors.load_copy": partial(m.safetensors_load_copy, src, dest),
            "dcp.load": partial(m.dcp_load, src, model2, opt2),
            "ledger.restore": partial(m.ledger_restore, src, model2, opt2),
        }[kind]

    meter = Meter(rec, prefault_bytes(args, rec.state_bytes))
    if case.cache == "warm":
        fn()  # untimed warm-up: every file is in the page cache afterwards
    result: Any = None
    for _ in range(args.repeat):
        result = None
        gc.collect()
        if case.cache == "cold":
            evict(src)
            frac = resident_fraction(src)
            rec.resident_after_evict = max(rec.resident_after_evict or 0.0, frac)
        result = meter(fn)

    if live is not None:
        rec.verified = digests(live_tensors(*live)) == want
    elif kind in ("torch.load", "ledger.checkout", "ledger.checkout_mmap"):
        assert isinstance(result, dict)
        rec.verified = digests(flatten(result["model"], result["optim"])) == want
    return [rec]


def worker(key: str, args: argparse.Namespace) -> int:
    """Entry point of one subprocess: measure ``key`` and print its records as JSON."""
    case = CASE_BY_KEY[key]
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    if case.kind == "save":
        recs = work_save(case, args, workdir)
    elif case.kind == "commit":
        recs = work_commit(case, args, workdir)
    else:
        recs = work_restore(case, args, workdir)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for r in recs:
        r.process_maxrss_bytes = maxrss
        print(RESULT_TAG + json.dumps(asdict(r.finish())), flush=True)
    return 0


# --------------------------------------------------------------------------- driver


def run_case(case: Case, args: argparse.Namespace, root: Path) -> list[Record]:
    """Run one case in a fresh subprocess and parse its records (an error record on failure)."""
    workdir = root / case.key
    shutil.rmtree(workdir, ignore_errors=True)
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", case.key,
        "--size-mb", str(args.size_mb), "--repeat", str(args.repeat), "--workdir", str(workdir),
        "--prefault-mb", str(args.prefault_mb),
    ]  # fmt: skip
    waited = wait_for_idle(args.wait_idle) if args.wait_idle > 0 else 0.0
    noise = NoiseMeter(children=True)
    noise.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    foreign = noise.stop()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    recs = [
        Record(**json.loads(line[len(RESULT_TAG) :]))
        for line in proc.stdout.splitlines()
        if line.startswith(RESULT_TAG)
    ]
    for r in recs:
        r.noise, r.waited_s = foreign, waited
    if proc.returncode != 0 or not recs:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        rec = new_record(case, 0)
        rec.error = f"exit {proc.returncode}: {tail[:160]}"
        print(f"  {case.key}: FAILED ({rec.error})", file=sys.stderr)
        if args.verbose:
            print(proc.stderr, file=sys.stderr)
        return [rec]
    print(
        f"  {case.key}: median {recs[0].median_s:.3f}s ({time.perf_counter() - t0:.0f}s wall,"
        f" noise {foreign:.0%}, waited {waited:.0f}s)",
        file=sys.stderr,
    )
    return recs


def add_ratios(recs: list[Record]) -> None:
    """Set ``ratio`` = median / baseline median.

    Saves and commits compare with safetensors ``save_file`` + fsync, restores with
    safetensors ``load_file`` + copy under the same cache state.
    """
    by_key = {r.key: r for r in recs}
    for r in recs:
        if r.error or not r.times_s:
            continue
        base_key = RESTORE_BASELINE[r.cache] if r.cache else SAVE_BASELINE
        base = by_key.get(base_key)
        if base is not None and not base.error and base.median_s > 0:
            r.ratio = r.median_s / base.median_s


def report(recs: list[Record]) -> str:
    """The stdout table."""

    def mb(n: int | None) -> float | None:
        return None if n is None else n / 1e6

    rows: list[list[Any]] = []
    for r in recs:
        if r.error:
            rows.append([r.label, _yn(r.fsync), r.cache or "-", f"ERROR {r.error}"])
            continue
        rows.append(
            [
                r.label,
                _yn(r.fsync),
                r.cache or "-",
                r.median_s,
                r.best_s,
                r.gbps,
                r.ratio,
                mb(r.disk_bytes),
                r.peak_rss_bytes / 1e6,
                r.delta_rss_bytes / 1e6,
                {True: "yes", False: "NO", None: "-"}[r.verified],
                f"{r.noise:.0%}" if r.noise is not None else "-",
            ]
        )
    headers = [
        "method", "fsync", "cache", "median s", "best s", "GB/s", "x base",
        "disk MB", "peak RSS MB", "dRSS MB", "bit-exact", "noise",
    ]  # fmt: skip
    return format_table(headers, rows)


def merge(paths: Sequence[Path], out: Path | None) -> int:
    """Print (and optionally save) the least noisy record of every case found in ``paths``."""
    best: dict[str, Record] = {}
    payload: dict[str, Any] = {}
    for p in paths:
        payload = json.loads(p.read_text())
        for d in payload["records"]:
            r = Record(**d)
            old = best.get(r.key)
            if old is None or (
                r.error is None and (old.error or (r.noise or 0) < (old.noise or 0))
            ):
                best[r.key] = r
    order = {c.key: i for i, c in enumerate(CASES)}
    recs = sorted(
        best.values(),
        key=lambda r: order.get(r.key, order.get(r.key.rsplit(".", 1)[0], len(order))),
    )
    add_ratios(recs)
    print(f"# merged from {', '.join(str(p) for p in paths)}: least noisy record per case")
    print(report(recs))
    if out:
        payload["records"] = [asdict(r) for r in recs]
        payload["merged_from"] = [str(p) for p in paths]
        out.write_text(json.dumps(payload, indent=1))
    return 0


def _yn(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments; as a worker measure one case, else drive all of them and report."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=float, default=1500, help="state size, decimal MB")
    ap.add_argument("--repeat", type=int, default=3, help="repeats per operation (median)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    ap.add_argument(
        "--methods", default="torch,safetensors,dcp,ledger",
        help="comma-separated subset of torch,safetensors,dcp,ledger",
    )  # fmt: skip
    ap.add_argument(
        "--only",
        default="",
        help="run only cases whose key contains one of these (comma-separated)",
    )
    ap.add_argument("--workdir", default=str(HERE / "out" / "run"), help="scratch directory")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    ap.add_argument(
        "--prefault-mb", type=float, default=-1,
        help="MiB of memory to touch and free before each timed call (VM first-touch cost;"
        " default -1 = 2 x state + 512, 0 = off)",
    )  # fmt: skip
    ap.add_argument(
        "--wait-idle", type=float, default=120.0,
        help="before each case, wait up to this many seconds for a quiet machine (0: never)",
    )  # fmt: skip
    ap.add_argument("--verbose", action="store_true", help="print a failing worker's stderr")
    ap.add_argument(
        "--merge", type=Path, nargs="+", default=None, metavar="JSON",
        help="no measuring: combine earlier --json outputs, keeping the least noisy record"
        " of every case, and print the table (and --json)",
    )  # fmt: skip
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args)
    if args.merge:
        return merge(args.merge, args.json)

    methods = {s.strip() for s in args.methods.split(",") if s.strip()}
    ledger_missing = "ledger" in methods and not m.ledger_available()
    if ledger_missing:
        methods.discard("ledger")
    only = [s for s in args.only.split(",") if s] or [""]
    cases = [c for c in CASES if c.method in methods and any(s in c.key for s in only)]

    info = machine_info()
    width, n_layers = layout(args.size_mb)
    root = Path(args.workdir)
    print(
        f"# {info.get('cpu_model', '?')}, {info['cpus']} cpus, {info.get('ram_gib', '?')} GiB"
        f" RAM; torch {torch.__version__}; workdir {root}"
    )
    print(
        f"# state: {n_layers} x Linear({width}, {width}) fp32 + AdamW (exp_avg, exp_avg_sq)"
        f" ~ {args.size_mb:g} MB; median of {args.repeat}; each case in its own process"
    )
    root.mkdir(parents=True, exist_ok=True)
    recs: list[Record] = []
    try:
        for c in cases:
            recs.extend(run_case(c, args, root))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    add_ratios(recs)
    state_bytes = next((r.state_bytes for r in recs if r.state_bytes), 0)
    print(f"# state bytes: {state_bytes / 1e6:.1f} MB ({state_bytes / MiB:.1f} MiB)")
    print(
        "# x base = median time / baseline median (saves: safetensors save_file + fsync; "
        "restores: safetensors load+copy, same cache); noise = CPU share other processes"
        " used during the case (figures with noise above ~10% are suspect)"
    )
    print(report(recs))
    if ledger_missing:
        print("ledger: not available yet")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "layout": {"width": width, "layers": n_layers},
            "torch": torch.__version__,
            "records": [asdict(r) for r in recs],
        }
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
