"""Incremental push vs uploading the whole checkpoint, to a local S3 server and a local Hub.

A ~1 GB fp32 training state (Linear layers + AdamW moments) is committed and
pushed; then only the last layer (its weight, bias and AdamW moments) changes,
it is committed again, and pushed again. The incremental push is compared with
what people do without training-ledger: upload the whole new checkpoint as one
safetensors file with the plain client (``s3fs.put`` to the S3 server,
``huggingface_hub.upload_folder`` to the Hub). Reported as bytes and seconds,
and as ratios incremental / whole. Also: the first push's time for several
data-pack sizes (how the default pack size was chosen).

Servers run as child processes on 127.0.0.1 (moto's S3 server; the fake Hub of
tests/servers/hub.py, answering "lfs" so uploads go through the LFS API).
Numbers from a loopback server measure client-side work plus local transfer,
not a WAN: on a real network the byte ratios carry over, the time ratios grow
toward them.

Run: ``.venv/bin/python benchmarks/push.py [--size-mb 1000] [--pack-mb 16,64,256]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKEN = "hf_benchmarkToken"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def _servers() -> tuple[list[subprocess.Popen[bytes]], str, str]:
    s3_port, hub_port = _port(), _port()
    bindir = Path(sys.executable).parent
    procs = [
        subprocess.Popen(
            [str(bindir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, str(REPO_ROOT / "tests/servers/hub.py"), str(hub_port), TOKEN],
            stdout=subprocess.DEVNULL,
        ),
    ]
    _wait(s3_port)
    _wait(hub_port)
    return procs, f"http://127.0.0.1:{s3_port}", f"http://127.0.0.1:{hub_port}"


def _state(size_mb: float) -> tuple[nn.Sequential, torch.optim.AdamW]:
    width = 2048
    layers = max(1, round(size_mb * 1e6 / (3 * 4 * (width * width + width))))
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(width, width) for _ in range(layers)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, width)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return model, opt


def _fine_tune_last(model: nn.Sequential, opt: torch.optim.AdamW) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    last = model[-1]
    for p in last.parameters():
        p.requires_grad_(True)
    model(torch.randn(4, last.in_features)).square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _flat(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    for i, st in opt.state_dict()["state"].items():
        out.update({f"optim.{i}.{k}": v for k, v in st.items() if isinstance(v, torch.Tensor)})
    return out


def _timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(size_mb: float, pack_mbs: list[int], work: Path) -> dict[str, Any]:
    """Every measurement; returns the report."""
    procs, s3, hub = _servers()
    os.environ.update(
        AWS_ENDPOINT_URL=s3,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        HF_ENDPOINT=hub,
        HF_TOKEN=TOKEN,
        HF_HUB_DISABLE_XET="1",
        HF_HUB_CACHE=str(work / "hf-cache"),
    )
    import boto3
    import fsspec
    from huggingface_hub import HfApi

    from ledger import Ledger
    from ledger.remotes import transfer

    try:
        boto3.client("s3", endpoint_url=s3).create_bucket(Bucket="bench")
        model, opt = _state(size_mb)
        lg = Ledger.open(work / "ledger", create=True)
        lg.commit({"model": model, "optim": opt}, step=1, rng=False)
        report: dict[str, Any] = {"size_bytes": sum(t.nbytes for t in _flat(model, opt).values())}

        packs = {}
        for mb in pack_mbs:
            transfer.PACK_TARGET = mb << 20
            lg.remote_add(f"s3-{mb}", f"s3://bench/pack-{mb}")
            r, t = _timed(lambda mb=mb: lg.push(f"s3-{mb}"))
            packs[mb] = {"seconds": round(t, 2), "packs": r.packs, "bytes": r.bytes_sent}
        report["first_push_by_pack_mb"] = packs
        transfer.PACK_TARGET = 64 << 20

        lg.remote_add("origin", "s3://bench/run")
        lg.remote_add("hub", "hf://user/run")
        first_s3, t_first_s3 = _timed(lambda: lg.push("origin"))
        first_hub, t_first_hub = _timed(lambda: lg.push("hub"))

        _fine_tune_last(model, opt)
        lg.commit({"model": model, "optim": opt}, step=2, rng=False)
        inc_s3, t_inc_s3 = _timed(lambda: lg.push("origin"))
        inc_hub, t_inc_hub = _timed(lambda: lg.push("hub"))

        ckpt = work / "whole" / "model.safetensors"
        ckpt.parent.mkdir()
        save_file(_flat(model, opt), str(ckpt))
        whole = ckpt.stat().st_size
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        _, t_put = _timed(lambda: fs.put(str(ckpt), "bench/whole/model.safetensors"))
        api = HfApi(endpoint=hub, token=TOKEN)
        api.create_repo("user/whole", exist_ok=True)
        _, t_upload = _timed(
            lambda: api.upload_folder(repo_id="user/whole", folder_path=str(ckpt.parent))
        )

        report["s3"] = {
            "first_push": {"bytes": first_s3.bytes_sent, "seconds": round(t_first_s3, 2)},
            "incremental_push": {
                "bytes": inc_s3.bytes_sent,
                "chunks": inc_s3.chunks_sent,
                "skipped": inc_s3.bytes_skipped,
                "seconds": round(t_inc_s3, 3),
            },
            "s3fs_put_whole": {"bytes": whole, "seconds": round(t_put, 2)},
            "bytes_ratio": round(inc_s3.bytes_sent / whole, 4),
            "time_ratio": round(t_inc_s3 / t_put, 4),
        }
        report["hub"] = {
            "first_push": {"bytes": first_hub.bytes_sent, "seconds": round(t_first_hub, 2)},
            "incremental_push": {"bytes": inc_hub.bytes_sent, "seconds": round(t_inc_hub, 3)},
            "upload_folder_whole": {"bytes": whole, "seconds": round(t_upload, 2)},
            "bytes_ratio": round(inc_hub.bytes_sent / whole, 4),
            "time_ratio": round(t_inc_hub / t_upload, 4),
        }
        clone_dir = work / "clone"
        _, t_clone = _timed(lambda: Ledger.clone("s3://bench/run", clone_dir, depth=1).close())
        report["s3"]["clone_depth1_seconds"] = round(t_clone, 2)
        lg.close()
        return report
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main() -> None:
    """Parse arguments, run, print JSON (and write it under --out)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1000)
    parser.add_argument("--pack-mb", default="16,64,256")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.size_mb, [int(x) for x in args.pack_mb.split(",") if x], Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "push.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
