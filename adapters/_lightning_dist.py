"""Lightning with several processes: one commit per save holding every rank's state.

This module owns what ``LedgerCheckpoint`` does when the trainer runs more
than one process (``strategy="ddp"``, ``"ddp_spawn"``, ``"fsdp"``):

- :func:`commit_ranks`, called on every rank: global rank 0 stores
  Lightning's checkpoint dict (the replicated model and optimizer, stored
  once); every rank stores only what differs per rank, its global RNG and
  the state of its stateful train loaders, as a ``Part`` of one staging
  session of the shared ledger; the parts travel to rank 0 as msgpack bytes
  over ``torch.distributed`` (``ledger.adapters.distributed.Channel``, a gloo
  group), and rank 0 writes one commit of the whole, after every rank's
  chunks are durable. Every rank returns that commit.
- :func:`take_rank`, on load: this process's own RNG and loader state out of
  such a commit (same number of processes), or, on another number, rank 0's
  loader state with ``ResumableSampler`` positions merged and the RNG
  re-seeded by the rule of ``ledger.adapters.distributed``.
- :func:`refuse_unsupported`: strategies the callback cannot commit (DeepSpeed,
  FSDP with sharded state dicts); :func:`load_through_ledger`: FSDP reads the
  checkpoint path itself, bypassing the checkpoint-IO plugin, so its
  ``load_checkpoint`` is wrapped to read ``ledger:`` paths (full state dicts).

Commit layout (docs/adapters/lightning.md): the root is Lightning's dict
with rank 0's RNG under ``__rng__`` (so every single-process reader works
unchanged), plus ``__ranks__``, a list of ``{"rng": ..., "loaders": [...]}``
in global rank order. It never pickles and never coordinates by any means
but ``torch.distributed`` collectives.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch.distributed as dist

from ledger import Commit, Ledger, Part, Stage
from ledger.state.rng import RNG_KEY, capture_rng, restore_rng

from ._common import AdapterError, DistributedCommitError, storable, warn_conversions
from ._data_position import merge_positions, reseed_rng
from ._dist_channel import FAILED, OK, Channel

RANKS_KEY = "__ranks__"
"""The root key of a multi-process commit holding one entry per rank."""

LOADER_PATH = ("loops", "fit_loop", "state_dict", "combined_loader")
"""Where Lightning keeps the states of the stateful train loaders in its checkpoint dict."""

UNSUPPORTED = ("deepspeed",)
"""Strategy names (``strategy_name``, or in a class name of the strategy) the callback refuses."""


def refuse_unsupported(strategy: Any) -> None:
    """Raise ``AdapterError`` for a strategy whose state the callback cannot commit (DeepSpeed).

    The strategy is recognised by its ``strategy_name`` and the names of its
    classes, so DeepSpeed need not be installed to refuse it.

    Example:
        >>> refuse_unsupported(trainer.strategy)  # doctest: +SKIP
    """
    names = [str(getattr(strategy, "strategy_name", ""))]
    names += [cls.__name__ for cls in type(strategy).__mro__]
    if any(bad in name.lower() for name in names for bad in UNSUPPORTED):
        raise AdapterError(
            f"LedgerCheckpoint does not support the DeepSpeed strategy ({type(strategy).__name__}) "
            "yet: DeepSpeed saves its ZeRO partitions itself, to files of its own, and restores "
            "only from them, so a ledger commit would miss the optimizer state; use "
            "ModelCheckpoint with DeepSpeed, or strategy='ddp' / 'fsdp' with LedgerCheckpoint"
        )
    if is_fsdp(strategy) and getattr(strategy, "_state_dict_type", "full") != "full":
        raise AdapterError(
            "LedgerCheckpoint needs FSDPStrategy(state_dict_type='full') (got "
            f"{strategy._state_dict_type!r}): a sharded state dict differs on every rank, and "
            "the callback stores global rank 0's; for per-rank shards use "
            "ledger.adapters.distributed.commit"
        )


def is_fsdp(strategy: Any) -> bool:
    """Whether ``strategy`` is Lightning's ``FSDPStrategy`` (or a subclass), without importing FSDP."""
    return any(cls.__name__ == "FSDPStrategy" for cls in type(strategy).__mro__)


def load_through_ledger(strategy: Any, load_ledger: Callable[[str], dict[str, Any]]) -> None:
    """Make an FSDP strategy's ``load_checkpoint`` read ``ledger:`` paths through ``load_ledger``.

    ``FSDPStrategy.load_checkpoint`` opens the path itself (a file, or a folder
    of shards) instead of asking the checkpoint-IO plugin; for a ``ledger:``
    path this reads the commit through the plugin and loads the full state
    dict as Lightning's own full-checkpoint branch does. Other paths go to
    Lightning's method unchanged.
    """
    original = strategy.load_checkpoint
    if getattr(original, "ledger_wrapped", False):
        return

    def load_checkpoint(checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        if not str(checkpoint_path).startswith("ledger:"):
            return original(checkpoint_path, weights_only)
        return _load_full(strategy, load_ledger(str(checkpoint_path)))

    load_checkpoint.ledger_wrapped = True  # type: ignore[attr-defined]
    strategy.load_checkpoint = load_checkpoint


def _load_full(strategy: Any, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Lightning 2.6's ``FSDPStrategy.load_checkpoint`` for a full checkpoint, from a dict."""
    from lightning.fabric.strategies.fsdp import _get_full_state_dict_context
    from lightning.fabric.strategies.model_parallel import _load_raw_module_state
    from lightning.pytorch.trainer.states import TrainerFn
    from torch.distributed.fsdp import FullyShardedDataParallel, OptimStateKeyType

    module, model = strategy.lightning_module, strategy.model
    world_size = strategy.world_size
    state = checkpoint.pop("state_dict")
    _load_raw_module_state(state, module=model, world_size=world_size, strict=module.strict_loading)
    states = checkpoint.get("optimizer_states")
    if states is None or module.trainer.state.fn != TrainerFn.FITTING:
        return checkpoint
    if len(strategy.optimizers) != len(states):
        raise AdapterError(
            f"the commit holds {len(states)} optimizer states and the module configures "
            f"{len(strategy.optimizers)} optimizers; resume with the same optimizers"
        )
    full: Any = _get_full_state_dict_context(model, world_size=world_size, rank0_only=False)
    with full:
        for optimizer, opt_state in zip(strategy.optimizers, states, strict=True):
            if opt_state["state"] and isinstance(next(iter(opt_state["state"])), int):
                opt_state = FullyShardedDataParallel.rekey_optim_state_dict(
                    opt_state, OptimStateKeyType.PARAM_NAME, model
                )
            optimizer.load_state_dict(
                FullyShardedDataParallel.optim_state_dict_to_load(
                    optim_state_dict=opt_state, model=model, optim=optimizer
                )
            )
    return checkpoint


def world() -> tuple[int, int]:
    """``(global rank, world size)`` of this process (``(0, 1)`` without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_entry(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What this rank stores of its own: its global RNG and its stateful train loaders' states."""
    loaders: Any = checkpoint
    for key in LOADER_PATH:
        loaders = loaders.get(key) if isinstance(loaders, Mapping) else None
    return {"rng": capture_rng(), "loaders": list(loaders or [])}


def commit_ranks(
    lg: Ledger,
    checkpoint: Mapping[str, Any],
    *,
    timeout: float,
    **meta: Any,
) -> Commit:
    """One commit of every rank's state (call it on every rank); every rank gets the commit.

    Args:
        lg: this process's handle on the shared ledger.
        checkpoint: this rank's Lightning dict (from ``dump_checkpoint``); only global
            rank 0's is stored whole, made storable by ``_common.storable``.
        timeout: seconds a rank waits for the others.
        meta: ``Stage.commit``'s metadata (message, step, epoch, metrics, params, branch),
            taken from rank 0.

    Raises:
        DistributedCommitError: a rank failed, died or timed out; no commit was made.
    """
    for key in (RANKS_KEY, RNG_KEY):  # every rank has the same keys: all raise alike
        if key in checkpoint:
            raise AdapterError(
                f"the checkpoint dict has a key {key!r}, which LedgerCheckpoint keeps for "
                "the RNG and every rank's state; rename it in on_save_checkpoint"
            )
    ch = Channel(timeout)
    with lg.stage() as stage:  # holds the gc lock until rank 0 moved the ref
        error: BaseException | None = None
        tree: dict[str, Any] = {}
        try:
            entry = rank_entry(checkpoint)
            report = OK + stage.write(entry).encode()
            if ch.rank == 0:  # rank 0's dict is the commit's root; its RNG as one process stores it
                state, notes = storable(checkpoint)
                warn_conversions(notes, "LedgerCheckpoint")
                tree = {**state, RNG_KEY: entry["rng"]}
        except Exception as e:  # reported to every rank, re-raised below
            error, report = e, FAILED + f"{type(e).__name__}: {e}".encode()
        reports = ch.gather(report)
        outcome = None if reports is None else _commit_on_rank0(stage, tree, reports, meta)
        result = ch.broadcast(outcome, "learning the commit from rank 0")
    if error is not None:
        raise error
    if result.startswith(FAILED):
        raise DistributedCommitError(result[1:].decode())
    lg.refresh()
    return lg.get(result[1:].decode())


def _commit_on_rank0(
    stage: Stage, tree: dict[str, Any], reports: list[bytes], meta: dict[str, Any]
) -> bytes:
    failed = [f"rank {r}: {p[1:].decode()}" for r, p in enumerate(reports) if p[:1] != OK]
    if failed:
        return FAILED + ("no commit was made; " + "; ".join(failed)).encode()
    try:
        ranks = [Part.decode(p[1:]) for p in reports]
        made = stage.commit({**tree, RANKS_KEY: ranks}, summary=tree, **meta)
    except Exception as e:
        return FAILED + f"rank 0 could not write the commit: {type(e).__name__}: {e}".encode()
    return OK + made.id.encode()


def take_rank(tree: dict[str, Any]) -> dict[str, Any] | None:
    """Pop ``__ranks__`` from a checked-out commit; put this rank's loader states in; its RNG.

    A commit of one process is left as it is (its ``__rng__`` is returned).
    Same number of processes: this rank's own RNG and loader states. Another
    number: rank 0's loader states, with ``ResumableSampler`` positions merged
    over every stored rank, and the RNG re-seeded from the stored ones
    (``ledger.adapters.distributed``'s rule), returned as a state to restore.

    Raises:
        ResumeError: on another number of processes, a stateful loader keeps no data position.
    """
    stored_rng = tree.pop(RNG_KEY, None)
    ranks = tree.pop(RANKS_KEY, None)
    if not isinstance(ranks, list) or not ranks:
        return stored_rng
    rank, size = world()
    if len(ranks) == size:
        _set_loaders(tree, ranks[rank]["loaders"])
        rng: dict[str, Any] = ranks[rank]["rng"]
        return rng
    loaders = ranks[0]["loaders"]
    if loaders:

        def read(r: int, path: tuple[Any, ...]) -> Any:
            value = ranks[r]["loaders"]
            for key in path:
                value = value[key]
            return value

        merge_positions(loaders, len(ranks), read)
        _set_loaders(tree, loaders)
    before = capture_rng()
    reseed_rng([r["rng"]["torch"] for r in ranks], size, rank)
    reseeded = capture_rng()
    restore_rng(before)
    return reseeded


def _set_loaders(tree: dict[str, Any], loaders: list[Any]) -> None:
    if not loaders:
        return
    node: Any = tree
    for key in LOADER_PATH[:-1]:
        node = node.setdefault(key, {})
    node[LOADER_PATH[-1]] = loaders
