"""Float codec benchmark: the store's codec against ZipNN, and what compression does to a commit.

On the weights of a small MLP trained here (``chunking.train_mlp``: a few
hundred AdamW steps on a teacher task, cached under ``benchmarks/out/``) and
its AdamW ``exp_avg`` / ``exp_avg_sq``, each in fp32 and cast to bf16, it
measures:

* **codecs**: the store's float codec (``encode_chunk`` on 4 MiB chunks, a
  thread pool of 1 or 2 over the chunks, as a commit runs it) and ZipNN
  (``ZipNN(input_format="byte", threads=1 or 2)`` on the whole buffer, its
  defaults otherwise): stored/raw ratio, encode and decode GB/s of raw bytes,
  every round trip checked. ZipNN rewrites its input in place while
  compressing, so it gets a fresh copy per call (copied outside the timing).
  Without ZipNN installed (``pip install -e '.[bench]'``) its rows say
  "skipped: zipnn not installed".
* **commits**: a state of ``--commit-mb`` MB made of the trained tensors and
  copies of them scaled by ``1 + k/32`` (new mantissas even in bf16, so no
  chunk dedups; the exponents keep their statistics), in fp32 and in bf16, written by
  ``commit`` with ``compress=True``, ``False`` and ``"auto"`` into a new
  durable ledger, against safetensors' ``save_file`` + fsync; cases take turns
  in every round, so a busy neighbour slows them alike; medians and ratios
  (x safetensors) in the same run.

Run:  ``.venv/bin/python benchmarks/codec.py [--mb 32] [--steps 300] [--commit-mb 768] [--repeat 5] [--json out.json]``

Training the 32 MiB MLP takes ~30 s on two quiet cores (cached afterwards).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from _util import (
    MiB,
    NoiseMeter,
    format_table,
    fsync_tree,
    gbps,
    machine_info,
    prefault,
    wait_for_idle,
)
from chunking import OUT_DIR, train_mlp

from ledger import Ledger
from ledger.objects.codecs import decoder, encode_chunk

CHUNK = 4 * MiB


def datasets(mb: int, steps: int, seed: int) -> dict[str, torch.Tensor]:
    """The trained tensors in fp32 and bf16, one flat vector each."""
    trained = train_mlp(mb, steps, seed)
    out: dict[str, torch.Tensor] = {}
    for dtype, label in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for name in ("weights", "exp_avg", "exp_avg_sq"):
            out[f"{label} {name}"] = trained[name].to(dtype).contiguous()
    return out


class Contender:
    """One codec on one buffer: its ratio, and encode/decode calls to time (round trip checked)."""

    def __init__(
        self,
        ratio: float,
        encode: Callable[[Any], Any],
        decode: Callable[[], Any],
        fresh: Callable[[], Any] = lambda: None,
    ) -> None:
        self.ratio, self.encode, self.decode, self.fresh = ratio, encode, decode, fresh
        self.enc_s = self.dec_s = self.enc_cpu = self.dec_cpu = float("inf")

    def time_once(self) -> None:
        """One encode and one decode; keeps the best wall and CPU (process) seconds of each.

        CPU seconds are what the codec costs whatever else the machine runs: on
        a shared box they compare two codecs more fairly than wall time does.
        """
        arg = self.fresh()  # untimed: a new input buffer where the codec needs one
        c0, t0 = time.process_time(), time.perf_counter()
        self.encode(arg)
        c1, t1 = time.process_time(), time.perf_counter()
        self.decode()
        c2, t2 = time.process_time(), time.perf_counter()
        self.enc_s, self.dec_s = min(self.enc_s, t1 - t0), min(self.dec_s, t2 - t1)
        self.enc_cpu, self.dec_cpu = min(self.enc_cpu, c1 - c0), min(self.dec_cpu, c2 - c1)

    def result(self, nbytes: int) -> dict[str, float]:
        return {
            "ratio": self.ratio,
            "encode_gbps": gbps(nbytes, self.enc_s),
            "decode_gbps": gbps(nbytes, self.dec_s),
            "encode_gb_per_cpu_s": gbps(nbytes, self.enc_cpu),
            "decode_gb_per_cpu_s": gbps(nbytes, self.dec_cpu),
        }


def ours(raw: bytes, itemsize: int, pool: ThreadPoolExecutor) -> Contender:
    """The store's codec over 4 MiB chunks on the pool's workers."""
    view = memoryview(raw)
    chunks = [view[i : i + CHUNK] for i in range(0, len(raw), CHUNK)]

    def enc(_: Any = None) -> list[tuple[str, Any]]:
        return list(
            pool.map(lambda c: encode_chunk(c, float_itemsize=itemsize, compress=True), chunks)
        )

    blobs = enc()
    out = bytearray(len(raw))
    dest = memoryview(out)

    def one(i: int) -> None:
        name, blob = blobs[i]
        lo = i * CHUNK
        decoder(name).decode_into(memoryview(blob), dest[lo : lo + len(chunks[i])])

    def dec() -> None:
        list(pool.map(one, range(len(chunks))))

    dec()
    assert bytes(out) == raw, "our codec did not round-trip"
    return Contender(sum(len(b) for _, b in blobs) / len(raw), enc, dec)


def zipnn(raw: bytes, dtype: str, threads: int) -> Contender | str:
    """ZipNN's byte-buffer codec with ``threads`` threads, or why it was skipped.

    ZipNN rewrites the buffer it compresses, so every call gets a fresh copy.
    """
    try:
        from zipnn import ZipNN
    except ImportError:
        return "skipped: zipnn not installed"
    zn = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
    packed = zn.compress(bytearray(raw))
    assert bytes(zn.decompress(packed)) == raw, "zipnn did not round-trip"
    return Contender(
        len(packed) / len(raw), zn.compress, lambda: zn.decompress(packed), lambda: bytearray(raw)
    )


def bench_codecs(
    tensors: dict[str, torch.Tensor], repeat: int, wait_idle: float
) -> list[dict[str, Any]]:
    """Ours and ZipNN take turns in every repeat (best of ``repeat``), so load hits both alike."""
    rows = []
    for name, t in tensors.items():
        wait_for_idle(wait_idle)
        raw = t.view(torch.uint8).numpy().tobytes()
        zdtype = "bfloat16" if t.dtype == torch.bfloat16 else "float32"
        for threads in (1, 2):
            meter = NoiseMeter()
            meter.start()
            with ThreadPoolExecutor(threads) as pool:
                mine = ours(raw, t.element_size(), pool)
                theirs = zipnn(raw, zdtype, threads)
                for _ in range(repeat):
                    mine.time_once()
                    if isinstance(theirs, Contender):
                        theirs.time_once()
            row = {
                "data": name,
                "threads": threads,
                "ours": mine.result(len(raw)),
                "zipnn": theirs.result(len(raw)) if isinstance(theirs, Contender) else theirs,
                "noise": meter.stop(),
            }
            rows.append(row)
            print(f"  {name} threads={threads}: {row}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------- commits


def commit_state(
    tensors: dict[str, torch.Tensor], label: str, nbytes: int
) -> dict[str, torch.Tensor]:
    """About ``nbytes`` of the ``label`` (fp32/bf16) tensors: the originals, then scaled copies."""
    base = {k.split(" ", 1)[1]: t for k, t in tensors.items() if k.startswith(label)}
    size = sum(t.numel() * t.element_size() for t in base.values())
    state = dict(base)
    for k in range(1, max(1, round(nbytes / size))):
        for name, t in base.items():
            state[f"{name}.{k}"] = (t.float() * (1 + k / 32)).to(t.dtype)
    return state


def _safetensors(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    file = path / "state.safetensors"
    save_file(state, str(file))
    fsync_tree(path)


def _ledger(compress: bool | str) -> Callable[[dict[str, torch.Tensor], Path], dict[str, Any]]:
    def save(state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
        with Ledger.open(path, create=True, compress=compress) as lg:  # type: ignore[arg-type]
            lg.commit(state, rng=False)
            rates = lg.store.rates
            return {"codec_gbps_per_worker": rates.codec, "disk_gbps": rates.disk}

    return save


def _stored(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.pack"))


def bench_commits(
    state: dict[str, torch.Tensor], repeat: int, root: Path, wait_idle: float
) -> dict[str, dict[str, Any]]:
    cases: dict[str, Callable[[dict[str, torch.Tensor], Path], Any]] = {
        "safetensors save_file, fsync": _safetensors,
        "commit compress=False": _ledger(False),
        "commit compress=True": _ledger(True),
        'commit compress="auto"': _ledger("auto"),
    }
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    times: dict[str, list[float]] = {k: [] for k in cases}
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    extra: dict[str, Any] = {}
    meter = NoiseMeter()
    meter.start()
    for rnd in range(repeat):
        wait_for_idle(wait_idle)
        for key, fn in cases.items():
            path = root / f"{rnd}-{len(times[key])}-{abs(hash(key))}"
            prefault(2 * nbytes)
            c0, t0 = time.process_time(), time.perf_counter()
            info = fn(state, path)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)  # this process's CPU, all threads
            if key != "safetensors save_file, fsync":
                extra[key] = {"stored": _stored(path) / nbytes, **(info or {})}
            shutil.rmtree(path)
    noise = meter.stop()
    base = statistics.median(times["safetensors save_file, fsync"])
    out = {}
    for key, ts in times.items():
        med = statistics.median(ts)
        out[key] = {"median_s": med, "best_s": min(ts), "x_safetensors": med / base}
        out[key] |= {"cpu_s": statistics.median(cpu[key]), "noise": noise}
        out[key].update(extra.get(key, {}))
    return out


def print_codecs(codecs: list[dict[str, Any]]) -> None:
    rows = []
    for r in codecs:
        o, z = r["ours"], r["zipnn"]
        if not isinstance(z, dict):
            z = dict.fromkeys(o, None) | {"ratio": z}
        cells = [
            (
                f"{o['ratio']:.3f}",
                z["ratio"] if isinstance(z["ratio"], str) else f"{z['ratio']:.3f}",
            )
        ]
        keys = ("encode_gbps", "decode_gbps", "encode_gb_per_cpu_s", "decode_gb_per_cpu_s")
        cells += [(o[k], z[k]) for k in keys]
        rows.append([r["data"], r["threads"], *(v for pair in cells for v in pair), r["noise"]])
    heads = ["data", "threads", "ratio ours", "ratio zipnn", "enc ours", "enc zipnn"]
    heads += ["dec ours", "dec zipnn", "enc/cpu ours", "enc/cpu zipnn", "dec/cpu ours"]
    heads += ["dec/cpu zipnn", "noise"]
    title = "codecs (ratio = stored/raw; GB/s of raw bytes, wall and per CPU-second)"
    print(format_table(heads, rows, title))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=32, help="MiB of fp32 weights to train")
    ap.add_argument("--commit-mb", type=int, default=768, help="MB of state per commit")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--part", choices=("all", "codecs", "commits"), default="all")
    ap.add_argument(
        "--wait-idle", type=float, default=60, help="seconds to wait for a quiet machine per case"
    )
    ap.add_argument("--workdir", type=Path, default=OUT_DIR / "codec")
    args = ap.parse_args(argv)

    tensors = datasets(args.mb, args.steps, args.seed)
    print(json.dumps(machine_info()), file=sys.stderr)
    codecs = bench_codecs(tensors, args.repeat, args.wait_idle) if args.part != "commits" else []
    if codecs:
        print_codecs(codecs)
    commits: dict[str, Any] = {}
    args.workdir.mkdir(parents=True, exist_ok=True)
    for label in ("fp32", "bf16") if args.part != "codecs" else ():
        state = commit_state(tensors, label, args.commit_mb * 10**6)
        commits[label] = bench_commits(state, args.repeat, args.workdir, args.wait_idle)
        crow = [
            [
                k,
                *(
                    v.get(c)
                    for c in ("median_s", "best_s", "x_safetensors", "cpu_s", "stored", "noise")
                ),
            ]
            for k, v in commits[label].items()
        ]
        heads = ["case", "median s", "best s", "x safetensors", "cpu s", "stored/raw", "noise"]
        print(format_table(heads, crow, f"\ncommit of the {label} state (fsync'd)"))
    shutil.rmtree(args.workdir, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps({"codecs": codecs, "commits": commits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
