"""Metadata captured on every commit: code, environment, hardware, model summary.

This module owns what the ledger records about the world around a commit and
the secret-scrubbing of it and of the user's own fields (docs/metadata.md).
Everything is gathered without user code and without importing optional
frameworks (versions come from package metadata). It must never store a
secret: environment variables whose names look secret are dropped, values
after ``--token``-like flags are replaced, credentials are stripped from
URLs, and token-shaped strings (``ledger.secrets``) are redacted wherever
they appear, in ``params=``, metric names, messages and ``data=`` with a
:class:`~ledger.errors.SecretRedactedWarning` unless named in ``allow_secrets=``.
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
import warnings
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, NamedTuple

from ledger.errors import SecretRedactedWarning, UnsupportedValueError
from ledger.secrets import (
    REDACTED,
    is_secret_env_name,
    is_secret_name,
    looks_like_credential,
    redact,
    strip_url_credentials,
)

PROCESS_STARTED = time.time()
# ``HF_TOKEN=...`` on a command line (``env``, launchers): the name decides, as for the environment.
_ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
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


def _is_secret_flag(flag: str) -> bool:
    """A flag named like a secret: its last word says so (``--wandb-key``, ``--auth``, ``--hf_token``)."""
    return flag.startswith("-") and len(flag) > 1 and is_secret_name(flag)


def redact_argv(argv: list[str]) -> list[str]:
    """The command line with secrets replaced by ``<redacted>``.

    The value of a flag named like a secret (``--token``, ``--api-key=``,
    ``--wandb-key``, ``--auth``, ``--hf_token`` ...), the value of a
    ``NAME=value`` argument whose name looks secret (``HF_TOKEN=...``), and any
    token-shaped part of any argument (``hf_...``, ``Bearer ...``, URL
    credentials) are replaced.

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
        if _is_secret_flag(flag):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        assignment = _ENV_ASSIGNMENT.match(arg)
        if assignment and is_secret_env_name(assignment.group(1)):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        out.append(redact(arg))
    return out


def scrub(value: Any) -> Any:
    """``value`` (dicts, lists, strings) with every secret redacted (docs/metadata.md).

    Strings lose URL credentials and token-shaped parts; a credential-like
    string under a key named like a secret (``password``, ``hub_token``) is
    replaced whole.

    Example:
        >>> scrub({"remote": "https://u:pw@host/r", "db": {"password": "hunter2!x"}})
        {'remote': 'https://host/r', 'db': {'password': '<redacted>'}}
    """
    return _scrub(value, None, lambda _kind, _path: None, ())


def _scrub(
    value: Any,
    name: str | None,
    found: Callable[[str, tuple[str, ...]], None],
    path: tuple[str, ...],
) -> Any:
    if isinstance(value, str):
        if name is not None and is_secret_name(name) and looks_like_credential(value):
            found("a value named like a secret", path)
            return REDACTED
        return redact(value, lambda kind: found(kind, path))
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for k, v in value.items():
            key = _scrub(k, None, found, (*path, str(k))) if isinstance(k, str) else k
            out[key] = _scrub(v, k if isinstance(k, str) else None, found, (*path, str(k)))
        return out
    if isinstance(value, list | tuple):
        return [_scrub(v, name, found, (*path, str(i))) for i, v in enumerate(value)]
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
            "remote": redact(remote) if remote else None,
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
        k: redact(v)
        for k, v in sorted(os.environ.items())
        if k.startswith(_ENV_PREFIXES) and not is_secret_env_name(k)
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
    """The ``meta`` of one commit (everything captured scrubbed of secrets).

    Args:
        state: the committed state (for the model summary).
        data: the user's data lineage (dataset names, revisions, fingerprints),
            already passed through :func:`scrub_user` (stored as given here).
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
    scrubbed: dict[str, Any] = scrub(meta)
    if data:
        scrubbed["data"] = dict(data)
    return scrubbed


class UserFields(NamedTuple):
    """The user-given metadata of one commit, secrets redacted (what :func:`scrub_user` returns)."""

    message: str | None
    metrics: dict[str, float]
    params: dict[str, Any]
    data: dict[str, Any]


def _allowed_names(allow_secrets: Iterable[str] | str | None) -> frozenset[str]:
    if allow_secrets is None:
        return frozenset()
    names = [allow_secrets] if isinstance(allow_secrets, str) else list(allow_secrets)
    for name in names:
        if not isinstance(name, str):
            raise UnsupportedValueError(
                f"allow_secrets holds {name!r}: it lists field names such as "
                "'hub_token', 'metrics.loss', 'data.source' or 'message'"
            )
    return frozenset(names)


def _is_allowed(allowed: frozenset[str], names: tuple[str, ...]) -> bool:
    return any(n == a or n.startswith(a + ".") for n in names for a in allowed)


def scrub_user(
    *,
    message: str | None,
    metrics: Mapping[str, float],
    params: Mapping[str, Any],
    data: Mapping[str, Any],
    allow_secrets: Iterable[str] | str | None = None,
) -> UserFields:
    """Redact secrets in the user-given fields of a commit, with one warning naming each.

    ``params=``, metric names, the message and ``data=`` go through the same
    rules as captured metadata (:func:`scrub`). A field is named by its path:
    ``lr`` or ``params.lr``, ``optim.betas.0`` for nested params, ``loss`` or
    ``metrics.loss``, ``data.source``, ``message``; a field named in
    ``allow_secrets`` (or below a name there) is stored as given.

    Warns:
        SecretRedactedWarning: naming each redacted field (with its secret
            redacted), what it looked like, and the ``allow_secrets`` to keep it.

    Example:
        >>> u = scrub_user(message="run", metrics={}, params={"lr": 0.1}, data={})
        >>> u.params
        {'lr': 0.1}
    """
    allowed = _allowed_names(allow_secrets)
    hits: dict[str, set[str]] = {}

    def field(qualified: str, plain: str | None, value: Any, name: str | None = None) -> Any:
        names = (qualified,) if plain is None else (qualified, plain)
        if _is_allowed(allowed, names):
            return value
        kinds: set[str] = set()
        out = _scrub(value, name, lambda kind, _path: kinds.add(kind), ())
        if kinds:
            hits.setdefault(redact(plain if plain is not None else qualified), set()).update(kinds)
        return out

    def tree(prefix: str, values: Mapping[str, Any], plain: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            out[field(f"{prefix}.{key}", key if plain else None, key)] = walk(
                f"{prefix}.{key}", key if plain else None, key, value
            )
        return out

    def walk(qualified: str, plain: str | None, name: str, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                field(f"{qualified}.{k}", _join(plain, k), k): walk(
                    f"{qualified}.{k}", _join(plain, k), k, v
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [
                walk(f"{qualified}.{i}", _join(plain, str(i)), name, v) for i, v in enumerate(value)
            ]
        return field(qualified, plain, value, name)

    metrics_out: dict[str, float] = {}
    for key, number in metrics.items():
        clean = field(f"metrics.{key}", key, key)
        while clean in metrics_out:  # two names redacted alike stay two metrics
            clean += "'"
        metrics_out[clean] = number
    fields = UserFields(
        message=None if message is None else field("message", None, message),
        metrics=metrics_out,
        params=tree("params", params, plain=True),
        data=tree("data", data, plain=False),
    )
    if hits:
        listed = "; ".join(f"{name!r} ({', '.join(sorted(k))})" for name, k in hits.items())
        warnings.warn(
            SecretRedactedWarning(
                f"secrets in this commit's metadata were stored as {REDACTED}: {listed}. "
                f"If a field is not a secret, name it in allow_secrets="
                f"{sorted(hits)!r} to store it as given (docs/metadata.md)",
                fields=sorted(hits),
            ),
            stacklevel=4,
        )
    return fields


def _join(prefix: str | None, key: str) -> str | None:
    return None if prefix is None else f"{prefix}.{key}"


__all__ = [
    "UserFields",
    "capture",
    "installed_packages",
    "is_secret_env_name",
    "is_secret_name",
    "redact_argv",
    "scrub",
    "scrub_user",
    "strip_url_credentials",
]
