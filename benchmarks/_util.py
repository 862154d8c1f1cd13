"""Small helpers shared by the benchmark scripts: timing, memory, page cache, tables.

Nothing here imports ``ledger``; the helpers must work before the package exists.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB
GB = 1e9  # throughput figures are decimal GB/s (10**9 bytes per second)


# --------------------------------------------------------------------------- timing


def time_call(fn: Callable[[], Any]) -> float:
    """Run ``fn`` once and return its wall time in seconds."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_of(fn: Callable[[], Any], repeat: int, setup: Callable[[], Any] | None = None) -> float:
    """Return the smallest wall time of ``repeat`` calls of ``fn`` (seconds).

    ``setup``, if given, runs untimed before every call.
    """
    times = []
    for _ in range(max(1, repeat)):
        if setup is not None:
            setup()
        times.append(time_call(fn))
    return min(times)


def summarize(times: Sequence[float]) -> dict[str, float]:
    """Median, best and worst of a list of timings (seconds)."""
    return {
        "median_s": statistics.median(times),
        "best_s": min(times),
        "worst_s": max(times),
    }


def gbps(nbytes: int, seconds: float) -> float:
    """Throughput in decimal GB/s; ``inf`` for a zero time."""
    return nbytes / GB / seconds if seconds > 0 else float("inf")


# --------------------------------------------------------------------------- memory


def _proc_status_kib(field: str) -> int | None:
    """Read a ``VmXXX:`` field of /proc/self/status in KiB, or None if unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int:
    """Current resident set size of this process in bytes (0 if unknown)."""
    kib = _proc_status_kib("VmRSS")
    return (kib or 0) * KiB


def peak_rss_bytes() -> int:
    """Peak RSS of this process in bytes.

    Uses ``VmHWM`` (which :func:`reset_peak_rss` can reset) and falls back to
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux).
    """
    kib = _proc_status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib * KiB


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS watermark (Linux ``clear_refs`` 5); True on success.

    After a reset, :func:`peak_rss_bytes` reports the peak reached from now on,
    so one process can measure the peak of several operations in turn.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- VM memory


def prefault(nbytes: int) -> float:
    """Write ``nbytes`` of fresh anonymous memory, free it, and return the seconds taken.

    On the benchmark VMs the guest's free memory is not backed by the host until
    first touched (balloon / free-page reporting), and the first touch runs at
    ~0.3 GiB/s instead of several GiB/s. Every fresh page (page cache of a file
    being written or read, a newly materialized tensor) pays that, which swamps
    what is being measured. Touching and freeing enough memory just before a
    timed operation leaves host-backed pages on the guest's free lists for it.
    """
    if nbytes <= 0:
        return 0.0
    import numpy as np

    t0 = time.perf_counter()
    a = np.ones(nbytes, dtype=np.uint8)  # writes every page
    del a
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- CPU noise
#
# The benchmark machine may be shared: other processes running at the same time
# distort every figure. These helpers wait for a quiet machine and measure how
# much CPU *other* processes used while a measurement ran.


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already part of user time
    return (total - idle) / hz, total / hz


def own_cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process (or of its waited-for children)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


class NoiseMeter:
    """Fraction of the machine's CPU used by *other* processes during a block.

    ``start()`` then ``stop()`` returns ``foreign busy seconds / (wall * cpus)``:
    0 on a quiet machine, 0.5 when another process kept one of two cores busy.
    """

    def __init__(self, children: bool = False) -> None:
        self.children = children
        self._t0 = self._busy0 = self._own0 = 0.0

    def start(self) -> None:
        """Take the starting snapshot."""
        self._t0 = time.perf_counter()
        self._busy0 = machine_cpu_seconds()[0]
        self._own0 = own_cpu_seconds(self.children)

    def stop(self) -> float:
        """Foreign CPU fraction since :meth:`start` (clamped to 0..1)."""
        wall = time.perf_counter() - self._t0
        busy = machine_cpu_seconds()[0] - self._busy0
        own = own_cpu_seconds(self.children) - self._own0
        cpus = os.cpu_count() or 1
        if wall <= 0:
            return 0.0
        return min(1.0, max(0.0, (busy - own) / (wall * cpus)))


def wait_for_idle(max_wait_s: float, max_busy: float = 0.1, quiet_s: int = 10) -> float:
    """Wait until the machine is at most ``max_busy`` busy for ``quiet_s`` seconds in a row.

    Gives up after ``max_wait_s`` seconds; returns the seconds waited.
    """
    t0 = time.perf_counter()
    quiet = 0
    while quiet < quiet_s and time.perf_counter() - t0 < max_wait_s:
        b0, a0 = machine_cpu_seconds()
        time.sleep(1.0)
        b1, a1 = machine_cpu_seconds()
        busy = (b1 - b0) / (a1 - a0) if a1 > a0 else 0.0
        quiet = quiet + 1 if busy <= max_busy else 0
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- page cache


def iter_files(path: Path) -> Iterator[Path]:
    """Every regular file at or under ``path``."""
    if path.is_file():
        yield path
        return
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = Path(root) / name
            if p.is_file() and not p.is_symlink():
                yield p


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and every directory (durability, untimed helper)."""
    for p in iter_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    dirs = [path] if path.is_dir() else [path.parent]
    if path.is_dir():
        dirs += [Path(r) / d for r, ds, _ in os.walk(path) for d in ds]
    for d in dirs:
        fsync_dir(d)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that new names in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def evict(path: Path) -> int:
    """Drop the page-cache pages of every file under ``path``; return the file count.

    Each file is fsync'd first (``POSIX_FADV_DONTNEED`` only drops clean pages),
    then advised ``DONTNEED``. This is the per-file substitute for dropping the
    caches system-wide, which these benchmarks are not allowed to do. In a VM,
    the host may still cache the disk image, so "cold" reads can be faster than
    a real cold disk.
    """
    n = 0
    for p in iter_files(path):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        n += 1
    return n


_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = libc
    return _libc


def resident_fraction(path: Path) -> float:
    """Fraction (0..1) of the pages of the files under ``path`` that are in the page cache.

    Maps each file read-only (``mmap(2)`` through ctypes, nothing is touched) and
    asks ``mincore(2)``; returns ``nan`` when that is unavailable. Used to check
    that :func:`evict` really emptied the cache.
    """
    page = mmap.PAGESIZE
    total = resident = 0
    try:
        libc = _get_libc()
    except OSError:
        return float("nan")
    for p in iter_files(path):
        size = p.stat().st_size
        if size == 0:
            continue
        npages = (size + page - 1) // page
        fd = os.open(p, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                return float("nan")
            try:
                vec = (ctypes.c_ubyte * npages)()
                if libc.mincore(addr, size, vec) != 0:
                    return float("nan")
                resident += sum(v & 1 for v in bytes(vec))
            finally:
                libc.munmap(addr, size)
        finally:
            os.close(fd)
        total += npages
    return resident / total if total else 0.0


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model, core count, RAM and the block device behind the benchmark directory."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["ram_gib"] = round(int(line.split()[1]) / MiB, 1)
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str = "") -> str:
    """Render rows as a fixed-width text table (first column left, others right aligned)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            if v != v:  # nan
                return "-"
            if v == float("inf"):
                return "inf"
            a = abs(v)
            if a >= 100:
                return f"{v:.0f}"
            if a >= 10:
                return f"{v:.1f}"
            if a >= 0.01 or a == 0:
                return f"{v:.2f}"
            return f"{v:.4f}"
        return "-" if v is None else str(v)

    body = [[cell(v) for v in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append(line(["-" * w for w in widths]))
    out.extend(line(r) for r in body)
    return "\n".join(out)
