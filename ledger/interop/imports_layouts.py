"""Which checkpoints a path holds, and the values an imported checkpoint is made of.

This module owns the layouts ``ledger import`` recognises: finding the
checkpoints under a path (one checkpoint, or a directory of many in step
order), the :class:`Source` and :class:`Loaded` records, the
``from_pretrained`` side files (``hf_files``), and turning what a file held
into values a commit stores (:class:`ImportedState`, metrics, params).
Reading each framework's checkpoint is :mod:`ledger.interop.imports_formats`.
It never follows a symbolic link and never writes anything.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ledger.interop.imports_dcp import METADATA
from ledger.interop.imports_read import (
    ImportSourceError,
    shard_files,
)

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_STEP_IN_NAME = re.compile(r"step[=_-]?(\d+)")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")


class ImportedState:
    """A state dict read from a file, committed as the object that wrote it would be.

    The adapters commit live objects (a model, an optimizer, a scheduler)
    through ``state_dict()``, which the manifest records as a stateful node;
    wrapping the imported dict the same way gives the import the adapters'
    layout, so ``Ledger.restore`` into live objects accepts it.

    Example:
        >>> ImportedState({"lr": 0.1}).state_dict()
        {'lr': 0.1}
    """

    def __init__(self, state: Any) -> None:
        self.state = state

    def state_dict(self) -> Any:
        """The state read from the file."""
        return self.state

    def load_state_dict(self, state: Any) -> None:
        """Replace the state (what a restore into this object does)."""
        self.state = state


@dataclass
class Source:
    """One checkpoint found under the imported path: what it is and the files it consists of."""

    name: str
    kind: str  # trainer | lightning | accelerate | dcp | torch | safetensors | sharded
    path: Path
    files: list[Path]
    order: int | None = None


@dataclass
class Loaded:
    """A checkpoint read into a state tree and the metadata its source carried."""

    tree: dict[str, Any]
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def dir_files(directory: Path) -> list[Path]:
    """The regular files directly in ``directory`` (links are never followed), by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.is_symlink())


def weights_file(directory: Path) -> Path | None:
    """The model weights of a ``from_pretrained`` folder: an index, safetensors or ``.bin``."""
    for name in (
        "model.safetensors.index.json",
        "model.safetensors",
        "pytorch_model.bin.index.json",
        "pytorch_model.bin",
    ):
        if (directory / name).is_file():
            return directory / name
    return None


_STATE_FILES = re.compile(
    r"(trainer_state\.json|training_args\.bin|rng_state(_\d+)?\.pth|.*\.index\.json"
    r"|.*\.(safetensors|bin|pt|pth|ckpt|pkl|distcp)|\.metadata)"
)


_SIDE_FILES = re.compile(
    r"training_args\.bin|(optimizer|scheduler)(_\d+)?\.(pt|bin)|scaler\.pt"
    r"|rng_state(_\d+)?\.pth|pytorch_model.*\.bin|sampler(_\d+)?\.bin"
)


def hf_files(directory: Path) -> dict[str, Any]:
    """The files of a ``from_pretrained`` folder beside the weights, as ``ledger.File`` values.

    ``config.json``, ``generation_config.json``, tokenizer and processor
    files and custom code: every regular file that is not weights, optimizer,
    scheduler, RNG or Trainer state, stored under the state key ``hf_files``
    as the Transformers adapter commits them. Empty where ``ledger.File``
    (file objects in the manifest) is not available, or without ``config.json``.
    """
    try:
        file_type = importlib.import_module("ledger.state.files").File
    except (ImportError, AttributeError):
        return {}
    if not (directory / "config.json").is_file():
        return {}
    return {
        p.name: file_type(p.read_bytes())
        for p in dir_files(directory)
        if not _STATE_FILES.fullmatch(p.name)
    }


def with_hf_files(tree: dict[str, Any], directory: Path) -> dict[str, Any]:
    """``tree`` with :func:`hf_files` of ``directory`` under ``hf_files`` (when there are any)."""
    files = hf_files(directory)
    if files:
        tree["hf_files"] = files
    return tree


def _kind_of_file(path: Path) -> str | None:
    if path.name.endswith(".index.json"):
        return "sharded"
    if path.suffix == ".ckpt":
        return "lightning"
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in TORCH_SUFFIXES:
        return "torch"
    return None


def _kind_of_dir(directory: Path) -> str | None:
    names = {p.name for p in directory.iterdir()}
    if "trainer_state.json" in names:
        return "trainer"
    if METADATA in names:
        return "dcp"
    if any(n.startswith("random_states_") and n.endswith(".pkl") for n in names):
        return "accelerate"
    return None


def _source(path: Path) -> Source | None:
    """The checkpoint ``path`` is by itself, or None."""
    if path.is_symlink():
        return None
    if path.is_file():
        kind = _kind_of_file(path)
        if kind is None:
            return None
        files = [path]
        if kind == "sharded":
            files += [path.parent / s for s in shard_files(path)]
        return Source(path.name, kind, path, files, order_from_name(path.name))
    if not path.is_dir():
        return None
    kind = _kind_of_dir(path)
    if kind is not None:
        order = order_from_name(path.name)
        if kind == "trainer":
            order = int(read_json(path / "trainer_state.json").get("global_step", order or 0))
        return Source(path.name, kind, path, dir_files(path), order)
    return None


def _pretrained(path: Path) -> Source | None:
    """A ``save_pretrained`` directory as one checkpoint: its weights and config files."""
    weights = weights_file(path) if path.is_dir() and not path.is_symlink() else None
    found = _source(weights) if weights is not None else None
    if found is not None:
        found.name = path.name
        found.files += [p for p in dir_files(path) if not _STATE_FILES.fullmatch(p.name)]
    return found


def find_checkpoints(path: Path) -> list[Source]:
    """The checkpoints ``path`` holds, in step order: itself, or each checkpoint inside it.

    A directory with checkpoints inside (a Trainer ``output_dir``) is those
    checkpoints, even when it also holds a final ``save_model`` copy of the
    weights; only a directory with none inside is read as a ``save_pretrained``
    folder.

    Raises:
        ImportSourceError: ``path`` does not exist, or holds no layout this importer knows.

    Example:
        >>> [s.name for s in find_checkpoints(Path("out"))]  # doctest: +SKIP
        ['checkpoint-10', 'checkpoint-20']
    """
    if not path.exists():
        raise ImportSourceError(f"{path} does not exist", path=str(path))
    one = _source(path)
    if one is not None:
        return [one]
    found: list[Source] = []
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.iterdir()):
            if _SIDE_FILES.fullmatch(child.name):
                continue  # part of a checkpoint or a save_model folder, not a checkpoint
            src = _source(child) or _pretrained(child)
            if src is not None and (child.is_dir() or src.kind in ("lightning", "torch")):
                found.append(src)
    if not found:  # no checkpoints inside: the directory itself as a save_pretrained folder
        found = [s for s in [_pretrained(path)] if s is not None]
    if not found:
        raise ImportSourceError(
            f"{path} holds no checkpoint layout ledger import knows: a torch.save file "
            "(.pt/.pth/.bin), safetensors (single or *.index.json), a Trainer checkpoint-N "
            "directory, a Lightning .ckpt, an Accelerate save_state directory, a "
            "torch.distributed.checkpoint directory, or a directory of them",
            path=str(path),
        )
    return sorted(found, key=lambda s: (s.order is None, s.order or 0, s.name))


def order_from_name(name: str) -> int | None:
    """The step a checkpoint's name gives: ``step=N`` or its last number.

    Example:
        >>> order_from_name("epoch=1-step=40.ckpt"), order_from_name("checkpoint-7"), order_from_name("last.ckpt")
        (40, 7, None)
    """
    match = _STEP_IN_NAME.search(name) or _LAST_NUMBER.search(name)
    return int(match.group(1)) if match else None


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``, or an :class:`ImportSourceError` naming the file."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ImportSourceError(
            f"{path} is not valid JSON (truncated or damaged?): {e}", path=str(path)
        ) from None
    if not isinstance(value, dict):
        raise ImportSourceError(f"{path} does not hold a JSON object", path=str(path))
    return value


def as_int(value: Any) -> int | None:
    """A step or epoch as an int (numbers and one-element tensors), else None.

    Example:
        >>> as_int(torch.tensor(3)), as_int(2.0), as_int("x")
        (3, 2, None)
    """
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def metric_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite-or-not numbers among ``values`` as floats (tensors of one element included).

    Example:
        >>> metric_floats({"loss": 0.5, "name": "x", "n": torch.tensor(2)})
        {'loss': 0.5, 'n': 2.0}
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[str(key)] = float(value)
    return out


def plain_params(values: Mapping[Any, Any]) -> dict[str, Any]:
    """JSON-like params from a checkpoint's hyper-parameters; anything else as its ``repr``."""

    def clean(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | str):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return repr(value)

    return {str(k): clean(v) for k, v in values.items()}


def plain_tree(value: Any) -> Any:
    """A loaded tree with the few values ``weights_only`` admits that a commit stores differently.

    Sets become sorted lists, ``torch.dtype`` / ``torch.device`` their names
    (as the adapters' ``storable`` converts them); everything else is kept.
    """
    if isinstance(value, dict):
        return {k: plain_tree(v) for k, v in value.items()}
    if isinstance(value, ImportedState):
        return ImportedState(plain_tree(value.state))
    if isinstance(value, list):
        return [plain_tree(v) for v in value]
    if (
        isinstance(value, tuple)
        and not isinstance(value, torch.Size)
        and not hasattr(value, "_fields")
    ):
        return tuple(plain_tree(v) for v in value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, torch.dtype | torch.device):
        return str(value)
    return value
