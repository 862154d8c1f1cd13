"""Chunk-size and codec microbenchmark for training-ledger's object layer.

For each chunk size (256 KiB, 1 MiB, 4 MiB, 16 MiB by default) it measures, on
realistic tensor bytes:

* hashing: blake3 with 1 and 2 threads (a ``ThreadPoolExecutor`` over chunks;
  blake3 releases the GIL) and xxhash ``xxh3_128``;
* zstd level 1 and 3 (``zstandard.ZstdCompressor``, one per thread): size ratio,
  compression speed with 1 and 2 threads, decompression speed;
* byte-grouped zstd: each chunk viewed as ``uint8[n_elems, itemsize]`` and
  transposed into ``itemsize`` byte planes, each plane zstd-compressed on its
  own and stored raw when it does not shrink below 0.95 of its size; size ratio,
  speed (transpose included) and the ratio of every plane;
* file I/O on this disk: all chunks written into one pre-opened file plus a
  single fsync, against one file per chunk with an fsync each (and two batched
  variants), then a cold read-back of both layouts.

Data sets: weights, AdamW ``exp_avg`` and ``exp_avg_sq`` of a small MLP trained
for a few hundred steps (cached under ``benchmarks/out/``), raw ``randn * 0.02``,
and the bfloat16 casts of the trained weights and of the raw tensor.

Run:  ``.venv/bin/python benchmarks/chunking.py [--mb 64] [--json out.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import torch
import xxhash
import zstandard
from _util import (
    KiB,
    MiB,
    NoiseMeter,
    best_of,
    evict,
    format_table,
    fsync_dir,
    gbps,
    machine_info,
    prefault,
    wait_for_idle,
)

OUT_DIR = Path(__file__).resolve().parent / "out"
DEFAULT_CHUNKS = (256 * KiB, 1 * MiB, 4 * MiB, 16 * MiB)
RAW_THRESHOLD = 0.95  # a byte plane is stored raw unless zstd shrinks it below this


# --------------------------------------------------------------------------- data


def train_mlp(mb: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """Train a square MLP with about ``mb`` MiB of fp32 weights on a teacher task.

    Returns the flattened weights and the AdamW moments, each one fp32 vector.
    The result is cached in ``benchmarks/out/`` because training takes a while
    on a small CPU.
    """
    cache = OUT_DIR / f"mlp_{mb}mb_{steps}steps_seed{seed}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    torch.manual_seed(seed)
    width = 1024 if mb < 16 else 2048
    n_layers = max(1, round(mb * MiB / (width * width * 4)))
    layers: list[torch.nn.Module] = []
    for i in range(n_layers):
        layers.append(torch.nn.Linear(width, width))
        if i < n_layers - 1:
            layers.append(torch.nn.GELU())
    model = torch.nn.Sequential(*layers)
    teacher = torch.nn.Sequential(
        torch.nn.Linear(width, 256), torch.nn.Tanh(), torch.nn.Linear(256, width)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    t0 = time.perf_counter()
    for step in range(steps):
        x = torch.randn(64, width)
        with torch.no_grad():
            y = teacher(x)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(
                f"  train step {step:4d} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)",
                file=sys.stderr,
            )
    params = list(model.parameters())
    out = {
        "weights": torch.cat([p.detach().reshape(-1) for p in params]),
        "exp_avg": torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params]),
        "exp_avg_sq": torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in params]),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache)
    return out


def make_datasets(mb: int, steps: int, seed: int) -> dict[str, np.ndarray]:
    """Name -> (bytes as a contiguous uint8 array, itemsize) for every data set."""
    trained = train_mlp(mb, steps, seed)
    g = torch.Generator().manual_seed(seed + 1)
    raw = torch.randn(trained["weights"].numel(), generator=g) * 0.02
    tensors = {
        "fp32 trained weights": trained["weights"],
        "fp32 adam exp_avg": trained["exp_avg"],
        "fp32 adam exp_avg_sq": trained["exp_avg_sq"],
        "fp32 randn*0.02": raw,
        "bf16 trained weights": trained["weights"].to(torch.bfloat16),
        "bf16 randn*0.02": raw.to(torch.bfloat16),
    }
    return {k: tensor_bytes(v) for k, v in tensors.items()}


def tensor_bytes(t: torch.Tensor) -> np.ndarray:
    """Zero-copy uint8 view of a contiguous CPU tensor's bytes (any dtype, bf16 incl.)."""
    t = t.contiguous()
    return t.view(torch.uint8).numpy() if t.dtype != torch.uint8 else t.numpy()


def itemsize_of(name: str) -> int:
    """Element size implied by a data set's name."""
    return 2 if name.startswith("bf16") else 4


def split(buf: np.ndarray, chunk: int) -> list[memoryview]:
    """Zero-copy chunk views of a byte buffer (the last chunk may be shorter)."""
    mv = buf.data.cast("B")
    return [mv[i : i + chunk] for i in range(0, len(mv), chunk)]


# --------------------------------------------------------------------------- codecs

_local = threading.local()


def _cctx(level: int) -> zstandard.ZstdCompressor:
    """A per-thread compressor for ``level`` (zstd contexts are not thread-safe)."""
    key = f"c{level}"
    c = getattr(_local, key, None)
    if c is None:
        c = zstandard.ZstdCompressor(level=level)
        setattr(_local, key, c)
    return c


def _dctx() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "d", None)
    if d is None:
        d = zstandard.ZstdDecompressor()
        _local.d = d
    return d


def zstd_encode(chunk: memoryview, level: int) -> bytes:
    """Plain zstd of a whole chunk (content size recorded in the frame)."""
    return _cctx(level).compress(chunk)


def zstd_decode_into(blob: bytes, dest: memoryview) -> None:
    """Inverse of :func:`zstd_encode`, written into ``dest`` (as a restore into a tensor)."""
    data = _dctx().decompress(blob)
    dest[: len(data)] = data


def to_planes(chunk: memoryview, itemsize: int) -> np.ndarray:
    """Byte-group a chunk: ``uint8[n, itemsize]`` -> contiguous ``uint8[itemsize, n]``."""
    a = np.frombuffer(chunk, dtype=np.uint8).reshape(-1, itemsize)
    return np.ascontiguousarray(a.T)


def bytegroup_encode(chunk: memoryview, itemsize: int, level: int) -> list[tuple[bool, bytes]]:
    """Byte-grouped zstd: one entry ``(compressed?, payload)`` per byte plane.

    A plane that zstd does not shrink below ``RAW_THRESHOLD`` of its size is kept raw.
    """
    planes = to_planes(chunk, itemsize)
    c = _cctx(level)
    out: list[tuple[bool, bytes]] = []
    for plane in planes:
        z = c.compress(plane.data)
        if len(z) < RAW_THRESHOLD * plane.nbytes:
            out.append((True, z))
        else:
            out.append((False, plane.tobytes()))
    return out


def bytegroup_top_encode(chunk: memoryview, itemsize: int, level: int) -> list[tuple[bool, bytes]]:
    """Byte-grouped, but only the most significant plane (sign + exponent) is compressed.

    The mantissa planes of trained floats are incompressible (see the plane table),
    so this skips the zstd attempts on them; same output format as
    :func:`bytegroup_encode`, decoded by :func:`bytegroup_decode_into`.
    """
    planes = to_planes(chunk, itemsize)
    out: list[tuple[bool, bytes]] = [(False, p.tobytes()) for p in planes[:-1]]
    top = planes[-1]
    z = _cctx(level).compress(top.data)
    out.append((True, z) if len(z) < RAW_THRESHOLD * top.nbytes else (False, top.tobytes()))
    return out


def bytegroup_decode_into(parts: list[tuple[bool, bytes]], itemsize: int, dest: memoryview) -> None:
    """Inverse of :func:`bytegroup_encode`, interleaving the planes straight into ``dest``."""
    d = _dctx()
    planes_data = [d.decompress(p) if z else p for z, p in parts]
    n = len(planes_data[0])
    planes = np.empty((itemsize, n), dtype=np.uint8)
    for i, p in enumerate(planes_data):
        planes[i] = np.frombuffer(p, dtype=np.uint8)
    out = np.frombuffer(dest, dtype=np.uint8, count=n * itemsize).reshape(n, itemsize)
    out[...] = planes.T


def decode_all(
    decode: Callable[[Any, memoryview], None], blobs: Sequence[Any], dest: np.ndarray, chunk: int
) -> None:
    """Decode every chunk's blob into its slice of the destination buffer."""
    views = split(dest, chunk)
    for blob, view in zip(blobs, views, strict=True):
        decode(blob, view)


def run_pool(fn: Callable[[memoryview], Any], chunks: Sequence[memoryview], threads: int) -> list:
    """Apply ``fn`` to every chunk, serially for one thread or with a thread pool."""
    if threads == 1:
        return [fn(c) for c in chunks]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, chunks))


# --------------------------------------------------------------------------- measurements


def bench_hashing(buf: np.ndarray, chunk: int, repeat: int) -> dict[str, float]:
    """GB/s of blake3 (1, 2 threads over chunks; and blake3's own threads) and xxh3_128."""
    chunks = split(buf, chunk)
    n = buf.nbytes

    def b3(c: memoryview) -> bytes:
        return blake3.blake3(c).digest()

    def b3_auto(c: memoryview) -> bytes:
        return blake3.blake3(c, max_threads=blake3.blake3.AUTO).digest()

    def xxh(c: memoryview) -> bytes:
        return xxhash.xxh3_128_digest(c)

    return {
        "blake3_t1": gbps(n, best_of(lambda: run_pool(b3, chunks, 1), repeat)),
        "blake3_t2": gbps(n, best_of(lambda: run_pool(b3, chunks, 2), repeat)),
        "blake3_auto": gbps(n, best_of(lambda: run_pool(b3_auto, chunks, 1), repeat)),
        "xxh3_128_t1": gbps(n, best_of(lambda: run_pool(xxh, chunks, 1), repeat)),
        "xxh3_128_t2": gbps(n, best_of(lambda: run_pool(xxh, chunks, 2), repeat)),
    }


def bench_codecs(buf: np.ndarray, itemsize: int, chunk: int, repeat: int) -> dict[str, Any]:
    """Size ratio (out/in) and GB/s of zstd and byte-grouped zstd at levels 1 and 3."""
    chunks = split(buf, chunk)
    n = buf.nbytes
    dest = np.zeros_like(buf)  # restore target, like a preallocated live tensor

    def bg_dec(parts: list[tuple[bool, bytes]], view: memoryview) -> None:
        bytegroup_decode_into(parts, itemsize, view)

    res: dict[str, Any] = {}
    for level in (1, 3):

        def enc(c: memoryview, level: int = level) -> bytes:
            return zstd_encode(c, level)

        blobs = run_pool(enc, chunks, 1)
        res[f"zstd{level}_ratio"] = sum(len(b) for b in blobs) / n
        res[f"zstd{level}_t1"] = gbps(n, best_of(partial(run_pool, enc, chunks, 1), repeat))
        res[f"zstd{level}_t2"] = gbps(n, best_of(partial(run_pool, enc, chunks, 2), repeat))
        res[f"zstd{level}_dec_t1"] = gbps(
            n, best_of(partial(decode_all, zstd_decode_into, blobs, dest, chunk), repeat)
        )
        assert np.array_equal(dest, buf), "zstd round trip"

        def bg(c: memoryview, level: int = level) -> list[tuple[bool, bytes]]:
            return bytegroup_encode(c, itemsize, level)

        parts = run_pool(bg, chunks, 1)
        res[f"bg{level}_ratio"] = sum(len(p) for ps in parts for _, p in ps) / n
        plane_in = [0] * itemsize
        plane_out = [0] * itemsize
        plane_raw = [0] * itemsize
        for c, ps in zip(chunks, parts, strict=True):
            for i, (z, p) in enumerate(ps):
                plane_in[i] += len(c) // itemsize
                plane_out[i] += len(p)
                plane_raw[i] += 0 if z else 1
        res[f"bg{level}_planes"] = [o / i for o, i in zip(plane_out, plane_in, strict=True)]
        res[f"bg{level}_raw_planes"] = [r / len(chunks) for r in plane_raw]
        res[f"bg{level}_t1"] = gbps(n, best_of(partial(run_pool, bg, chunks, 1), repeat))
        res[f"bg{level}_t2"] = gbps(n, best_of(partial(run_pool, bg, chunks, 2), repeat))
        res[f"bg{level}_dec_t1"] = gbps(
            n, best_of(partial(decode_all, bg_dec, parts, dest, chunk), repeat)
        )
        assert np.array_equal(dest, buf), "byte-grouped round trip"
        dest[:] = 0

    def top(c: memoryview) -> list[tuple[bool, bytes]]:
        return bytegroup_top_encode(c, itemsize, 1)

    parts = run_pool(top, chunks, 1)
    res["top1_ratio"] = sum(len(p) for ps in parts for _, p in ps) / n
    res["top1_t1"] = gbps(n, best_of(lambda: run_pool(top, chunks, 1), repeat))
    res["top1_t2"] = gbps(n, best_of(lambda: run_pool(top, chunks, 2), repeat))
    res["top1_dec_t1"] = gbps(n, best_of(lambda: decode_all(bg_dec, parts, dest, chunk), repeat))
    assert np.array_equal(dest, buf), "top-plane round trip"
    res["transpose_only"] = gbps(
        n, best_of(lambda: [to_planes(c, itemsize) for c in chunks], repeat)
    )
    return res


def bench_io(buf: np.ndarray, chunk: int, repeat: int, root: Path) -> dict[str, float]:
    """GB/s of durable writes and cold reads of ``buf`` cut into ``chunk``-sized pieces.

    * ``one_file``: all chunks ``os.write``-n into one pre-opened file, one fsync;
    * ``per_chunk_fsync``: one file per chunk, each fsync'd before the next is written;
    * ``per_chunk_batch``: one file per chunk, all written, then all fsync'd;
    * ``per_chunk_fsync_t2``: as ``per_chunk_fsync`` but by two writer threads;
    * ``read_one_file`` / ``read_per_chunk``: cold read back (pages evicted first).

    Every variant fsyncs the directory once at the end, as a durable store must.
    """
    chunks = split(buf, chunk)
    n = buf.nbytes
    res: dict[str, float] = {}

    def fresh() -> Path:
        d = root / f"io_{chunk}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        fsync_dir(root)
        return d

    def one_file(d: Path) -> None:
        fd = os.open(d / "pack", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for c in chunks:
                os.write(fd, c)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(d)

    def write_one(d: Path, i: int, c: memoryview, sync: bool) -> None:
        fd = os.open(d / f"{i:08d}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, c)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def per_chunk_fsync(d: Path) -> None:
        for i, c in enumerate(chunks):
            write_one(d, i, c, True)
        fsync_dir(d)

    def per_chunk_batch(d: Path) -> None:
        for i, c in enumerate(chunks):
            write_one(d, i, c, False)
        for i in range(len(chunks)):
            fd = os.open(d / f"{i:08d}", os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        fsync_dir(d)

    def per_chunk_fsync_t2(d: Path) -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda ic: write_one(d, ic[0], ic[1], True), enumerate(chunks)))
        fsync_dir(d)

    variants: dict[str, Callable[[Path], None]] = {
        "one_file": one_file,
        "per_chunk_fsync": per_chunk_fsync,
        "per_chunk_batch": per_chunk_batch,
        "per_chunk_fsync_t2": per_chunk_fsync_t2,
    }
    for name, fn in variants.items():
        times = []
        for _ in range(repeat):
            d = fresh()
            prefault(n + n // 4)  # see _util.prefault: VM first-touch cost of page cache
            t0 = time.perf_counter()
            fn(d)
            times.append(time.perf_counter() - t0)
        res[name] = gbps(n, min(times))

    # Cold reads of the layout left by the last write variant and of one pack file.
    d = fresh()
    one_file(d)
    per_chunk_batch(d)
    pack = d / "pack"
    files = sorted(p for p in d.iterdir() if p.name != "pack")

    def cold() -> None:
        evict(d)
        prefault(n + n // 4)

    def read_pack() -> None:
        with open(pack, "rb", buffering=0) as f:
            while f.read(chunk):
                pass

    def read_files() -> None:
        for p in files:
            with open(p, "rb", buffering=0) as f:
                f.read()

    res["read_one_file"] = gbps(n, best_of(read_pack, repeat, setup=cold))
    res["read_per_chunk"] = gbps(n, best_of(read_files, repeat, setup=cold))
    shutil.rmtree(d)
    return res


# --------------------------------------------------------------------------- report


def measured(args: argparse.Namespace, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Wait for a quiet machine, run ``fn`` and add ``noise`` (foreign CPU share) to its dict."""
    if args.wait_idle > 0:
        wait_for_idle(args.wait_idle)
    meter = NoiseMeter()
    meter.start()
    res = fn()
    res["noise"] = meter.stop()
    return res


def human(n: int) -> str:
    """256 KiB / 4 MiB style label for a chunk size."""
    return f"{n // MiB} MiB" if n >= MiB else f"{n // KiB} KiB"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run every measurement, print tables, optionally dump JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=64, help="MiB of fp32 weights per data set")
    ap.add_argument("--steps", type=int, default=300, help="MLP training steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="best of N for every speed")
    ap.add_argument("--io-mb", type=int, default=256, help="MiB written per I/O variant")
    ap.add_argument(
        "--chunks",
        type=str,
        default=",".join(str(c // KiB) for c in DEFAULT_CHUNKS),
        help="comma-separated chunk sizes in KiB",
    )
    ap.add_argument("--skip-io", action="store_true", help="skip the disk measurements")
    ap.add_argument("--skip-codecs", action="store_true", help="only hashing and disk")
    ap.add_argument("--json", type=Path, default=None, help="write all figures here")
    ap.add_argument(
        "--wait-idle", type=float, default=120.0,
        help="before each block, wait up to this many seconds for a quiet machine (0: never)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    torch.set_num_threads(os.cpu_count() or 1)
    chunk_sizes = [int(c) * KiB for c in args.chunks.split(",")]
    info = machine_info()
    print(
        f"# machine: {info.get('cpu_model', '?')}, {info['cpus']} cpus, "
        f"{info.get('ram_gib', '?')} GiB RAM; torch {torch.__version__}, "
        f"zstd {zstandard.ZSTD_VERSION}, blake3 {blake3.__version__}"
    )
    print(f"# data: {args.mb} MiB fp32 per set (bf16 sets are half), best of {args.repeat}")
    datasets = make_datasets(args.mb, args.steps, args.seed)
    report: dict[str, Any] = {"machine": info, "args": vars(args) | {"json": str(args.json)}}

    # Hashing speed does not depend on content: measured on the trained fp32 weights.
    hash_rows = []
    report["hashing"] = {}
    for cs in chunk_sizes:
        h = measured(
            args,
            partial(bench_hashing, datasets["fp32 trained weights"], cs, max(args.repeat, 5)),
        )
        report["hashing"][cs] = h
        hash_rows.append([human(cs), *h.values()])
        hash_rows[-1][-1] = f"{h['noise']:.0%}"
    print()
    print(
        format_table(
            ["chunk", "blake3 1t", "blake3 2t", "blake3 own-mt", "xxh3 1t", "xxh3 2t", "noise"],
            hash_rows,
            "## hashing GB/s (over chunks with a ThreadPoolExecutor; own-mt = blake3 "
            "max_threads=AUTO per chunk)",
        )
    )

    codec_rows = []
    plane_rows = []
    report["codecs"] = {}
    for name, buf in {} if args.skip_codecs else datasets.items():
        isz = itemsize_of(name)
        report["codecs"][name] = {}
        for cs in chunk_sizes:
            r = measured(args, partial(bench_codecs, buf, isz, cs, args.repeat))
            report["codecs"][name][cs] = r
            codec_rows.append(
                [
                    f"{name} @{human(cs)}",
                    r["zstd1_ratio"],
                    r["zstd1_t1"],
                    r["zstd1_t2"],
                    r["zstd1_dec_t1"],
                    r["zstd3_ratio"],
                    r["zstd3_t1"],
                    r["zstd3_t2"],
                    r["bg1_ratio"],
                    r["bg1_t1"],
                    r["bg1_t2"],
                    r["bg1_dec_t1"],
                    r["bg3_ratio"],
                    r["bg3_t1"],
                    r["bg3_t2"],
                    r["top1_ratio"],
                    r["top1_t1"],
                    r["top1_t2"],
                    r["top1_dec_t1"],
                    f"{r['noise']:.0%}",
                ]
            )
            plane_rows.append(
                [
                    f"{name} @{human(cs)}",
                    " ".join(f"{x:.3f}" for x in r["bg1_planes"]),
                    " ".join(f"{x:.3f}" for x in r["bg3_planes"]),
                    " ".join(f"{x:.0%}" for x in r["bg1_raw_planes"]),
                    r["transpose_only"],
                ]
            )
            print(f"  done {name} @{human(cs)}", file=sys.stderr)
    if codec_rows:
        print()
        print(
            format_table(
                [
                    "data @chunk",
                    "z1 out/in",
                    "z1 1t",
                    "z1 2t",
                    "z1 dec",
                    "z3 out/in",
                    "z3 1t",
                    "z3 2t",
                    "bg1 out/in",
                    "bg1 1t",
                    "bg1 2t",
                    "bg1 dec",
                    "bg3 out/in",
                    "bg3 1t",
                    "bg3 2t",
                    "top1 out/in",
                    "top1 1t",
                    "top1 2t",
                    "top1 dec",
                    "noise",
                ],
                codec_rows,
                "## codecs: size out/in (lower is better) and GB/s of input bytes "
                "(z = zstd whole chunk, bg = byte-grouped zstd, top = byte-grouped, only the top "
                "plane zstd'd; 1t/2t = threads, dec = 1t decode into a preallocated buffer)",
            )
        )
    if codec_rows:
        print()
        print(
            format_table(
                [
                    "data @chunk",
                    "bg1 plane out/in (LSB..MSB)",
                    "bg3 plane out/in",
                    "bg1 raw-stored planes",
                    "transpose GB/s",
                ],
                plane_rows,
                f"## byte planes (plane kept raw unless zstd < {RAW_THRESHOLD} of it)",
            )
        )

    if not args.skip_io:
        io_buf = np.frombuffer(
            np.resize(datasets["fp32 trained weights"], args.io_mb * MiB).tobytes(), np.uint8
        )
        root = OUT_DIR / "io"
        root.mkdir(parents=True, exist_ok=True)
        io_rows = []
        report["io"] = {}
        try:
            for cs in chunk_sizes:
                r = measured(args, partial(bench_io, io_buf, cs, args.repeat, root))
                report["io"][cs] = r
                io_rows.append([human(cs), len(split(io_buf, cs)), *r.values()])
                io_rows[-1][-1] = f"{r['noise']:.0%}"
                print(f"  done io @{human(cs)}", file=sys.stderr)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print()
        print(
            format_table(
                [
                    "chunk",
                    "files",
                    "1 file+1 fsync",
                    "file/chunk fsync each",
                    "file/chunk batch fsync",
                    "file/chunk fsync 2t",
                    "cold read 1 file",
                    "cold read file/chunk",
                    "noise",
                ],
                io_rows,
                f"## disk GB/s, {args.io_mb} MiB per variant "
                "(writes are durable: fsync + dir fsync)",
            )
        )

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
        print(f"\n# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
