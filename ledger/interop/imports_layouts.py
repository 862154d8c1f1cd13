"""Which checkpoints a path holds, and each one as the state tree an adapter would have committed.

This module owns the layouts ``ledger import`` recognises: finding the
checkpoints under a path (one checkpoint, or a directory of many in step
order) and reading one into a tree with its step, epoch, metrics and params.
The trees use the keys the framework adapters commit, so an imported
checkpoint resumes through the adapter: a Trainer ``checkpoint-N`` becomes
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``trainer_state`` and
``__rng__`` (as ``LedgerCallback`` commits); a Lightning ``.ckpt`` is
Lightning's own checkpoint dict (as ``LedgerCheckpoint`` commits); an
Accelerate ``save_state`` directory becomes ``models``, ``optimizers``,
``schedulers``, ``dataloaders``, ``custom``, ``accelerator`` and ``__rng__``.
It never follows a symbolic link and never writes anything.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ledger.interop.imports_dcp import METADATA, read_dcp
from ledger.interop.imports_read import (
    ACCELERATE_ALLOW,
    TRAINER_RNG_ALLOW,
    ImportSourceError,
    load_safetensors,
    load_sharded,
    load_torch,
    shard_files,
)
from ledger.state.rng import RNG_KEY

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
_STEP_IN_NAME = re.compile(r"step[=_-]?(\d+)")
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
_TRAINER_PARAMS = (
    "train_batch_size",
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "eval_steps",
    "save_steps",
)


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


def _files(directory: Path) -> list[Path]:
    """The regular files directly in ``directory`` (links are never followed), by name."""
    return sorted(p for p in directory.iterdir() if p.is_file() and not p.is_symlink())


def _weights_file(directory: Path) -> Path | None:
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
        for p in _files(directory)
        if not _STATE_FILES.fullmatch(p.name)
    }


def _with_hf_files(tree: dict[str, Any], directory: Path) -> dict[str, Any]:
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
        return Source(path.name, kind, path, files, _order_from_name(path.name))
    if not path.is_dir():
        return None
    kind = _kind_of_dir(path)
    if kind is not None:
        order = _order_from_name(path.name)
        if kind == "trainer":
            order = int(_json(path / "trainer_state.json").get("global_step", order or 0))
        return Source(path.name, kind, path, _files(path), order)
    return None


def _pretrained(path: Path) -> Source | None:
    """A ``save_pretrained`` directory as one checkpoint: its weights and config files."""
    weights = _weights_file(path) if path.is_dir() and not path.is_symlink() else None
    found = _source(weights) if weights is not None else None
    if found is not None:
        found.name = path.name
        found.files += [p for p in _files(path) if not _STATE_FILES.fullmatch(p.name)]
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


def _order_from_name(name: str) -> int | None:
    match = _STEP_IN_NAME.search(name) or _LAST_NUMBER.search(name)
    return int(match.group(1)) if match else None


def _json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ImportSourceError(
            f"{path} is not valid JSON (truncated or damaged?): {e}", path=str(path)
        ) from None
    if not isinstance(value, dict):
        raise ImportSourceError(f"{path} does not hold a JSON object", path=str(path))
    return value


def load(src: Source, allow: Sequence[Any] = ()) -> Loaded:
    """Read one checkpoint into the tree the matching adapter would commit.

    Raises:
        ImportRefusedError: a file holds a type ``weights_only=True`` refuses.
        ImportSourceError: a file is truncated or damaged, a shard is missing.
    """
    readers = {
        "trainer": _trainer,
        "lightning": _lightning,
        "accelerate": _accelerate,
        "dcp": _dcp,
        "torch": _torch_file,
        "safetensors": lambda s, a: Loaded(
            _with_hf_files({"model": load_safetensors(s.path)}, s.path.parent)
        ),
        "sharded": lambda s, a: Loaded(
            _with_hf_files({"model": load_sharded(s.path, a)}, s.path.parent)
        ),
    }
    loaded = readers[src.kind](src, tuple(allow))
    loaded.tree = plain_tree(loaded.tree)
    return loaded


def _weights(directory: Path, allow: tuple[Any, ...]) -> dict[str, Any]:
    weights = _weights_file(directory)
    if weights is None:
        raise ImportSourceError(
            f"{directory} has no model weights (model.safetensors, its index, or pytorch_model.bin)",
            path=str(directory),
        )
    if weights.name.endswith(".index.json"):
        return load_sharded(weights, allow)
    if weights.suffix == ".safetensors":
        return load_safetensors(weights)
    value = load_torch(weights, allow)
    if not isinstance(value, dict):
        raise ImportSourceError(f"{weights} does not hold a state dict", path=str(weights))
    return value


def _trainer(src: Source, allow: tuple[Any, ...]) -> Loaded:
    d = src.path
    state = _json(d / "trainer_state.json")
    tree: dict[str, Any] = {"model": ImportedState(_weights(d, allow))}
    for key, name in (
        ("optimizer", "optimizer.pt"),
        ("scheduler", "scheduler.pt"),
        ("scaler", "scaler.pt"),
    ):
        if (d / name).is_file():
            tree[key] = ImportedState(load_torch(d / name, allow))
    tree["trainer_state"] = state
    _with_hf_files(tree, d)
    rng_files = sorted(p for p in _files(d) if re.fullmatch(r"rng_state(_\d+)?\.pth", p.name))
    ranks = [load_torch(p, (*TRAINER_RNG_ALLOW, *allow)) for p in rng_files]
    if ranks:
        tree[RNG_KEY] = _trainer_rng(ranks[0], rng_files[0])
        if len(ranks) > 1:
            tree["rng_ranks"] = [_trainer_rng(r, p) for r, p in zip(ranks, rng_files, strict=True)]
    step = int(state.get("global_step") or 0)
    merged: dict[str, Any] = {}
    for entry in state.get("log_history") or []:
        if isinstance(entry, dict) and entry.get("step") == step:
            merged.update({k: v for k, v in entry.items() if k not in ("step", "epoch")})
    skipped = ["training_args.bin (a pickle; its values are in trainer_state.json)"]
    params = {k: state[k] for k in _TRAINER_PARAMS if k in state}
    epoch = state.get("epoch")
    return Loaded(
        tree,
        step=step,
        epoch=int(epoch) if isinstance(epoch, int | float) else None,
        metrics=metric_floats(merged),
        params=params,
        skipped=skipped if (d / "training_args.bin").exists() else [],
    )


def _trainer_rng(rng: Any, path: Path) -> dict[str, Any]:
    """``Trainer._save_rng_state``'s dict as the ledger's RNG tree (see ``ledger.state.rng``)."""
    if not isinstance(rng, dict) or "cpu" not in rng:
        raise ImportSourceError(f"{path} is not a Trainer RNG state", path=str(path))
    cuda = rng.get("cuda")
    if isinstance(cuda, torch.Tensor):
        cuda = [cuda]
    out: dict[str, Any] = {"torch": rng["cpu"], "cuda": list(cuda or [])}
    if "python" in rng:
        out["python"] = rng["python"]
    if "numpy" in rng:
        out["numpy"] = rng["numpy"]
    return out


def _lightning(src: Source, allow: tuple[Any, ...]) -> Loaded:
    ckpt = load_torch(src.path, allow)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ImportSourceError(
            f"{src.path} is not a Lightning checkpoint (no 'state_dict')", path=str(src.path)
        )
    metrics: dict[str, float] = {}
    for key, value in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, dict):
            monitor, score = value.get("monitor"), value.get("current_score")
            if isinstance(monitor, str) and isinstance(score, torch.Tensor | float | int):
                metrics.update(metric_floats({monitor: score}))
    hparams = ckpt.get("hyper_parameters")
    return Loaded(
        dict(ckpt),
        step=_int(ckpt.get("global_step")),
        epoch=_int(ckpt.get("epoch")),
        metrics=metrics,
        params=plain_params(hparams) if isinstance(hparams, Mapping) else {},
    )


def _numbered(d: Path, first: str, pattern: str) -> Iterator[Path]:
    """``first`` then ``pattern.format(1)``, ``pattern.format(2)`` ... while they exist."""
    if not (d / first).is_file():
        return
    yield d / first
    i = 1
    while (d / pattern.format(i)).is_file():
        yield d / pattern.format(i)
        i += 1


def _accelerate(src: Source, allow: tuple[Any, ...]) -> Loaded:
    d = src.path
    allow = (*ACCELERATE_ALLOW, *allow)
    models: list[Any] = []
    for first, pattern in (("model.safetensors", "model_{}.safetensors"),
                           ("pytorch_model.bin", "pytorch_model_{}.bin")):  # fmt: skip
        for p in _numbered(d, first, pattern):
            read = load_safetensors(p) if p.suffix == ".safetensors" else load_torch(p, allow)
            models.append(ImportedState(read))

    def each(first: str, pattern: str) -> list[ImportedState]:
        return [ImportedState(load_torch(p, allow)) for p in _numbered(d, first, pattern)]

    custom = sorted(d.glob("custom_checkpoint_*.pkl"), key=lambda p: _order_from_name(p.name) or 0)
    tree: dict[str, Any] = {
        "models": models,
        "optimizers": each("optimizer.bin", "optimizer_{}.bin"),
        "schedulers": each("scheduler.bin", "scheduler_{}.bin"),
        "dataloaders": [
            ImportedState({"iteration": None, "stateful": s.state})
            for s in each("dl_state_dict.bin", "dl_state_dict_{}.bin")
        ],
        "custom": [ImportedState(load_torch(p, allow)) for p in custom],
    }
    rng_path = d / "random_states_0.pkl"
    rng = load_torch(rng_path, allow)
    if not isinstance(rng, dict) or "torch_manual_seed" not in rng:
        raise ImportSourceError(f"{rng_path} is not an Accelerate RNG state", path=str(rng_path))
    tree["accelerator"] = ImportedState({"step": int(rng.get("step", 0))})
    if (d / "scaler.pt").is_file():
        tree["scaler"] = ImportedState(load_torch(d / "scaler.pt", allow))
    tree[RNG_KEY] = {
        "python": rng["random_state"],
        "numpy": rng["numpy_random_seed"],
        "torch": rng["torch_manual_seed"],
        "cuda": list(rng.get("torch_cuda_manual_seed") or []),
    }
    skipped = [p.name + " (a pickled sampler object)" for p in d.glob("sampler*.bin")]
    return Loaded(tree, step=src.order, skipped=skipped)


def _dcp(src: Source, allow: tuple[Any, ...]) -> Loaded:
    tree = read_dcp(src.path, allow)
    return Loaded(tree, step=_int(tree.get("step")) or src.order, epoch=_int(tree.get("epoch")))


def _torch_file(src: Source, allow: tuple[Any, ...]) -> Loaded:
    value = load_torch(src.path, allow)
    if not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
        return Loaded({"state": value}, step=src.order)
    tree = dict(value)
    step = _int(tree.get("step", tree.get("global_step")))
    return Loaded(tree, step=step if step is not None else src.order, epoch=_int(tree.get("epoch")))


def _int(value: Any) -> int | None:
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
