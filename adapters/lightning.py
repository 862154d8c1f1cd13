"""Lightning: ``LedgerCheckpoint`` replaces ``ModelCheckpoint``; ``ledger:<rev>`` paths resume.

This module owns the Lightning side of the ledger: when to commit (every N
train steps, every N epochs, at validation end, ported from
``ModelCheckpoint``'s rules), what a commit holds (Lightning's own full
checkpoint dict, from ``dump_checkpoint``, plus the global RNG), the ``best``
branch and retention for ``monitor``/``save_top_k``, and the checkpoint-IO
plugin that reads ``ledger:`` paths so ``trainer.fit(ckpt_path=...)``
resumes from the ledger (in ``_lightning_io``, with the ``ledger://``
filesystem that ``load_from_checkpoint`` reads). With several processes
(``ddp``, ``ddp_spawn``, ``fsdp``) one commit holds every rank's RNG and
loader states besides rank 0's dict (``_lightning_dist``); DeepSpeed is
refused at setup. The callback pickles and
deep-copies: the open ledger is dropped and reopened on first use. It
never writes checkpoint files of its own and never pickles; values Lightning puts in its dict that a ledger cannot store
are converted by the documented rules in ``_common.storable`` (with a
warning) or refused with their path.

Example:
    >>> cb = LedgerCheckpoint("ckpt", every_n_epochs=1, monitor="val_loss")  # doctest: +SKIP
    >>> trainer = L.Trainer(callbacks=[cb], max_epochs=10)  # doctest: +SKIP
    >>> trainer.fit(model, ckpt_path=cb.resume("HEAD"))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as _e:  # pragma: no cover - exercised in a process without lightning
    from ._common import missing_extra

    raise missing_extra("lightning", _e) from _e

import torch

from ledger import Commit, Ledger
from ledger.preempt import SignalLike
from ledger.state.rng import restore_rng

from ._common import (
    BEST,
    LedgerLike,
    better,
    check_mode,
    install_retention,
    metric_floats,
    move_branch,
    open_ledger,
    resolve_resume,
    storable,
    warn_conversions,
)
from ._lightning_data import (
    DataOrderWarning,
    check_options,
    data_meta,
    hyperparameters,
    warn_order_not_saved,
)
from ._lightning_dist import commit_ranks, is_fsdp, load_through_ledger, refuse_unsupported
from ._lightning_io import PREFIX, URL_PREFIX, LedgerCheckpointIO, LedgerFileSystem, ledger_url
from ._preempt import DEFAULT_SIGNALS, SafePoint

__all__ = [
    "PREFIX",
    "URL_PREFIX",
    "DataOrderWarning",
    "LedgerCheckpoint",
    "LedgerCheckpointIO",
    "LedgerFileSystem",
    "ledger_url",
]


class LedgerCheckpoint(Checkpoint):
    """Commits Lightning's full training state into a ledger; a drop-in for ``ModelCheckpoint``.

    Each commit holds exactly what ``trainer.save_checkpoint`` would write
    (model, optimizers, LR schedulers, loops, callback states such as
    ``EarlyStopping``'s, precision-plugin state, hyper-parameters) plus the
    global RNG of torch, CUDA, numpy and Python, with metrics logged by
    ``self.log`` as commit metrics and ``save_hyperparameters`` values as params.
    The callback pickles and deep-copies (``ddp_spawn``, Lightning's own
    ``deepcopy(trainer.callbacks)``): the open ledger is reopened on first use.

    Args:
        ledger: a ledger directory (created when missing) or an open ``Ledger``.
        every_n_train_steps: commit every this many optimizer steps (None/0: never by steps).
        every_n_epochs: commit every this many epochs (None/0: never by epochs); at the
            end of the train epoch, or at validation end when validation runs mid-epoch.
        monitor: a logged metric, or ``"epoch"``/``"step"`` (as in ``ModelCheckpoint``);
            the ``best`` branch follows the commit where it was best.
        mode: "min" or "max" for ``monitor``.
        save_top_k: keep the state of only this many commits (``ModelCheckpoint``'s
            default, 1): the ``k`` best by ``monitor`` (``KeepBest``), or without
            ``monitor`` the newest ``k`` (``KeepLast``); -1 or None keeps all; 0 commits
            nothing unless ``save_last``. Applied by ``gc``; the branch tip is always kept.
        save_last: accepted for ``ModelCheckpoint`` compatibility: the branch tip is
            always the last state (``last_model_path``); with ``save_top_k=0`` it makes
            the callback commit (keeping only the tip).
        branch: commit to this branch instead of HEAD's (HEAD does not move).
        best_ref: the branch that follows the best commit.
        save_on_train_epoch_end: force epoch commits to the train-epoch end (True)
            or to validation end (False); None decides as ``ModelCheckpoint`` does.
        timeout: with several processes, seconds a rank waits for the others at a
            commit before raising ``DistributedCommitError`` (no commit is made).
        signals, every_seconds, clock: commit after the batch a signal (SIGTERM by default)
            came in, then stop, or ``every_seconds`` after the last commit (docs/preemption.md).
        data: the commits' ``data`` metadata, over what is found (``train``: the train
            loader, ``datamodule``); ``data_files``: files whose blake3 is recorded.

    Example:
        >>> cb = LedgerCheckpoint("ckpt", monitor="val_loss", save_top_k=3)  # doctest: +SKIP
        >>> trainer = L.Trainer(callbacks=[cb])  # doctest: +SKIP
        >>> trainer.fit(model, ckpt_path=cb.resume("HEAD"))  # None on a new ledger  # doctest: +SKIP
    """

    def __init__(
        self,
        ledger: LedgerLike,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = 1,
        monitor: str | None = None,
        mode: str = "min",
        save_top_k: int | None = 1,
        *,
        save_last: bool | str | None = None,
        branch: str | None = None,
        best_ref: str = BEST,
        save_on_train_epoch_end: bool | None = None,
        timeout: float = 300.0,
        signals: Iterable[SignalLike] | None = DEFAULT_SIGNALS,
        every_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        data: Mapping[str, Any] | None = None,
        data_files: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        check_options(every_n_train_steps, every_n_epochs, save_top_k, monitor)
        self.data, self.data_files = dict(data or {}), list(data_files)
        if not isinstance(ledger, Ledger | str) and not hasattr(ledger, "__fspath__"):
            open_ledger(ledger)  # raises the AdapterError that names what to pass
        self._ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self.root = str(Path(ledger.root if isinstance(ledger, Ledger) else ledger).resolve())
        self._io: LedgerCheckpointIO | None = None
        self._retention_installed = False
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs or 0
        self.monitor = monitor
        self.mode = check_mode(mode)
        self.save_top_k = save_top_k
        self.save_last = save_last
        self.branch = branch
        self.best_ref = best_ref
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.timeout = float(timeout)
        self.best_score: float | None = None
        self.current_score: torch.Tensor | None = None
        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.last_commit: Commit | None = None
        self._last_global_step_saved = -1
        self._order_checked = False
        self._rng_again: dict[str, Any] | None = None
        self._safe = SafePoint(signals, every_seconds, clock, arm=False)  # armed in setup
        if self._ledger is not None:
            self._install_retention(self._ledger)

    # -- the ledger, opened lazily (so the callback pickles) ------------------------

    @property
    def ledger(self) -> Ledger:
        """The open ledger (opened, or created, on first use; a copy reopens its own)."""
        if self._ledger is None:
            self._ledger = open_ledger(self.root)
            self._install_retention(self._ledger)
        return self._ledger

    @property
    def io(self) -> LedgerCheckpointIO:
        """The checkpoint-IO plugin this callback installs on the strategy."""
        if self._io is None:  # one Ledger instance: the lineage base_on records is per instance
            self._io = LedgerCheckpointIO(self.ledger)
        return self._io

    def __getstate__(self) -> dict[str, Any]:
        """Everything but the open ledger and its plugin; the copy reopens them on first use."""
        return {**self.__dict__, "_ledger": None, "_io": None, "_retention_installed": False}

    def _install_retention(self, lg: Ledger) -> None:
        if self._retention_installed:
            return
        k = self.save_top_k
        top_k = k if k is not None and k > 0 else (1 if k == 0 else None)
        install_retention(
            lg,
            keep_last=top_k if self.monitor is None or k == 0 else None,
            best=self.monitor if top_k is not None and k != 0 else None,
            best_k=top_k or 1,
            mode=self.mode,
        )
        self._retention_installed = True

    # -- resuming ----------------------------------------------------------------

    def resume(self, rev: str = "HEAD") -> str | None:
        """The ``ckpt_path`` that resumes ``rev`` (``ledger://<dir>#<commit id>``), or None on an empty ledger.

        Loading it (``trainer.fit(ckpt_path=...)``) makes that commit the
        parent of this ledger's next commit (``Ledger.base_on``).

        Raises:
            RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.

        Example:
            >>> trainer.fit(model, ckpt_path=cb.resume("best"))  # doctest: +SKIP
        """
        cid = resolve_resume(self.ledger, rev)
        return None if cid is None else ledger_url(self.root, cid)

    @property
    def best_model_path(self) -> str:
        """``ledger://<dir>#<id>`` of the best commit ("" before there is one).

        ``trainer.test(ckpt_path="best")``, ``ckpt_path=cb.best_model_path`` and
        ``MyModule.load_from_checkpoint(cb.best_model_path)`` all read it. Without
        ``monitor`` it is the last commit, as in ``ModelCheckpoint``.
        """
        if not self.monitor:
            return self.last_model_path if self.save_top_k != 0 else ""
        best = self.ledger.branches().get(self.best_ref)
        return ledger_url(self.root, best) if best else ""

    @best_model_path.setter
    def best_model_path(self, value: str) -> None:
        """Accepted and ignored: the path is read from the ledger (``ddp_spawn`` sets it from rank 0's)."""

    @property
    def last_model_path(self) -> str:
        """``ledger://<dir>#<id>`` of the newest commit of this callback's branch ("" before one)."""
        if self.last_commit is not None:
            return ledger_url(self.root, self.last_commit.id)
        cid = resolve_resume(self.ledger, self.branch or "HEAD") if self._commits() else None
        return ledger_url(self.root, cid) if cid else ""

    @property
    def best_model_score(self) -> torch.Tensor | None:
        """The best value of ``monitor`` so far, as a tensor like ``ModelCheckpoint``'s (None without one)."""
        return None if self.best_score is None else torch.tensor(self.best_score)

    def _commits(self) -> bool:
        return self.save_top_k != 0 or bool(self.save_last)

    # -- Lightning hooks -----------------------------------------------------------

    @property
    def state_key(self) -> str:
        """Lightning's key for this callback's state inside the checkpoint."""
        return self._generate_state_key(
            monitor=self.monitor,
            every_n_train_steps=self.every_n_train_steps,
            every_n_epochs=self.every_n_epochs,
            branch=self.branch,
        )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Open the ledger (global rank 0 first: it may create it), install the ``ledger:`` checkpoint IO.

        This runs before Lightning loads ``ckpt_path``. Ranks open the ledger
        only after rank 0 did, since two processes creating one ledger
        directory at once would race. A DeepSpeed strategy is refused here.

        Raises:
            AdapterError: the strategy is DeepSpeed, or FSDP with sharded state dicts
                (not supported yet, see the docs).
        """
        refuse_unsupported(trainer.strategy)
        self._safe.arm()  # before Lightning's own handlers, which then call ours too
        if trainer.is_global_zero:
            self.ledger  # noqa: B018 - opens, or creates, the ledger
        trainer.strategy.barrier("LedgerCheckpoint.setup")
        current = trainer.strategy.checkpoint_io
        if isinstance(current, LedgerCheckpointIO):
            if current.root == self.root:  # share the instance, so a resume declares our lineage
                current._ledger = self.ledger
            self._io = current
        else:
            self.io.wrapped = current
            trainer.strategy.checkpoint_io = self.io
        if is_fsdp(trainer.strategy):  # FSDP reads ckpt_path itself, not through the plugin
            load_through_ledger(trainer.strategy, self.io.load_checkpoint)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set the global RNG back to the resumed commit's.

        This is the last hook before the fit loop creates its data-loader
        iterator (which draws from the RNG); the sanity check in between runs
        under Lightning's ``isolate_rng``.
        """
        if self.io.loaded_rng is not None:
            restore_rng(self.io.loaded_rng)
            self._rng_again = self.io.loaded_rng
            self.io.loaded_rng = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The RNG, for strategies that load the checkpoint only after ``on_fit_start``; the data-order check.

        A commit made mid-epoch was taken after that epoch's loader iterator
        had drawn from the RNG; the resumed run makes a new iterator (which
        draws again), so the RNG is set back once more before the first batch.
        """
        self.on_fit_start(trainer, pl_module)
        progress = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        if not 0 < progress < trainer.num_training_batches:
            self._rng_again = None  # resumed at an epoch's end: the new iterator is the run's own
        if not self._order_checked and self._commits_mid_epoch(trainer):
            self._order_checked = True
            combined = getattr(trainer.fit_loop, "_combined_loader", None)
            if combined is not None:
                warn_order_not_saved(combined.flattened)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """After a mid-epoch resume: the RNG as committed, now that the loader's iterator exists."""
        if self._rng_again is not None:
            restore_rng(self._rng_again)
            self._rng_again = None

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Commit every ``every_n_train_steps`` optimizer steps, after a signal, every ``every_seconds``."""
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not self._skip(trainer):
            self._save(trainer)
        due = self._safe.check(sync=trainer.world_size > 1)
        if due and not self._skip(trainer):
            self.commit(trainer, "preempted" if due.signalled else None)
        if due.signalled:
            trainer.should_stop = True
            self._safe.finish()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Stop watching the signals."""
        self._safe.close()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit at the end of every ``every_n_epochs``-th epoch (when that is where epochs end)."""
        if self._epoch_due(trainer) and self._on_train_epoch_end(trainer):
            self._save(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit after validation when epoch commits belong there (validation mid-epoch)."""
        if self._epoch_due(trainer) and not self._on_train_epoch_end(trainer):
            self._save(trainer)

    def state_dict(self) -> dict[str, Any]:
        """This callback's state inside each commit: the scores and the last committed step."""
        return {
            "monitor": self.monitor,
            "best_score": self.best_score,
            "current_score": None if self.current_score is None else float(self.current_score),
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the best score back from a resumed commit (when it watched the same metric)."""
        if state_dict.get("monitor") == self.monitor:
            self.best_score = state_dict.get("best_score")
        self._last_global_step_saved = state_dict.get("last_global_step_saved", -1)

    # -- committing ----------------------------------------------------------------

    def _save(self, trainer: pl.Trainer) -> None:
        if self._commits():
            self.commit(trainer)

    def commit(self, trainer: pl.Trainer, message: str | None = None) -> Commit:
        """Commit the trainer's full state now (call it on every rank; global rank 0 writes).

        With several processes every rank also stores its own RNG and loader
        states in the same commit (docs/adapters/lightning.md, "Several
        processes"); every rank returns the commit and takes rank 0's score.

        Example:
            >>> cb.commit(trainer, message="before changing the data mix")  # doctest: +SKIP
        """
        metrics = metric_floats(trainer.callback_metrics)
        if self.monitor in ("epoch", "step"):  # ModelCheckpoint's monitor candidates
            metrics.setdefault("epoch", float(trainer.current_epoch))
            metrics.setdefault("step", float(trainer.global_step))
        value, improved = self._score(metrics) if trainer.is_global_zero else (None, False)
        self._last_global_step_saved = trainer.global_step
        self._safe.committed()
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        message = message or f"epoch {trainer.current_epoch} step {trainer.global_step}"
        meta: dict[str, Any] = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metrics": metrics,
            "params": hyperparameters(trainer),
            "branch": self.branch,
            "data": data_meta(trainer, self.data, self.data_files),
        }
        if trainer.world_size > 1:
            commit = commit_ranks(
                self.ledger, checkpoint, timeout=self.timeout, message=message, **meta
            )
            if not trainer.is_global_zero:  # rank 0's score, so every rank ranks alike
                value, improved = self._score(dict(commit.metrics))
        else:
            state, notes = storable(checkpoint)
            warn_conversions(notes, "LedgerCheckpoint")
            commit = self.ledger.commit(state, message, **meta)
        self.last_commit = commit
        if value is not None:
            self._track_top_k(commit, value)
            if trainer.is_global_zero and (improved or self.best_ref not in self.ledger.branches()):
                move_branch(
                    self.ledger,
                    self.best_ref,
                    commit.id,
                    f"{self.best_ref}: {self.monitor}={value:g} at step {trainer.global_step}",
                )
        trainer.strategy.barrier("LedgerCheckpoint.commit")
        return commit

    def _score(self, metrics: dict[str, float]) -> tuple[float | None, bool]:
        """``monitor``'s value in ``metrics`` (NaN as the worst) and whether it improved; updates the scores."""
        value = metrics.get(self.monitor) if self.monitor else None
        if value is not None and math.isnan(value):  # ModelCheckpoint: NaN is the worst value
            value = math.inf if self.mode == "min" else -math.inf
        improved = value is not None and better(value, self.best_score, self.mode)
        if value is not None:
            self.current_score = torch.tensor(value)
            if improved or self.best_score is None:
                self.best_score = value
        return value, improved

    def _track_top_k(self, commit: Commit, value: float) -> None:
        """``best_k_models`` / ``kth_best_model_path`` as ``ModelCheckpoint`` keeps them (what retention keeps)."""
        self.best_k_models[ledger_url(self.root, commit.id)] = torch.tensor(value)
        k = self.save_top_k
        ranked = sorted(
            self.best_k_models.items(),
            key=lambda kv: float(kv[1]),
            reverse=self.mode == "max",
        )
        if k is not None and k > 0:
            ranked = ranked[:k]
        self.best_k_models = dict(ranked)
        self.kth_best_model_path = ranked[-1][0]

    def _skip(self, trainer: pl.Trainer) -> bool:
        return (
            bool(getattr(trainer, "fast_dev_run", False))
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _epoch_due(self, trainer: pl.Trainer) -> bool:
        n = self.every_n_epochs
        return bool(n) and (trainer.current_epoch + 1) % n == 0 and not self._skip(trainer)

    def _commits_mid_epoch(self, trainer: pl.Trainer) -> bool:
        return self._commits() and (
            bool(self.every_n_train_steps)
            or (bool(self.every_n_epochs) and not self._on_train_epoch_end(trainer))
        )

    def _on_train_epoch_end(self, trainer: pl.Trainer) -> bool:
        """Whether epoch commits happen at train-epoch end (else at validation end): ModelCheckpoint's rule."""
        if self.save_on_train_epoch_end is not None:
            return self.save_on_train_epoch_end
        if getattr(trainer, "_val_check_time_interval", None) is not None:
            return False
        if trainer.check_val_every_n_epoch != 1:
            return False
        batches = trainer.num_val_batches
        if (sum(batches) if isinstance(batches, list) else batches) == 0:
            return True
        return trainer.val_check_interval == 1.0
