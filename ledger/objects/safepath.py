"""Writing and deleting only inside the ledger directory, and OS errors as LedgerErrors.

This module owns the two rules every write and delete site of the package
follows (docs/design-decisions.md, "What the ledger touches"):

* no name *inside* the ledger directory is followed when it is a symbolic
  link: :func:`check_inside` refuses a path any of whose components below the
  ledger root is a link, :func:`open_nofollow` opens a file for writing with
  ``O_NOFOLLOW``. The root itself may be a link (a ledger moved to a bigger
  disk and linked back is fine): the ledger owns what is under it;
* an ``OSError`` from the operating system becomes a :class:`LedgerError`
  naming the file and what to do (:func:`os_errors`, which uses
  ``errors.from_os_error``).

It must never decide what is written; callers do.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from ledger.errors import LedgerError, UnsafePathError, from_os_error


def _refuse(link: Path, doing: str) -> UnsafePathError:
    try:
        target = os.readlink(link)
    except OSError:
        target = "?"
    return UnsafePathError(
        f"refused {doing} {link}: it is a symbolic link (to {target}), and the ledger never "
        "follows a link inside its directory to write or delete; replace the link with the "
        "real directory or file",
        path=str(link),
        link=target,
    )


def check_inside(root: Path, path: Path, doing: str = "writing through") -> Path:
    """Return ``path`` when no component of it below ``root`` is a symbolic link.

    Components that do not exist yet are fine (the ledger will make them).
    ``root`` itself may be a link.

    Raises:
        UnsafePathError: a component below ``root`` is a link.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> check_inside(d, d / "objects" / "tmp") == d / "objects" / "tmp"
        True
    """
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise UnsafePathError(
            f"refused {doing} {path}: it is outside the ledger directory {root}", path=str(path)
        ) from None
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise _refuse(cur, doing)
    return path


def open_nofollow(path: Path, flags: int, mode: int = 0o644, doing: str = "writing") -> int:
    """``os.open`` that refuses (``UnsafePathError``) when ``path`` itself is a symbolic link.

    Example:
        >>> import tempfile
        >>> fd = open_nofollow(Path(tempfile.mkdtemp()) / "x", os.O_WRONLY | os.O_CREAT)
        >>> os.close(fd)
    """
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), mode)
    except OSError as e:
        if e.errno == errno.ELOOP and path.is_symlink():
            raise _refuse(path, doing) from None
        raise


@contextlib.contextmanager
def open_dir(root: Path, path: Path, doing: str) -> Iterator[int]:
    """A descriptor of directory ``path`` (checked by :func:`check_inside`, opened with
    ``O_NOFOLLOW``), for ``dir_fd=`` operations that cannot be sent elsewhere by a link
    swapped in after the check.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with open_dir(d, d, "listing") as fd:
        ...     os.listdir(fd)
        []
    """
    check_inside(root, path, doing)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    fd = open_nofollow(path, flags, doing=doing)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def os_errors(doing: str, path: Path | str | None = None) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into the matching :class:`LedgerError`.

    Example:
        >>> with os_errors("reading", "/nowhere/events.log"):  # doctest: +ELLIPSIS
        ...     open("/nowhere/events.log")
        Traceback (most recent call last):
        ledger.errors.MissingFileError: no such file or directory: /nowhere/events.log (reading); ...
    """
    try:
        yield
    except LedgerError:
        raise
    except OSError as e:
        raise from_os_error(e, None if path is None else str(path), doing) from e
