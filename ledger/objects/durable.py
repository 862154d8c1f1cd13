"""Durable file primitives: fsync'd writes, atomic replace, directory fsync.

This module owns the only places where the package makes bytes durable. It
must never decide *what* to write; callers (packs, event log, ref view) do.
A failed write caused by a full disk becomes :class:`DiskFullError` here, so
every layer reports it the same way.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from ledger.errors import DiskFullError, LedgerError, from_os_error


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new names, renames) durable.

    Example:
        >>> fsync_dir(Path("."))
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - e.g. Windows
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """Translate ENOSPC / EDQUOT raised inside the block into :class:`DiskFullError`, and
    any other ``OSError`` (permission, read-only file system, descriptor limit) into the
    ``LedgerError`` of ``errors.from_os_error``, naming ``what``."""
    try:
        yield
    except OSError as e:
        if isinstance(e, DiskFullError):
            raise  # already translated further in
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"the disk is full while writing {what}; free space and retry "
                "(nothing partial was made visible)",
                path=e.filename if isinstance(e.filename, str) else None,
            ) from e
        if isinstance(e, LedgerError):
            raise
        where = e.filename if isinstance(e.filename, str) else what
        raise from_os_error(e, where, "writing" if where == what else f"writing {what}") from e


def temp_path(directory: Path, suffix: str = ".tmp") -> Path:
    """A unique temporary file name inside ``directory`` (same filesystem as the target)."""
    return directory / f".{os.getpid()}-{uuid.uuid4().hex}{suffix}"


def atomic_write(path: Path, data: bytes, *, fsync: bool, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the new one.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> atomic_write(d / "x", b"hi", fsync=False)
        >>> (d / "x").read_bytes()
        b'hi'
    """
    tmp = temp_path(tmp_dir or path.parent)
    try:
        with disk_errors(str(path)):
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if fsync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if fsync:
                fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
