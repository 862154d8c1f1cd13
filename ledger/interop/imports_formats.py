"""Each framework's checkpoint read into the state tree its ledger adapter would have committed.

This module owns the per-format readers of ``ledger import``. The trees use
the keys the framework adapters commit, so an imported checkpoint resumes
through the adapter: a Trainer ``checkpoint-N`` becomes ``model``,
``optimizer``, ``scheduler``, ``scaler``, ``trainer_state``, ``__rng__`` and
``hf_files`` (as ``LedgerCallback`` commits); a Lightning ``.ckpt`` is
Lightning's own checkpoint dict (as ``LedgerCheckpoint`` commits); an
Accelerate ``save_state`` directory becomes ``models``, ``optimizers``,
``schedulers``, ``dataloaders``, ``custom``, ``accelerator`` and ``__rng__``.
Every file goes through :mod:`ledger.interop.imports_read` (nothing executed).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ledger.interop.imports_dcp import read_dcp
from ledger.interop.imports_layouts import (
    ImportedState,
    Loaded,
    Source,
    as_int,
    dir_files,
    metric_floats,
    order_from_name,
    plain_params,
    plain_tree,
    read_json,
    weights_file,
    with_hf_files,
)
from ledger.interop.imports_read import (
    ACCELERATE_ALLOW,
    TRAINER_RNG_ALLOW,
    ImportSourceError,
    load_safetensors,
    load_sharded,
    load_torch,
)
from ledger.state.rng import RNG_KEY

_TRAINER_PARAMS = (
    "train_batch_size",
    "max_steps",
    "num_train_epochs",
    "logging_steps",
    "eval_steps",
    "save_steps",
)


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
            with_hf_files({"model": load_safetensors(s.path)}, s.path.parent)
        ),
        "sharded": lambda s, a: Loaded(
            with_hf_files({"model": load_sharded(s.path, a)}, s.path.parent)
        ),
    }
    loaded = readers[src.kind](src, tuple(allow))
    loaded.tree = plain_tree(loaded.tree)
    return loaded


def _weights(directory: Path, allow: tuple[Any, ...]) -> dict[str, Any]:
    weights = weights_file(directory)
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
    state = read_json(d / "trainer_state.json")
    tree: dict[str, Any] = {"model": ImportedState(_weights(d, allow))}
    for key, name in (
        ("optimizer", "optimizer.pt"),
        ("scheduler", "scheduler.pt"),
        ("scaler", "scaler.pt"),
    ):
        if (d / name).is_file():
            tree[key] = ImportedState(load_torch(d / name, allow))
    tree["trainer_state"] = state
    with_hf_files(tree, d)
    rng_files = _rank_files(d)
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


def _rank_files(d: Path) -> list[Path]:
    """``rng_state.pth``, or ``rng_state_{rank}.pth`` in rank order (rank 10 after rank 9)."""
    found = {}
    for p in dir_files(d):
        m = re.fullmatch(r"rng_state(?:_(\d+))?\.pth", p.name)
        if m:
            found[int(m.group(1)) if m.group(1) else -1] = p
    ranks = sorted(k for k in found if k >= 0)
    if ranks and ranks != list(range(len(ranks))):
        missing = sorted(set(range(max(ranks) + 1)) - set(ranks))
        raise ImportSourceError(
            f"{d} has rng_state files for ranks {ranks} but not for {missing}: copy the "
            "missing ranks' files from the run, or import its weights alone",
            path=str(d),
        )
    return [found[k] for k in ranks] if ranks else [found[k] for k in found]


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
        step=as_int(ckpt.get("global_step")),
        epoch=as_int(ckpt.get("epoch")),
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

    custom = sorted(d.glob("custom_checkpoint_*.pkl"), key=lambda p: order_from_name(p.name) or 0)
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
    return Loaded(tree, step=as_int(tree.get("step")) or src.order, epoch=as_int(tree.get("epoch")))


def _torch_file(src: Source, allow: tuple[Any, ...]) -> Loaded:
    value = load_torch(src.path, allow)
    if not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
        return Loaded({"state": value}, step=src.order)
    tree = dict(value)
    step = as_int(tree.get("step", tree.get("global_step")))
    return Loaded(
        tree, step=step if step is not None else src.order, epoch=as_int(tree.get("epoch"))
    )
