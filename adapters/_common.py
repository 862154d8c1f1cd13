"""What every framework adapter shares: errors, opening a ledger, the `best` ref, retention, values.

This module owns the pieces the adapters have in common: the adapter error
classes, importing an optional framework with an error that names its extra,
turning a path or an open :class:`~ledger.Ledger` into a ledger, moving the
``best`` branch, installing retention policies, and converting framework
values (metrics, hyper-parameters, checkpoint dicts) into what a commit
stores. It builds on the public ``Ledger`` API only and must never import a
framework itself, nor pickle anything.
"""

from __future__ import annotations

import enum
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

from ledger import Ledger
from ledger.errors import EmptyLedgerError, LedgerError, UnsupportedValueError
from ledger.retention import KeepBest, KeepLast

LedgerLike = str | os.PathLike[str] | Ledger
"""A ledger directory (created when missing) or an open :class:`~ledger.Ledger`."""

BEST = "best"
"""The branch that points at the best commit so far (tags never move, branches do)."""


class AdapterError(LedgerError):
    """Base class of the errors an adapter raises for a situation the user can fix."""


class MissingExtraError(AdapterError, ImportError):
    """An adapter was imported without its framework; the message names the extra to install."""


class ResumeError(AdapterError):
    """A revision cannot be resumed into this run (not written by this adapter, or the wrong shape)."""


class DistributedCommitError(AdapterError):
    """A rank failed, timed out or disagreed during a multi-process commit; nothing became visible."""


def missing_extra(extra: str, error: ImportError) -> MissingExtraError:
    """The error for an adapter imported without its framework (raise it ``from error``).

    Example:
        >>> try:
        ...     import lightning_that_is_not_installed  # noqa: F401
        ... except ImportError as e:
        ...     print(missing_extra("lightning", e))
        ledger.adapters.lightning needs lightning_that_is_not_installed, which is not installed; install it with: pip install 'training-ledger[lightning]'
    """
    missing = error.name or str(error)
    return MissingExtraError(
        f"ledger.adapters.{extra} needs {missing}, which is not installed; "
        f"install it with: pip install 'training-ledger[{extra}]'"
    )


def open_ledger(ledger: LedgerLike) -> Ledger:
    """The open ledger ``ledger`` names: itself, or the directory opened (created when missing).

    Example:
        >>> lg = open_ledger("ckpt")  # doctest: +SKIP
    """
    if isinstance(ledger, Ledger):
        return ledger
    if isinstance(ledger, str | os.PathLike):
        return Ledger.open(ledger, create=True)
    raise AdapterError(
        f"expected a ledger directory or an open Ledger, not {type(ledger).__name__}; "
        "pass e.g. 'ckpt' or Ledger.open('ckpt', create=True)"
    )


def has_commits(lg: Ledger) -> bool:
    """Whether any branch of the ledger has a commit."""
    return bool(lg.branches())


def resolve_resume(lg: Ledger, rev: str) -> str | None:
    """The commit id to resume from, or None when the ledger has no commit at all.

    So one script both starts (empty ledger: None) and resumes. A name that
    does not exist in a ledger that has commits is an error, not a fresh start.

    Raises:
        RevisionNotFoundError: ``rev`` names nothing in a ledger that has commits.
    """
    if not has_commits(lg):
        return None
    try:
        return lg.resolve(rev)
    except EmptyLedgerError:
        return None  # HEAD is on an unborn branch: start that branch afresh


def move_branch(lg: Ledger, name: str, commit_id: str, reason: str) -> None:
    """Point branch ``name`` at ``commit_id`` (creating it), as one compare-and-swap ref move.

    Raises:
        RefConflictError: another writer moved the branch meanwhile.
    """
    old = lg.branches().get(name)  # waits for a pending commit first
    if old != commit_id:
        lg.move_branch(name, commit_id, expected=old, reason=reason)


def better(value: float, best: float | None, mode: str) -> bool:
    """Whether ``value`` beats ``best`` under ``mode`` ("min" or "max"); NaN never does.

    Example:
        >>> better(0.5, 0.7, "min"), better(0.5, None, "max"), better(float("nan"), None, "min")
        (True, True, False)
    """
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def check_mode(mode: str) -> str:
    """``mode`` if it is "min" or "max", else an :class:`AdapterError`."""
    if mode not in ("min", "max"):
        raise AdapterError(f"mode={mode!r} must be 'min' or 'max'")
    return mode


def install_retention(
    lg: Ledger, *, keep_last: int | None, best: str | None, best_k: int, mode: str
) -> None:
    """Make ``KeepLast(keep_last)`` / ``KeepBest(best, k=best_k)`` the ledger-wide retention.

    Nothing is written when neither is asked for or the ledger already has
    exactly these policies. Retention takes effect at the next ``gc``.
    """
    policies: list[Any] = []
    if keep_last is not None:
        policies.append(KeepLast(keep_last))
    if best is not None:
        policies.append(KeepBest(best, k=best_k, mode=mode))
    if policies and list(lg.retention()) != policies:
        lg.set_retention(*policies)


def metric_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are numbers (Python, numpy, 0-d/1-element tensors), as floats.

    Example:
        >>> metric_floats({"loss": torch.tensor(0.5), "name": "x", "acc": 1})
        {'loss': 0.5, 'acc': 1.0}
    """
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, torch.Tensor | np.ndarray | np.generic):
            if (
                value.size == 1
                if isinstance(value, np.ndarray | np.generic)
                else value.numel() == 1
            ):
                out[str(key)] = float(value.item())
        elif isinstance(value, int | float):
            out[str(key)] = float(value)
    return out


def plain_params(values: Mapping[str, Any]) -> dict[str, Any]:
    """Hyper-parameters as plain values for a commit's ``params``.

    Values that are not plain are written down as their ``repr`` (params are
    a record for people, never loaded back into a run).

    Example:
        >>> plain_params({"lr": 0.1, "act": torch.nn.ReLU(), "sizes": (4, 8)})
        {'lr': 0.1, 'act': 'ReLU()', 'sizes': [4, 8]}
    """

    def clean(value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, enum.Enum):
            return clean(value.value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        if isinstance(value, PurePath):
            return str(value)
        return repr(value)

    return {str(k): clean(v) for k, v in values.items()}


# -- framework dicts into storable trees ---------------------------------------------


def storable(value: Any, where: str = "checkpoint") -> tuple[Any, list[str]]:
    """A copy of a framework's checkpoint tree that a commit can store, and what was converted.

    Tensors, arrays, generators and stateful objects pass through untouched
    (no copy). Values the ledger cannot store are converted by the rules
    below, each reported as ``"<path>: <from> -> <to>"``; anything else is
    refused with :class:`~ledger.errors.UnsupportedValueError` naming its path.

    Explicit conversions: ``argparse.Namespace`` and dataclass instances ->
    dict of their fields; enum members -> their value; set/frozenset -> sorted
    list; paths -> str; torch.dtype/torch.device -> str.

    Example:
        >>> import pathlib
        >>> storable({"dir": pathlib.Path("/tmp"), "n": 1})
        ({'dir': '/tmp', 'n': 1}, ["checkpoint['dir']: PosixPath -> str"])
    """
    notes: list[str] = []
    return _storable(value, where, notes), notes


def _storable(value: Any, where: str, notes: list[str]) -> Any:
    import argparse
    import dataclasses

    if value is None or isinstance(
        value, bool | int | float | str | bytes | torch.Tensor | np.ndarray | np.generic
    ):
        return value
    if isinstance(value, torch.Generator):
        return value
    if isinstance(value, Mapping):
        return {k: _storable(v, f"{where}[{k!r}]", notes) for k, v in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_storable(v, f"{where}[{i}]", notes) for i, v in enumerate(value))
    if isinstance(value, list):
        return [_storable(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    if callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    ):
        return value
    kind = type(value).__name__
    if isinstance(value, argparse.Namespace):
        notes.append(f"{where}: Namespace -> dict")
        return _storable(vars(value), where, notes)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        notes.append(f"{where}: {kind} -> dict")
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _storable(fields, where, notes)
    if isinstance(value, tuple):  # a namedtuple
        notes.append(f"{where}: {kind} -> dict")
        return _storable(value._asdict(), where, notes)  # type: ignore[attr-defined]
    if isinstance(value, enum.Enum):
        notes.append(f"{where}: {kind} -> {type(value.value).__name__}")
        return _storable(value.value, where, notes)
    if isinstance(value, set | frozenset):
        notes.append(f"{where}: {kind} -> list")
        return sorted((_storable(v, where, notes) for v in value), key=repr)
    if isinstance(value, PurePath):
        notes.append(f"{where}: {kind} -> str")
        return str(value)
    if isinstance(value, torch.dtype | torch.device):
        notes.append(f"{where}: torch.{kind} -> str")
        return str(value)
    raise UnsupportedValueError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored in a "
        "ledger (no pickle, ever); keep plain values, tensors or objects with "
        "state_dict()/load_state_dict() there, or convert it in your on_save_checkpoint hook"
    )


def warn_conversions(notes: Sequence[str], what: str) -> None:
    """One warning listing every conversion :func:`storable` made (none: no warning)."""
    if notes:
        shown = "; ".join(notes[:10]) + (
            f" (and {len(notes) - 10} more)" if len(notes) > 10 else ""
        )
        warnings.warn(f"{what}: stored with conversions: {shown}", stacklevel=3)
