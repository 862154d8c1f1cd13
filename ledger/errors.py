"""Every error a user can cause, one class per situation.

This module owns the exception hierarchy. Each class is raised where its
situation is detected, with a message that names the object (revision, path in
the state, file) and says how to fix it. It must never hold logic beyond
formatting, and never import the rest of the package.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error the user can cause.

    The CLI prints these as one or two lines without a traceback.

    Example:
        >>> try:
        ...     raise RevisionNotFoundError("no revision named 'nope'")
        ... except LedgerError as e:
        ...     print(e)
        no revision named 'nope'
    """

    exit_code = 1


class NotALedgerError(LedgerError):
    """The directory is missing, empty without ``create=True``, or holds something else."""


class FormatVersionError(LedgerError):
    """The ledger was written by a newer format version than this package reads."""


class RevisionNotFoundError(LedgerError):
    """A revision names no branch, tag or commit."""


class AmbiguousRevisionError(LedgerError):
    """A commit-id prefix matches more than one commit."""


class RefConflictError(LedgerError):
    """A compare-and-swap ref update lost a race: the ref moved since it was read."""


class RefNameError(LedgerError):
    """A branch or tag name is invalid or already taken."""


class UnmergedBranchError(LedgerError):
    """Deleting a branch would leave its commits reachable from no ref."""


class PolicyError(LedgerError):
    """A retention policy is malformed (bad count, mode or duration)."""


class CommitExpiredError(LedgerError):
    """The commit's state was dropped by retention or ``expire``; its history remains."""


class DetachedHeadError(LedgerError):
    """``commit()`` was called with HEAD detached and no ``branch=``."""


class EmptyLedgerError(LedgerError):
    """An operation needs a commit but the ledger (or branch) has none yet."""


class UnsupportedValueError(LedgerError):
    """A value in the state cannot be stored (it names its path in the state)."""


class StateMismatchError(LedgerError):
    """``restore`` found keys, shapes or dtypes that differ between the live state and the commit."""


class CorruptionError(LedgerError):
    """Stored bytes fail their hash check, are truncated, or cannot be decoded."""

    exit_code = 3


class ObjectMissingError(CorruptionError):
    """An object that a commit references is not in the store."""


class LockTimeoutError(LedgerError):
    """Another process holds the ledger's lock for longer than we are willing to wait."""


class DiskFullError(LedgerError):
    """A write failed because the disk is full; nothing partial became visible."""


class ClosedLedgerError(LedgerError):
    """The ledger was used after ``close()``."""


class RemoteError(LedgerError):
    """A remote cannot be used: unknown name, bad URL, unreachable after retries, not a ledger remote."""


class RemoteURLError(RemoteError):
    """A remote URL is malformed, of an unsupported kind, or carries a credential."""


class RemoteConflictError(RefConflictError):
    """A push lost the compare-and-swap on the remote's refs: someone pushed since it read them."""


class DivergedError(LedgerError):
    """A pull or push would not be a fast-forward: both sides have commits the other lacks."""


class RemoteCorruptionError(CorruptionError):
    """Data read from a remote fails its checks (hash, size, name, format); nothing was stored."""


class ExportError(LedgerError):
    """A commit cannot be exported as asked (the output folder is taken, a format refuses a value)."""
