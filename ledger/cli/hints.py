"""The shell command that fixes an error, added by the CLI under the library's message.

This module owns turning a :class:`~ledger.errors.LedgerError` (its class and
fields) into a one-line hint naming a ``ledger`` command. The library's
messages speak in library terms (``create=True``, ``force=True``); only the
command line knows which shell command does the same, so the hints live here.
It must never change or parse an error's message.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from ledger.errors import (
    AmbiguousRevisionError,
    CorruptionError,
    DetachedHeadError,
    DivergedError,
    ExportError,
    ImportBranchError,
    ImportRefusedError,
    LedgerError,
    NotALedgerError,
    RefNameError,
    ReleaseConflictError,
    RemoteConflictError,
    RevisionNotFoundError,
    RevisionSyntaxError,
    UnmergedBranchError,
)

_BLOCKED_MODULES = ("sys", "os", "posix", "nt")
"""torch's ``_weights_only_unpickler._blocklisted_modules``: no ``--allow`` admits their types."""


def _q(value: object) -> str:
    return shlex.quote(str(value))


def _not_a_ledger(e: LedgerError) -> str | None:
    path = getattr(e, "path", None)
    if path is not None and getattr(e, "exists", True) is False:
        return f"create it with `ledger init --dir {_q(path)}`"
    return None


def _unmerged(e: LedgerError) -> str | None:
    branch = getattr(e, "branch", None)
    return f"`ledger branch -D {_q(branch)}` deletes it anyway" if branch else None


def _conflict(e: LedgerError) -> str | None:
    remote = getattr(e, "remote", None)
    return (
        f"run `ledger fetch {_q(remote)}` and retry" if remote else "run `ledger fetch` and retry"
    )


def _release_conflict(e: LedgerError) -> str | None:
    return {
        "tag-exists": "tags never move: pass a new name with `--tag`",
        "push-branch": "release onto another branch, e.g. `--revision release`",
        "moved": "run the same `ledger release` again",
    }.get(str(getattr(e, "reason", None)))


def _import_refused(e: LedgerError) -> str | None:
    kind = getattr(e, "type", None)
    if not kind or str(kind).split(".")[0] in _BLOCKED_MODULES:
        return None  # DCP metadata of another type, or a type that can run commands
    where = getattr(e, "path", None)
    trust = f"if you trust {_q(where)}, " if where else "if you trust the file, "
    return (
        f"{trust}run `ledger import PATH --allow {_q(kind)}` "
        "(add one `--allow` for each type it names next)"
    )


def _import_branch(e: LedgerError) -> str | None:
    branch = getattr(e, "branch", None)
    if branch is None:
        return None
    onto = getattr(e, "revision", None)
    if onto is not None:  # --onto given for a branch that exists
        return (
            f"`--onto` starts a new branch: `ledger import PATH --branch NEW "
            f"--onto {_q(onto)}`, or drop `--onto` to append onto {_q(branch)}"
        )
    return (
        f"`ledger import PATH --branch {_q(branch)}` appends onto it; "
        "`--branch NEW` starts another branch"
    )


def _export(e: LedgerError) -> str | None:
    return (
        "`ledger show REV` lists what the commit holds; for `ledger export`, force=True is "
        "`--force`, key= `--key`, model_key= `--model-key`"
    )


def _diverged(e: LedgerError) -> str | None:
    branch = getattr(e, "branch", None)
    if branch is None:
        return None
    keep = _q(f"{branch}-local")
    return (
        f"keep yours with `ledger branch {keep} {_q(branch)}`, then "
        f"`ledger checkout {keep}`, `ledger branch -D {_q(branch)}` and pull again"
    )


def _revision(e: LedgerError) -> str:
    text = str(getattr(e, "revision", None) or "")
    if re.search(r"(^|:)(step|epoch|best):", text):
        return "`ledger log REV --metrics M` lists each commit's step, epoch and metrics"
    return "`ledger log --all` lists the commits, `ledger branch` the branches"


_HINTS: list[tuple[type[LedgerError], Callable[[LedgerError], str | None]]] = [
    (NotALedgerError, _not_a_ledger),
    (AmbiguousRevisionError, lambda e: "`ledger log --all` shows the full ids"),
    (
        RevisionSyntaxError,
        lambda e: (
            "revisions look like main~2, step:<=1000, exp:best:val_loss, main@{2 hours ago}"
            " (docs/revisions.md)"
        ),
    ),
    (RevisionNotFoundError, _revision),
    (UnmergedBranchError, _unmerged),
    (RefNameError, lambda e: "`ledger branch` lists the branches, `ledger tag` the tags"),
    (DetachedHeadError, lambda e: "`ledger checkout BRANCH` attaches HEAD to a branch"),
    (ReleaseConflictError, _release_conflict),
    (ImportRefusedError, _import_refused),
    (ImportBranchError, _import_branch),
    (ExportError, _export),
    (RemoteConflictError, _conflict),
    (DivergedError, _diverged),
    (CorruptionError, lambda e: "`ledger verify --full` lists everything damaged"),
]


def hint_for(error: LedgerError) -> str | None:
    """The shell command that helps with ``error``, or None.

    Example:
        >>> hint_for(UnmergedBranchError("branch 'x' is unmerged", branch="x"))
        '`ledger branch -D x` deletes it anyway'
    """
    for kind, make in _HINTS:
        if isinstance(error, kind):
            return make(error)
    return None
