"""The Trainer with several processes: one commit per save from every rank, one resume folder for all.

This module owns what ``LedgerCallback`` does differently when the Trainer
runs as several processes of a ``torch.distributed`` job (``torchrun`` /
``accelerate launch``):

- :func:`check_supported` refuses the strategies whose state it cannot
  commit yet (DeepSpeed, FSDP, tensor/context/sequence parallelism, XLA,
  SageMaker, ``save_on_each_node``), each with an ``AdapterError`` naming why;
- :func:`commit_ranks` makes one commit per save, built on the public
  :class:`~ledger.Stage` and the ranks' byte :class:`~ledger.adapters.distributed.Channel`:
  rank 0 stores the replicated state (weights, optimizer, scheduler, scaler,
  ``TrainerState``) once, as the Trainer's own DDP checkpoint does (rank 0
  writes them), and every rank stores its own RNG (the Trainer's
  ``rng_state_{rank}.pth``) as a part it sends to rank 0;
- :func:`shared_resume` lets rank 0 write the resume folder and every rank
  that sees it (same machine, or a shared disk) read it; a rank that does
  not see it (another machine's temporary folder) writes its own copy.

Commit layout (docs/adapters/transformers.md): the single-process layout
(``model``, ``optimizer``, ``scheduler``, ``trainer_state`` ... and rank 0's
RNG at the usual RNG key, so export and single-process tools read it as
they are), plus ``rng_ranks``: every rank's RNG tree, by ``process_index``.
It never pickles: what ranks exchange is msgpack bytes of manifest nodes.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ledger import Commit, Ledger, Part, Stage
from ledger.state.rng import RNG_KEY, capture_rng

from ._common import AdapterError, DistributedCommitError
from ._dist_channel import FAILED, OK, Channel
from ._hf_resume import RANKS_KEY

TOKEN = ".token"
"""The file in a resume folder holding the random token rank 0 sends with its path."""

Found = tuple[str, str, int, "str | None"]
"""A resume folder: (commit id, path of ``checkpoint-<step>``, step, best_model_checkpoint)."""


def check_supported(trainer: Any, args: Any) -> None:
    """Refuse a Trainer whose saved state ``LedgerCallback`` cannot commit faithfully.

    Raises:
        AdapterError: DeepSpeed, FSDP, tensor/context/sequence parallelism,
            XLA/SageMaker, or ``save_on_each_node`` with several processes.

    Example:
        >>> check_supported(trainer, trainer.args)  # doctest: +SKIP
    """
    if getattr(args, "deepspeed", None) or getattr(trainer, "is_deepspeed_enabled", False):
        raise AdapterError(
            "LedgerCallback does not support DeepSpeed yet: ZeRO keeps its partitioned "
            "optimizer and weights in DeepSpeed's own checkpoint folders, which the ledger "
            "cannot commit or restore, and DeepSpeed cannot be installed or tested here; "
            "train with DDP (no deepspeed argument) or keep the Trainer's own checkpoints"
        )
    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_fsdp_xla_enabled", False):
        raise AdapterError(
            "LedgerCallback does not support FSDP yet: Accelerate enables FSDP only on GPUs "
            "(on CPU it runs the job as plain DDP), so the sharded save could not be tested; "
            "train with DDP or keep the Trainer's own checkpoints"
        )
    config = getattr(trainer.accelerator, "parallelism_config", None)
    for kind in ("tp", "cp", "sp"):
        if config is not None and getattr(config, f"{kind}_enabled", False):
            raise AdapterError(
                f"LedgerCallback supports data parallelism only; this run's parallelism_config "
                f"has {kind}_size > 1, whose sharded weights it cannot commit yet"
            )
    mode = getattr(getattr(args, "parallel_mode", None), "value", "not_parallel")
    if mode not in ("not_parallel", "not_distributed", "distributed"):
        raise AdapterError(
            f"LedgerCallback does not support the Trainer's {mode!r} mode (XLA or SageMaker "
            "model parallelism save through their own libraries); use DDP"
        )
    if args.world_size > 1 and args.save_on_each_node:
        raise AdapterError(
            "LedgerCallback makes one commit per save in one ledger that every process opens; "
            "save_on_each_node=True means the machines share no disk: give every process the "
            "same ledger on a shared disk and set save_on_each_node=False"
        )


def open_channel(timeout: float) -> Channel | None:
    """The ranks' channel when this process is one of several in a ``torch.distributed`` job."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return Channel(timeout)


def commit_ranks(
    lg: Ledger, ch: Channel, tree: Mapping[str, Any] | None, meta: Mapping[str, Any]
) -> Commit:
    """One commit of rank 0's ``tree`` and every rank's RNG (call it on every rank).

    Args:
        lg: this process's handle on the shared ledger.
        ch: the ranks' channel.
        tree: on rank 0, the state every rank shares (stored once); elsewhere None.
        meta: ``Stage.commit``'s keyword arguments (message, step, ..., branch), used on rank 0.

    Returns:
        The commit, on every rank.

    Raises:
        DistributedCommitError: a rank failed, died or timed out; no commit was made.

    Example:
        >>> commit_ranks(lg, ch, tree if ch.rank == 0 else None, {"step": 10})  # doctest: +SKIP
    """
    with lg.stage() as stage:  # from the first dedup decision until rank 0 moved the ref
        report, error = _attempt(lambda: stage.write(capture_rng()).encode())
        reports = ch.gather(report) or []
        try:
            made = from_rank0(
                ch, lambda: _commit_on_rank0(stage, reports, tree or {}, meta), "writing the commit"
            )
        except DistributedCommitError:
            if error is not None:
                raise error from None  # this rank's own failure, which the others name
            raise
    lg.refresh()
    return lg.get(made.decode())


def _attempt(work: Callable[[], bytes]) -> tuple[bytes, BaseException | None]:
    """``work()``'s bytes as an OK report, or its error as a FAILED one (and the error, to re-raise)."""
    try:
        return OK + work(), None
    except Exception as e:  # reported to every rank, re-raised by the caller
        return FAILED + f"{type(e).__name__}: {e}".encode(), e


def _commit_on_rank0(
    stage: Stage, reports: list[bytes], tree: Mapping[str, Any], meta: Mapping[str, Any]
) -> bytes:
    """Rank 0: one commit of ``tree`` and every rank's RNG part; its id."""
    failed = [f"rank {r}: {p[1:].decode()}" for r, p in enumerate(reports) if p[:1] != OK]
    if failed:
        raise DistributedCommitError("no commit was made; " + "; ".join(failed))
    rngs = [Part.decode(report[1:]) for report in reports]
    made = stage.commit({**tree, RNG_KEY: rngs[0], RANKS_KEY: rngs}, summary=tree, **meta)
    return made.id.encode()


def from_rank0(ch: Channel, work: Callable[[], bytes], what: str) -> bytes:
    """``work()`` run on rank 0 and its bytes on every rank (call it on every rank).

    Raises:
        DistributedCommitError: (on the other ranks) ``work`` failed on rank 0,
            which raises its own error; or a rank timed out.
    """
    payload, error = _attempt(work) if ch.rank == 0 else (b"", None)
    answer = ch.broadcast(payload, what)
    if error is not None:
        raise error
    if answer.startswith(FAILED):
        raise DistributedCommitError(f"rank 0 failed while {what}: {answer[1:].decode()}")
    return answer[1:]


def shared_resume(
    ch: Channel,
    on_rank0: Callable[[], Found | None],
    of_commit: Callable[[str], Found],
) -> Found | None:
    """The resume folder of every rank: rank 0's when this rank sees it, else its own copy.

    Rank 0 calls ``on_rank0`` (resolve the revision, write the folder) and
    sends the folder's path and a random token; a rank that finds the token
    in that folder uses it (rank 0 keeps its lock on it and removes it), any
    other calls ``of_commit(commit_id)`` to write its own.

    Raises:
        DistributedCommitError: (on the other ranks) rank 0 failed; rank 0 raises its own error.
    """

    def write() -> bytes:
        found = on_rank0()
        if found is None:
            return b""
        token = secrets.token_hex(16)
        (Path(found[1]).parent / TOKEN).write_text(token)
        return json.dumps([*found, token]).encode()

    answer = from_rank0(ch, write, "writing the resume folder")
    if not answer:
        return None
    cid, path, step, best, token = json.loads(answer)
    if ch.rank == 0 or _holds(Path(path).parent / TOKEN, token):
        return cid, path, step, best
    return of_commit(cid)


def _holds(file: Path, token: str) -> bool:
    """Whether ``file`` is there and holds ``token`` (rank 0's folder, seen from this rank)."""
    try:
        return not file.is_symlink() and file.read_text() == token
    except OSError:
        return False
