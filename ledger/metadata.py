"""Metadata captured on every commit: code, environment, hardware, model summary.

This module owns what the ledger records about the world around a commit and
the secret-scrubbing rules (docs/metadata.md). Everything is gathered without
user code and without importing optional frameworks (versions come from
package metadata). It must never store a secret: environment variables whose
names look secret are dropped, values after ``--token``-like flags are
replaced, and credentials are stripped from URLs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

REDACTED = "<redacted>"
PROCESS_STARTED = time.time()
_SECRET_NAME = re.compile(
    r"TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH|PRIVATE|SESSION|COOKIE", re.I
)
_SECRET_FLAG = re.compile(
    r"^--?[\w-]*(token|api[-_]?key|password|passwd|secret|credential)s?$", re.I
)
_URL_CRED = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s:]+(?::[^/@\s]*)?)@")
# Environment variables worth keeping for reproducibility (then filtered for secrets).
_ENV_PREFIXES = (
    "CUDA_", "NCCL_", "OMP_", "MKL_", "PYTORCH_", "TORCH_", "TORCHINDUCTOR_", "HF_",
    "TRANSFORMERS_", "SLURM_", "WANDB_PROJECT", "WORLD_SIZE", "RANK", "LOCAL_RANK",
    "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PYTHONHASHSEED", "CUBLAS_WORKSPACE_CONFIG",
)  # fmt: skip
_FRAMEWORKS = (
    "torch",
    "numpy",
    "transformers",
    "lightning",
    "pytorch-lightning",
    "accelerate",
    "safetensors",
)


def is_secret_name(name: str) -> bool:
    """Whether an environment variable name looks like it holds a secret.

    Example:
        >>> is_secret_name("HF_TOKEN"), is_secret_name("CUDA_VISIBLE_DEVICES")
        (True, False)
    """
    return bool(_SECRET_NAME.search(name))


def strip_url_credentials(text: str) -> str:
    """Remove ``user:password@`` from every URL in ``text``.

    Example:
        >>> strip_url_credentials("https://user:pw@github.com/org/repo.git")
        'https://github.com/org/repo.git'
    """
    return _URL_CRED.sub(r"\1", text)


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with values of secret-looking flags replaced.

    Example:
        >>> redact_argv(["train.py", "--token", "abc", "--api-key=xyz", "--lr", "3"])
        ['train.py', '--token', '<redacted>', '--api-key=<redacted>', '--lr', '3']
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(strip_url_credentials(arg))
    return out


def scrub(value: Any) -> Any:
    """Strip URL credentials from every string inside ``value`` (dicts, lists)."""
    if isinstance(value, str):
        return strip_url_credentials(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if isinstance(k, str) and is_secret_name(k) else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], capture_output=True, timeout=5, check=True, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.decode("utf-8", "replace").strip()


@lru_cache(maxsize=1)
def code_info() -> dict[str, Any]:
    """Git commit, branch, dirty flag, diff hash, remote (credentials stripped); command line.

    Captured once per process (the code does not change under a running job).
    """
    info: dict[str, Any] = {"argv": redact_argv(list(sys.argv)), "cwd": os.getcwd()}
    commit = _git("rev-parse", "HEAD")
    if commit:
        status = _git("status", "--porcelain") or ""
        diff = _git("diff", "HEAD") or ""
        remote = _git("config", "--get", "remote.origin.url")
        info["git"] = {
            "commit": commit,
            "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None,
            "remote": strip_url_credentials(remote) if remote else None,
        }
    return info


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def installed_packages() -> bytes:
    """``name==version`` of every installed distribution, sorted, one per line."""
    seen = sorted(
        {f"{d.metadata['Name']}=={d.version}" for d in md.distributions() if d.metadata["Name"]}
    )
    return ("\n".join(seen) + "\n").encode()


@lru_cache(maxsize=1)
def environment_info() -> dict[str, Any]:
    """Python, platform, framework versions, CUDA/cuDNN, and non-secret training env vars."""
    import torch  # here, not at the top: `ledger log` and `--help` must not import torch

    versions = {name: v for name in _FRAMEWORKS if (v := _version(name))}
    cudnn = None
    if torch.backends.cudnn.is_available():
        cudnn = torch.backends.cudnn.version()
    env = {
        k: strip_url_credentials(v)
        for k, v in sorted(os.environ.items())
        if k.startswith(_ENV_PREFIXES) and not is_secret_name(k)
    }
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "versions": versions,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "env": env,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@lru_cache(maxsize=1)
def _static_hardware() -> dict[str, Any]:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            gpus.append({"name": props.name, "memory": props.total_memory})
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "ram": _ram_bytes(), "gpus": gpus}


def hardware_info() -> dict[str, Any]:
    """CPU model and count, RAM, GPUs, and the distributed world size and rank."""
    info = dict(_static_hardware())
    import torch

    world, rank = 1, 0
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    else:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        rank = int(os.environ.get("RANK", "0") or 0)
    info["world_size"] = world
    info["rank"] = rank
    return info


def model_summary(state: Mapping[Any, Any]) -> dict[str, Any]:
    """Per ``nn.Module`` at the top of the state: parameters, trainable, dtype mix, child sizes.

    Example:
        >>> model_summary({"model": torch.nn.Linear(2, 3)})["model"]["parameters"]
        9
    """
    import torch

    out: dict[str, Any] = {}
    for key, value in state.items():
        if not isinstance(value, torch.nn.Module):
            continue
        params = list(value.parameters())
        dtypes: dict[str, int] = {}
        for p in params:
            name = str(p.dtype).removeprefix("torch.")
            dtypes[name] = dtypes.get(name, 0) + p.numel()
        children = {
            name: sum(p.numel() for p in child.parameters())
            for name, child in value.named_children()
        }
        out[str(key)] = {
            "class": f"{type(value).__module__}.{type(value).__qualname__}",
            "parameters": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
            "dtypes": dtypes,
            "children": children,
        }
    return out


def prefetch() -> None:
    """Gather the once-per-process parts now (a background thread at ``Ledger.open``),
    so the first commit does not pay for listing packages and running git."""
    installed_packages()
    code_info()
    if "torch" in sys.modules:  # a training script; a read-only command never loads torch
        environment_info()
        _static_hardware()


def capture(
    state: Mapping[Any, Any], data: Mapping[str, Any] | None, packages_blob: str | None
) -> dict[str, Any]:
    """The ``meta`` of one commit (everything scrubbed of secrets).

    Args:
        state: the committed state (for the model summary).
        data: the user's data lineage (dataset names, revisions, fingerprints).
        packages_blob: id of the stored installed-package list.
    """
    env = dict(environment_info())
    env["packages"] = packages_blob
    meta: dict[str, Any] = {
        "run": {"started": PROCESS_STARTED, "elapsed_s": round(time.time() - PROCESS_STARTED, 3)},
        "code": code_info(),
        "env": env,
        "hardware": hardware_info(),
        "model": model_summary(state),
    }
    if data:
        meta["data"] = dict(data)
    scrubbed: dict[str, Any] = scrub(meta)
    return scrubbed


__all__ = [
    "capture",
    "installed_packages",
    "is_secret_name",
    "redact_argv",
    "scrub",
    "strip_url_credentials",
]
