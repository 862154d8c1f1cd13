"""Lightning: ``LedgerCheckpoint`` replaces ``ModelCheckpoint``; ``ledger:<rev>`` paths resume.

This module owns the Lightning side of the ledger: when to commit (every N
train steps, every N epochs, at validation end, ported from
``ModelCheckpoint``'s rules), what a commit holds (Lightning's own full
checkpoint dict, from ``dump_checkpoint``, plus the global RNG), the ``best``
branch and retention for ``monitor``/``save_top_k``, and the checkpoint-IO
plugin that reads ``ledger:<rev>`` paths so ``trainer.fit(ckpt_path=...)``
resumes from the ledger. It never writes checkpoint files of its own and
never pickles; values Lightning puts in its dict that a ledger cannot store
are converted by the documented rules in ``_common.storable`` (with a
warning) or refused with their path.

Example:
    >>> cb = LedgerCheckpoint("ckpt", every_n_epochs=1, monitor="val_loss")  # doctest: +SKIP
    >>> trainer = L.Trainer(callbacks=[cb], max_epochs=10)  # doctest: +SKIP
    >>> trainer.fit(model, ckpt_path=cb.resume("HEAD"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Checkpoint
    from lightning.pytorch.trainer.states import TrainerFn
except ImportError as _e:  # pragma: no cover - exercised in a process without lightning
    from ._common import missing_extra

    raise missing_extra("lightning", _e) from _e

import torch

from ledger import Commit, Ledger
from ledger.state.rng import RNG_KEY, restore_rng

from ._common import (
    BEST,
    AdapterError,
    LedgerLike,
    ResumeError,
    better,
    check_mode,
    install_retention,
    metric_floats,
    move_branch,
    open_ledger,
    plain_params,
    resolve_resume,
    storable,
    warn_conversions,
)

__all__ = ["PREFIX", "LedgerCheckpoint", "LedgerCheckpointIO"]

PREFIX = "ledger:"
"""Checkpoint paths that start with this name a revision of the ledger: ``ledger:main~1``."""


def ledger_path(rev: str) -> str:
    """The checkpoint path Lightning is handed for revision ``rev``.

    Example:
        >>> ledger_path("best")
        'ledger:best'
    """
    return PREFIX + rev


class LedgerCheckpointIO(CheckpointIO):
    """A checkpoint-IO plugin that reads ``ledger:<rev>`` paths and hands every other path on.

    ``LedgerCheckpoint`` installs it on the trainer's strategy in ``setup``;
    pass it yourself (``Trainer(plugins=[LedgerCheckpointIO("ckpt")])``) to
    load ``ledger:`` paths without the callback, e.g. for ``trainer.test``.

    Args:
        ledger: a ledger directory or an open ``Ledger``.
        wrapped: the plugin that handles ordinary file paths (default: Lightning's ``TorchCheckpointIO``).

    Example:
        >>> io = LedgerCheckpointIO("ckpt")  # doctest: +SKIP
        >>> ckpt = io.load_checkpoint("ledger:best")  # doctest: +SKIP
    """

    def __init__(self, ledger: LedgerLike, wrapped: CheckpointIO | None = None) -> None:
        from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

        self.ledger: Ledger = open_ledger(ledger)
        self.wrapped: CheckpointIO = wrapped if wrapped is not None else TorchCheckpointIO()
        self.loaded_rng: dict[str, Any] | None = None
        self.loaded_commit: Commit | None = None

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Write a file through the wrapped plugin; ``ledger:`` paths are refused (commits come from the callback)."""
        if _is_ledger_path(path):
            raise AdapterError(
                f"cannot save to {path!r}: commits are made by LedgerCheckpoint (add it to the "
                "Trainer's callbacks, or call its commit(trainer)); save files to a file path"
            )
        self.wrapped.save_checkpoint(checkpoint, path, storage_options)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's checkpoint dict from ``ledger:<rev>``, or the wrapped plugin's from a file.

        Tensors come back on the device they were committed from when it
        exists (as Lightning's own loader does), or on ``map_location`` when
        that is a device. The commit's global RNG state is kept in
        ``loaded_rng`` for ``LedgerCheckpoint`` to set when training starts.
        """
        if not _is_ledger_path(path):
            return self.wrapped.load_checkpoint(path, map_location, weights_only)
        rev = str(path)[len(PREFIX) :]
        where = map_location if isinstance(map_location, str | torch.device) else None
        commit = self.ledger.get(rev)
        tree = self.ledger.checkout(commit.id, map_location=where)
        if "pytorch-lightning_version" not in tree:
            raise ResumeError(
                f"commit {commit.id[:12]} ({rev}) is not a Lightning checkpoint (it has "
                f"{sorted(map(str, tree))[:8]}); resume it with Ledger.restore instead"
            )
        self.loaded_rng = tree.pop(RNG_KEY, None)
        self.loaded_commit = commit
        return tree

    def remove_checkpoint(self, path: Any) -> None:
        """Remove a file through the wrapped plugin (commits are dropped by retention and gc)."""
        if not _is_ledger_path(path):
            self.wrapped.remove_checkpoint(path)

    def teardown(self) -> None:
        """Tear down the wrapped plugin."""
        self.wrapped.teardown()


def _is_ledger_path(path: Any) -> bool:
    return isinstance(path, str | os.PathLike) and os.fspath(path).startswith(PREFIX)


class LedgerCheckpoint(Checkpoint):
    """Commits Lightning's full training state into a ledger; a drop-in for ``ModelCheckpoint``.

    Each commit holds exactly what ``trainer.save_checkpoint`` would write
    (model, optimizers, LR schedulers, loops, callback states such as
    ``EarlyStopping``'s, precision-plugin state, hyper-parameters) plus the
    global RNG of torch, CUDA, numpy and Python, with metrics logged by
    ``self.log`` as commit metrics and ``save_hyperparameters`` values as params.

    Args:
        ledger: a ledger directory (created when missing) or an open ``Ledger``.
        every_n_train_steps: commit every this many optimizer steps (None/0: never by steps).
        every_n_epochs: commit every this many epochs (None/0: never by epochs); at the
            end of the train epoch, or at validation end when validation runs mid-epoch.
        monitor: a logged metric; the ``best`` branch follows the commit where it was best.
        mode: "min" or "max" for ``monitor``.
        save_top_k: keep the state of only this many commits: the ``k`` best by
            ``monitor`` (``KeepBest``), or without ``monitor`` the newest ``k``
            (``KeepLast``); None or -1 keeps all. Applied by ``gc``.
        branch: commit to this branch instead of HEAD's (HEAD does not move).
        best_ref: the branch that follows the best commit.
        save_on_train_epoch_end: force epoch commits to the train-epoch end (True)
            or to validation end (False); None decides as ``ModelCheckpoint`` does.

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
        save_top_k: int | None = None,
        *,
        branch: str | None = None,
        best_ref: str = BEST,
        save_on_train_epoch_end: bool | None = None,
    ) -> None:
        for name, value in (
            ("every_n_train_steps", every_n_train_steps),
            ("every_n_epochs", every_n_epochs),
        ):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise AdapterError(f"{name}={value!r} must be a non-negative integer or None")
        if save_top_k is not None and (not isinstance(save_top_k, int) or save_top_k < -1):
            raise AdapterError(f"save_top_k={save_top_k!r} must be None, -1 or a positive integer")
        if save_top_k == 0:
            raise AdapterError(
                "save_top_k=0 would commit nothing; leave LedgerCheckpoint out of the callbacks instead"
            )
        self.ledger: Ledger = open_ledger(ledger)
        self.io = LedgerCheckpointIO(self.ledger)
        self.every_n_train_steps = every_n_train_steps or 0
        self.every_n_epochs = every_n_epochs or 0
        self.monitor = monitor
        self.mode = check_mode(mode)
        self.save_top_k = save_top_k
        self.branch = branch
        self.best_ref = best_ref
        self.save_on_train_epoch_end = save_on_train_epoch_end
        self.best_score: float | None = None
        self.last_commit: Commit | None = None
        self._last_global_step_saved = -1
        top_k = save_top_k if save_top_k is not None and save_top_k > 0 else None
        install_retention(
            self.ledger,
            keep_last=top_k if monitor is None else None,
            best=monitor if top_k is not None else None,
            best_k=top_k or 1,
            mode=self.mode,
        )

    # -- resuming ----------------------------------------------------------------

    def resume(self, rev: str = "HEAD") -> str | None:
        """The ``ckpt_path`` that resumes ``rev`` (``ledger:<commit id>``), or None on an empty ledger.

        Raises:
            RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.

        Example:
            >>> trainer.fit(model, ckpt_path=cb.resume("best"))  # doctest: +SKIP
        """
        cid = resolve_resume(self.ledger, rev)
        return None if cid is None else ledger_path(cid)

    @property
    def best_model_path(self) -> str:
        """``ledger:<id>`` of the best commit ("" before there is one), so ``ckpt_path="best"`` works."""
        best = self.ledger.branches().get(self.best_ref) if self.monitor else None
        return ledger_path(best) if best else ""

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
        """Install the ``ledger:`` checkpoint IO on the strategy (before Lightning loads ``ckpt_path``)."""
        current = trainer.strategy.checkpoint_io
        if isinstance(current, LedgerCheckpointIO):
            self.io = current
        else:
            self.io.wrapped = current
            trainer.strategy.checkpoint_io = self.io

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Set the global RNG back to the resumed commit's.

        This is the last hook before the fit loop creates its data-loader
        iterator (which draws from the RNG); the sanity check in between runs
        under Lightning's ``isolate_rng``.
        """
        if self.io.loaded_rng is not None:
            restore_rng(self.io.loaded_rng)
            self.io.loaded_rng = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The RNG, for strategies that load the checkpoint only after ``on_fit_start``."""
        self.on_fit_start(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Commit every ``every_n_train_steps`` optimizer steps."""
        n = self.every_n_train_steps
        if n and trainer.global_step % n == 0 and not self._skip(trainer):
            self.commit(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit at the end of every ``every_n_epochs``-th epoch (when that is where epochs end)."""
        if self._epoch_due(trainer) and self._on_train_epoch_end(trainer):
            self.commit(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Commit after validation when epoch commits belong there (validation mid-epoch)."""
        if self._epoch_due(trainer) and not self._on_train_epoch_end(trainer):
            self.commit(trainer)

    def state_dict(self) -> dict[str, Any]:
        """This callback's state inside each commit: the best score and the last committed step."""
        return {
            "monitor": self.monitor,
            "best_score": self.best_score,
            "last_global_step_saved": self._last_global_step_saved,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the best score back from a resumed commit (when it watched the same metric)."""
        if state_dict.get("monitor") == self.monitor:
            self.best_score = state_dict.get("best_score")
        self._last_global_step_saved = state_dict.get("last_global_step_saved", -1)

    # -- committing ----------------------------------------------------------------

    def commit(self, trainer: pl.Trainer, message: str | None = None) -> Commit | None:
        """Commit the trainer's full state now (on every rank's call; global rank 0 writes).

        Returns the commit on global rank 0, None on the other ranks.

        Example:
            >>> cb.commit(trainer, message="before changing the data mix")  # doctest: +SKIP
        """
        metrics = metric_floats(trainer.callback_metrics)
        value = metrics.get(self.monitor) if self.monitor else None
        improved = value is not None and better(value, self.best_score, self.mode)
        if improved:
            self.best_score = value
        self._last_global_step_saved = trainer.global_step
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        state, notes = storable(checkpoint)
        commit = None
        if trainer.is_global_zero:
            warn_conversions(notes, "LedgerCheckpoint")
            commit = self.ledger.commit(
                state,
                message or f"epoch {trainer.current_epoch} step {trainer.global_step}",
                step=trainer.global_step,
                epoch=trainer.current_epoch,
                metrics=metrics,
                params=_hyperparameters(trainer),
                branch=self.branch,
            )
            self.last_commit = commit
            if improved and value is not None:
                move_branch(
                    self.ledger,
                    self.best_ref,
                    commit.id,
                    f"{self.best_ref}: {self.monitor}={value:g} at step {trainer.global_step}",
                )
        trainer.strategy.barrier("LedgerCheckpoint.commit")
        return commit

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


def _hyperparameters(trainer: pl.Trainer) -> dict[str, Any]:
    """``save_hyperparameters`` values of the module and the datamodule, as plain params."""
    params: dict[str, Any] = {}
    module = trainer.lightning_module
    if module is not None:
        params.update(module.hparams)
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None:
        params.update({f"datamodule.{k}": v for k, v in datamodule.hparams.items()})
    return plain_params(params)
