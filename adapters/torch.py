"""Checkpointing for hand-written PyTorch loops: ``Checkpointer``.

This module owns the two-line training-loop pattern: commit the model,
optimizer, scheduler, grad scaler and any extra state every ``every`` steps
(and whenever a watched metric improves, every ``every_seconds`` of wall-clock
time, and at the first step after a preemption signal: ``ledger.preempt``),
keep a ``best`` branch on the best
commit, turn ``keep=``/``on_best=`` into retention policies, and resume (the
next commit then continues from the commit resumed, see ``Ledger.base_on``).
The user's ``state=`` mapping is read at every commit and restored into, so
plain values in it (epoch, counters) are the user's own, current ones. It
only calls the public ``Ledger`` API and must never pickle or hold state the
ledger does not have (everything it needs to resume is read back from it).

Example:
    >>> ckpt = Checkpointer("ckpt", model=model, optimizer=opt, every=500)  # doctest: +SKIP
    >>> for step in range(ckpt.resume(), total_steps):  # doctest: +SKIP
    ...     loss = train_step()
    ...     ckpt.step(step, {"loss": loss})
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any

from ledger import Commit, Ledger
from ledger.datainfo import described
from ledger.pending import CommitHandle
from ledger.preempt import SignalLike

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
)
from ._preempt import DEFAULT_SIGNALS, SafePoint

__all__ = ["Checkpointer"]

_NAMED = ("model", "optimizer", "scheduler", "scaler")


class Checkpointer:
    """Commits a training state on a schedule and resumes it exactly.

    Args:
        ledger: a ledger directory (created when missing) or an open ``Ledger``.
        model: the module (or any object with ``state_dict``/``load_state_dict``).
        optimizer: the optimizer.
        scheduler: the LR scheduler.
        scaler: the ``torch.amp.GradScaler``.
        state: more live state under names of your choice: a data-loader
            ``torch.Generator``, an EMA model, counters. The mapping itself is
            kept (not copied): every commit stores what it holds then, and
            ``resume`` writes plain values back into it (so
            ``state["epoch"]`` is the resumed epoch).
        every: commit when ``step % every == 0``; None commits on no step schedule
            (only on ``every_seconds``, ``on_best``, a signal or ``commit()``).
        keep: keep the state of only the newest ``keep`` commits (``KeepLast``),
            plus the best ones when ``on_best`` is set; applied by ``gc``.
        on_best: a metric name; a step whose metric beats every earlier one
            commits (even off-schedule) and moves the ``best`` branch there.
        mode: "min" or "max" for ``on_best``.
        best_ref: the branch that follows the best commit.
        branch: commit to this branch instead of HEAD's (HEAD does not move).
        params: hyper-parameters recorded with every commit.
        gc_every: run ``gc`` after every this many commits (retention frees
            space only at gc); None leaves it to you or to ``ledger gc``.
        blocking: False commits in the background (``Ledger.commit(blocking=False)``).
        signals: the signals that mean "you are about to be killed" (SIGTERM by
            default; add ``"SIGUSR1"`` for SLURM's ``--signal=USR1@90``); the next
            ``step()`` after one commits, drains and hands the signal to the
            handler installed before (by default the process then ends by it).
            None or ``()`` watches none. See docs/preemption.md.
        every_seconds: also commit at the first step after this many seconds of
            ``clock`` since the last commit (or since the checkpointer was made).
        clock: the clock for ``every_seconds`` (``time.monotonic``).
        sync_ranks: every rank of a ``torch.distributed`` job calls ``step()``
            and the signal and ``every_seconds`` flags are all-reduced (MAX) first,
            so every rank commits the same step even when one rank got the signal.
        dataloader: the training ``DataLoader``: its dataset's class, length (and a
            ``datasets`` Dataset's fingerprint and split) are recorded as ``data.train``.
        data: recorded as the commit's ``data`` metadata; its keys win over what is
            found automatically (docs/metadata.md).
        data_files: data files (or folders) whose blake3 hashes are recorded as
            ``data.files``, read once per process.

    Example:
        >>> ckpt = Checkpointer("ckpt", model=model, optimizer=opt, scheduler=sched,
        ...                     every=500, keep=3, on_best="val_loss",
        ...                     signals=["SIGTERM", "SIGUSR1"], every_seconds=1800)  # doctest: +SKIP
        >>> start = ckpt.resume()  # 0 on an empty ledger  # doctest: +SKIP
    """

    def __init__(
        self,
        ledger: LedgerLike,
        *,
        model: Any = None,
        optimizer: Any = None,
        scheduler: Any = None,
        scaler: Any = None,
        state: Mapping[str, Any] | None = None,
        every: int | None = 1,
        keep: int | None = None,
        on_best: str | None = None,
        mode: str = "min",
        best_ref: str = BEST,
        branch: str | None = None,
        params: Mapping[str, Any] | None = None,
        gc_every: int | None = None,
        blocking: bool = True,
        signals: Iterable[SignalLike] | None = DEFAULT_SIGNALS,
        every_seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sync_ranks: bool = False,
        dataloader: Any = None,
        data: Mapping[str, Any] | None = None,
        data_files: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        if every is not None and (not isinstance(every, int) or every < 1):
            raise AdapterError(f"every={every!r} must be a positive integer or None")
        if gc_every is not None and (not isinstance(gc_every, int) or gc_every < 1):
            raise AdapterError(f"gc_every={gc_every!r} must be a positive integer or None")
        self.ledger: Ledger = open_ledger(ledger)
        self.every = every
        self.on_best = on_best
        self.mode = check_mode(mode)
        self.best_ref = best_ref
        self.branch = branch
        self.params = plain_params(params or {})
        self.dataloader = dataloader
        self.data = dict(data or {})
        self.data_files = list(data_files)
        self.gc_every = gc_every
        self.blocking = blocking
        self._named: dict[str, Any] = {}
        for name, obj in zip(_NAMED, (model, optimizer, scheduler, scaler), strict=True):
            if obj is not None:
                self._named[name] = obj
        self.user_state: Mapping[str, Any] = state if state is not None else {}
        if not self.state:
            raise AdapterError("nothing to checkpoint: pass model=, optimizer=, ... or state=")
        self.best: float | None = None
        self._commits = 0
        self.safe_point = SafePoint(signals, every_seconds, clock)
        self.sync_ranks = sync_ranks
        self.preempted = False
        """True after a step committed because of a signal (on any rank): stop the loop."""
        install_retention(self.ledger, keep_last=keep, best=on_best, best_k=1, mode=self.mode)

    @property
    def state(self) -> dict[str, Any]:
        """What a commit stores now: the named objects and the user's mapping as it is now.

        Raises:
            AdapterError: a key of ``state=`` clashes with ``model=``, ``optimizer=`` ...
        """
        tree = dict(self._named)
        for name, obj in self.user_state.items():
            if name in tree:
                raise AdapterError(f"state[{name!r}] clashes with the {name}= argument; rename it")
            tree[name] = obj
        return tree

    def step(
        self, step: int, metrics: Mapping[str, Any] | None = None
    ) -> Commit | CommitHandle | None:
        """Call after training step ``step``; commits when it is due or ``on_best`` improved.

        Due means: on the ``every`` schedule, ``every_seconds`` passed, or a
        watched signal arrived (then, after the commit, pending commits drain and
        the signal's previous handler runs; by default the process ends there).
        With ``sync_ranks`` every rank must call it at every step.

        Args:
            step: the step just finished (committed as the commit's ``step``).
            metrics: numbers for the commit's metadata (tensors are fine).

        Returns:
            The new commit (a ``CommitHandle`` when not blocking), or None when nothing was due.

        Example:
            >>> ckpt.step(step, {"loss": loss, "val_loss": val})  # doctest: +SKIP
        """
        values = metric_floats(metrics or {})
        improved = (
            self.on_best is not None
            and self.on_best in values
            and better(values[self.on_best], self.best, self.mode)
        )
        due = self.safe_point.check(sync=self.sync_ranks)
        scheduled = self.every is not None and step % self.every == 0
        if not (scheduled or improved or due):
            return None
        made = self.commit(step, values, "preempted" if due.signalled else None)
        if due.signalled:
            self.preempted = True
            self.safe_point.finish()
        return made

    def commit(
        self, step: int, metrics: Mapping[str, Any] | None = None, message: str | None = None
    ) -> Commit | CommitHandle:
        """Commit now, whatever the schedule (moves ``best`` if ``on_best`` improved).

        Example:
            >>> ckpt.commit(step, message="before the LR change")  # doctest: +SKIP
        """
        values = metric_floats(metrics or {})
        meta: dict[str, Any] = {
            "step": step,
            "metrics": values,
            "params": self.params,
            "branch": self.branch,
            "data": described(self.data, self.data_files, train=self.dataloader),
        }
        made: Commit | CommitHandle
        if self.blocking:
            made = self.ledger.commit(self.state, message, **meta)
        else:
            made = self.ledger.commit(self.state, message, **meta, blocking=False)
        value = values.get(self.on_best) if self.on_best is not None else None
        if value is not None and better(value, self.best, self.mode):
            self.best = value
            commit = made.result() if isinstance(made, CommitHandle) else made
            move_branch(
                self.ledger,
                self.best_ref,
                commit.id,
                f"{self.best_ref}: {self.on_best}={value:g} at step {step}",
            )
        self._commits += 1
        self.safe_point.committed()
        if self.gc_every is not None and self._commits % self.gc_every == 0:
            self.ledger.gc()
        return made

    def resume(self, rev: str = "HEAD") -> int:
        """Restore ``rev`` into the live objects (RNG included); return the step to start from.

        Returns 0 on an empty ledger, so the same script starts and resumes.
        Plain values of ``state=`` are written back into that mapping. HEAD does
        not move; the next commit continues from ``rev``'s commit (a branch tip
        it does not descend from is kept on ``orig/<branch>/<id>``).

        Raises:
            RevisionNotFoundError: ``rev`` names nothing (in a ledger that has commits).
            StateMismatchError: the live state does not match the commit (nothing changed).
            ResumeError: the commit has no step.

        Example:
            >>> for step in range(ckpt.resume("best"), total):  # doctest: +SKIP
            ...     ...
        """
        cid = resolve_resume(self.ledger, rev)
        if cid is None:
            return 0
        tree = self.state
        commit = self.ledger.restore(tree, cid)  # records the lineage: the next commit's parent
        self._write_back(tree)
        if commit.step is None:
            raise ResumeError(
                f"commit {cid[:12]} has no step, so there is no step to resume from; "
                "it was not written by a Checkpointer (use Ledger.restore for it)"
            )
        self.best = self._best_so_far()
        return commit.step + 1

    def _write_back(self, tree: dict[str, Any]) -> None:
        """Put the restored plain values (replaced, not loaded in place) into the user's mapping."""
        changed = {k: tree[k] for k in self.user_state if tree[k] is not self.user_state[k]}
        if not changed:
            return
        if not isinstance(self.user_state, MutableMapping):
            raise AdapterError(
                f"state= is a read-only {type(self.user_state).__name__}, so the restored values "
                f"of {sorted(changed)} cannot be put back into it; pass a dict"
            )
        self.user_state.update(changed)

    def close(self) -> None:
        """Stop watching the signals (their previous handlers are put back); call it after the loop.

        Until then a watched signal only sets a flag for the next ``step()``
        (a second one is handed on at once). ``with Checkpointer(...) as ckpt:`` closes too.

        Example:
            >>> ckpt.close()  # doctest: +SKIP
        """
        self.safe_point.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _best_so_far(self) -> float | None:
        if self.on_best is None or self.best_ref not in self.ledger.branches():
            return None
        return self.ledger.get(self.best_ref).metrics.get(self.on_best)
