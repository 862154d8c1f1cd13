"""Every error a user can cause, one class per situation.

This module owns the exception hierarchy. Each class is raised where its
situation is detected, with a message that names the object (revision, path in
the state, file) and says how to fix it. It must never hold logic beyond
formatting, and never import the rest of the package.
"""

from __future__ import annotations

import errno as _errno
from typing import Any


class LedgerError(Exception):
    """Base class of every error the user can cause.

    Besides its message, an error carries what a program needs to act on it
    as keyword fields (the ref, the expected and actual ids, the object and
    pack, the path in the state), readable as attributes and, all together,
    as :attr:`fields`; ``--json`` errors of the CLI include them. Messages
    say what happened and what to do in library terms; the CLI adds the
    shell command to run, where there is one.

    The CLI prints these as one or two lines without a traceback.

    Example:
        >>> try:
        ...     raise RevisionNotFoundError("no revision named 'nope'", revision="nope")
        ... except LedgerError as e:
        ...     print(e, e.revision, e.fields)
        no revision named 'nope' nope {'revision': 'nope'}
    """

    exit_code = 1

    def __init__(self, message: str = "", /, **fields: Any) -> None:
        super().__init__(message)
        self._init_fields(fields)

    def _init_fields(self, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            setattr(self, name, value)
        self._fields = {name: value for name, value in fields.items() if value is not None}

    @property
    def fields(self) -> dict[str, Any]:
        """The keyword fields this error was raised with (those that are not None)."""
        return dict(getattr(self, "_fields", {}))


class NotALedgerError(LedgerError):
    """The directory is missing, empty without ``create=True``, or holds something else."""

    path: str | None = None
    exists: bool | None = None


class FormatVersionError(LedgerError):
    """The ledger was written by a newer format version than this package reads."""

    found: int | None = None
    supported: int | None = None


class RevisionNotFoundError(LedgerError, LookupError):
    """A revision names no branch, tag or commit."""

    revision: str | None = None


class AmbiguousRevisionError(LedgerError, LookupError):
    """A commit-id prefix matches more than one commit."""

    revision: str | None = None
    candidates: list[str] | None = None


class RevisionSyntaxError(RevisionNotFoundError, ValueError):
    """A revision's text does not follow the grammar (docs/revisions.md)."""


class RefConflictError(LedgerError):
    """A compare-and-swap ref update lost a race: the ref moved since it was read."""

    ref: str | None = None
    expected: str | None = None
    actual: str | None = None


class RefNameError(LedgerError):
    """A branch or tag name is invalid or already taken."""

    name: str | None = None


class UnmergedBranchError(LedgerError):
    """Deleting a branch would leave its commits reachable from no ref."""

    branch: str | None = None
    commit: str | None = None


class PolicyError(LedgerError):
    """A retention policy is malformed (bad count, mode or duration)."""


class CommitExpiredError(LedgerError):
    """The commit's state was dropped by retention or ``expire``; its history remains."""

    commit: str | None = None
    reason: str | None = None


class DetachedHeadError(LedgerError):
    """``commit()`` was called with HEAD detached and no ``branch=``."""

    commit: str | None = None


class EmptyLedgerError(LedgerError):
    """An operation needs a commit but the ledger (or branch) has none yet."""


class UnsupportedValueError(LedgerError, ValueError):
    """A value in the state cannot be stored, or an argument is invalid (its path is named)."""

    path: str | None = None


class StateMismatchError(LedgerError, ValueError):
    """``restore`` found keys, shapes or dtypes that differ between the live state and the commit."""

    paths: list[str] | None = None
    commit: str | None = None


class CorruptionError(LedgerError):
    """Stored bytes fail their hash check, are truncated, or cannot be decoded."""

    exit_code = 3
    object: str | None = None
    pack: str | None = None
    path: str | None = None


class ObjectMissingError(CorruptionError):
    """An object that a commit references is not in the store."""


class RecordTooLargeError(LedgerError, ValueError):
    """A record (commit, manifest, metadata blob) is over its documented size cap."""

    kind: str | None = None
    size: int | None = None
    cap: int | None = None
    path: str | None = None


class PackUnreadableError(CorruptionError):
    """A pack exists but this process cannot open it (permissions, descriptor limit)."""


class LockTimeoutError(LedgerError, TimeoutError):
    """Another process holds the ledger's lock for longer than we are willing to wait."""

    path: str | None = None
    timeout: float | None = None


class DiskFullError(LedgerError, OSError):
    """A write failed because the disk is full; nothing partial became visible.

    An ``OSError`` with ``errno`` ``ENOSPC``, so code that handles a full disk
    already handles this one.

    Example:
        >>> e = DiskFullError("the disk is full", path="/ckpt")
        >>> e.errno == _errno.ENOSPC, str(e), e.path
        (True, 'the disk is full', '/ckpt')
    """

    path: str | None = None

    def __init__(self, message: str = "", /, **fields: Any) -> None:
        OSError.__init__(self, _errno.ENOSPC, message)
        self._init_fields(fields)

    def __str__(self) -> str:
        return str(self.strerror)


class UnsafePathError(LedgerError):
    """A name inside the ledger directory is a symbolic link (or not the kind of file the
    ledger makes there): the ledger refuses to write or delete through it, so it never
    touches anything outside its own directory.

    Example:
        >>> e = UnsafePathError("refused", path="/ckpt/objects/tmp", link="/home")
        >>> e.path, e.link
        ('/ckpt/objects/tmp', '/home')
    """

    path: str | None = None
    link: str | None = None


class LedgerOSError(LedgerError, OSError):
    """The operating system refused a file operation; the message names the file and what to do.

    An ``OSError`` too (with the original ``errno``), so code that handles the
    OS's error still handles this one. Made by :func:`from_os_error`.
    """

    path: str | None = None
    doing: str | None = None

    def __init__(self, message: str = "", /, *, errno: int = 0, **fields: Any) -> None:
        OSError.__init__(self, errno, message)
        self._init_fields(fields)

    def __str__(self) -> str:
        return str(self.strerror)


class LedgerPermissionError(LedgerOSError, PermissionError):
    """This process may not read or write a file or directory of the ledger."""


class ReadOnlyLedgerError(LedgerOSError):
    """The ledger is on a read-only file system: reads work, writes are refused."""


class MissingFileError(LedgerOSError, FileNotFoundError):
    """A file the ledger needs (``events.log``, a pack, a directory) is gone."""


class TooManyOpenFilesError(LedgerOSError):
    """The process hit its open-file limit (``ulimit -n``)."""


def from_os_error(exc: OSError, path: str | None = None, doing: str = "") -> LedgerError:
    """The :class:`LedgerError` for an ``OSError``, naming ``path`` and what to do.

    ``doing`` says what was attempted ("writing a pack", "in log");
    ``path`` defaults to the file the OS named. A :class:`LedgerError` is
    returned as it is.

    Example:
        >>> e = from_os_error(PermissionError(_errno.EACCES, "denied"), "/ckpt/events.log", "reading")
        >>> type(e).__name__, e.path
        ('LedgerPermissionError', '/ckpt/events.log')
    """
    if isinstance(exc, LedgerError):
        return exc
    where = path or (exc.filename if isinstance(exc.filename, str) else None) or "a ledger file"
    if isinstance(exc.filename2, str) and where == exc.filename:
        where = f"{where} -> {exc.filename2}"  # a rename: the target's directory may be at fault
    code = exc.errno or 0
    fields: dict[str, Any] = {"path": where, "doing": doing, "errno": code}
    said = f"{where} ({doing})" if doing else where
    if code in (_errno.ENOSPC, _errno.EDQUOT):
        return DiskFullError(
            f"the disk is full: {said}; free space and retry (nothing partial was made visible)",
            path=where,
        )
    if code in (_errno.EACCES, _errno.EPERM):
        return LedgerPermissionError(
            f"permission denied: {said}; give this user access to it (chmod/chown) "
            "or run as its owner",
            **fields,
        )
    if code == _errno.EROFS:
        return ReadOnlyLedgerError(
            f"read-only file system: {said}; reads work there, to write mount it "
            "read-write or copy the ledger to a writable disk",
            **fields,
        )
    if code == _errno.ENOENT:
        return MissingFileError(
            f"no such file or directory: {said}; check the path (a file of the ledger "
            "that is gone means it is damaged or was moved: restore it from a backup)",
            **fields,
        )
    if code in (_errno.EMFILE, _errno.ENFILE):
        return TooManyOpenFilesError(
            f"too many open files: {said}; raise the limit (ulimit -n) "
            "or close other files, then retry",
            **fields,
        )
    return LedgerOSError(f"{exc.strerror or exc}: {said}", **fields)


class ClosedLedgerError(LedgerError, ValueError):
    """The ledger (or a stage) was used after ``close()``, as a closed file raises ValueError."""


class RemoteError(LedgerError):
    """A remote cannot be used: unknown name, bad URL, unreachable after retries, not a ledger remote."""

    remote: str | None = None
    url: str | None = None


class RemoteURLError(RemoteError):
    """A remote URL is malformed, of an unsupported kind, or carries a credential."""


class DataFileError(LedgerError):
    """A data file named for hashing (``data_files=``) cannot be read."""


class RemoteAuthError(RemoteError):
    """Who the ledger would act as on a remote is missing or not allowed: no token, an
    invalid or read-only Hub token, an unknown stored token name or AWS profile."""


class RemoteConflictError(RefConflictError):
    """A push lost the compare-and-swap on the remote's refs: someone pushed since it read them."""

    remote: str | None = None
    url: str | None = None


class DivergedError(LedgerError):
    """A pull or push would not be a fast-forward: both sides have commits the other lacks."""

    branch: str | None = None
    ours: str | None = None
    theirs: str | None = None
    remote: str | None = None


class RemoteCorruptionError(CorruptionError):
    """Data read from a remote fails its checks (hash, size, name, format); nothing was stored."""

    url: str | None = None


class StalePlanError(RefConflictError):
    """A gc plan was made before the ledger changed (a ref moved, retention changed, a pack aged)."""


class ExportError(LedgerError):
    """A commit cannot be exported as asked (the output folder is taken, a format refuses a value)."""


class ImportBranchError(LedgerError):
    """The branch an import would create exists, or ``onto`` was given for an existing branch."""


class ImportRefusedError(LedgerError, ValueError):
    """A checkpoint file holds a type ``torch.load(weights_only=True)`` refuses; nothing was imported."""


class ImportSourceError(LedgerError, ValueError):
    """A checkpoint cannot be imported (unknown layout, truncated or damaged file, missing shard)."""


class ReleaseConflictError(RemoteError):
    """A release would collide with what is on the Hub: the branch a ledger remote pushes
    to, a tag that exists (tags never move), or a branch that moved during the release."""

    repo: str | None = None
    revision: str | None = None
    tag: str | None = None
    #: "push-branch", "tag-exists", "moved", or (raised by a push) "release-branch"
    reason: str | None = None


class NotifyError(LedgerError):
    """A notification hook is misconfigured (name, URL, kind, event) or ``notify test`` failed."""

    hook: str | None = None


class PreemptConfigError(LedgerError, ValueError):
    """A preemption setting names no catchable signal, or ``every_seconds`` is not positive."""


class PartialRestoreWarning(UserWarning):
    """``restore(strict=False)`` left paths unloaded: missing from the commit, or not in the live state.

    Example:
        >>> import warnings
        >>> warnings.simplefilter("error", PartialRestoreWarning)  # make partial restores fail
    """


class NothingRestoredWarning(UserWarning):
    """``restore(strict=False)`` loaded nothing at all: the state and the commit share no path.

    Its own class (not a :class:`PartialRestoreWarning`), so silencing partial
    restores never silences this one.
    """


class SecretRedactedWarning(UserWarning):
    """A commit's ``params=``, metric names, message or ``data=`` held something that looks like
    a secret (a token, a key, URL credentials); it was stored as ``<redacted>``.

    ``fields`` names each redacted field (as ``allow_secrets=`` takes it), never the secret.

    Example:
        >>> import warnings
        >>> warnings.simplefilter("error", SecretRedactedWarning)  # refuse such commits instead
    """

    def __init__(self, message: str, *, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.fields: list[str] = list(fields or [])


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` here point at the user's code.

    Counted from the function that calls this one (and then warns) up to the first
    frame outside the ``ledger`` package, so wrappers such as the facade's OS-error
    guard add no wrong frame. The adapters (``ledger.adapters``) count as user code.

    Example:
        >>> warnings.warn("budget exceeded", stacklevel=user_stacklevel())  # doctest: +SKIP
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(package):
        frame = frame.f_back
        level += 1
    return level
