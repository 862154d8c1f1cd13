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
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ledger.errors import DiskFullError, LedgerError, RecordTooLargeError, from_os_error

# The local ref view (``refs``) is a cache: one larger than this is damaged, and replayed.
MAX_REF_VIEW_BYTES = 64 << 20


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


def _read_upto(f: BinaryIO, size: int, cap: int) -> bytes:
    """The rest of ``f`` (``size`` bytes by its ``fstat``), but never more than ``cap`` + 1.

    Reads what the file holds, not ``cap`` + 1 (a read of n bytes allocates n
    up front); a file that grew since is read on in 1 MiB pieces.
    """
    pieces, got, want = [], 0, size + 1
    while got <= cap and (piece := f.read(min(want, cap + 1 - got))):
        pieces.append(piece)
        got += len(piece)
        want = 1 << 20
    return b"".join(pieces)


def read_bounded(path: Path, cap: int) -> bytes:
    """The bytes of the regular file at ``path``, read only up to ``cap`` + 1 bytes.

    A file that is larger is refused from its size or after ``cap`` + 1
    bytes (it may grow meanwhile); anything but a regular file (a link to
    ``/dev/zero``, a pipe) is refused unread. So a hostile or damaged file can never
    make a reader allocate more than its cap.

    Raises:
        RecordTooLargeError: the file holds more than ``cap`` bytes.
        OSError: it cannot be read (missing, no permission); callers decide.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "f"
        >>> _ = p.write_bytes(b"abc")
        >>> read_bounded(p, 3)
        b'abc'
    """
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        endless = not stat.S_ISREG(st.st_mode)  # a device or pipe: never a ledger's file
        data = b"" if endless or st.st_size > cap else _read_upto(f, st.st_size, cap)
    if endless or st.st_size > cap or len(data) > cap:
        raise RecordTooLargeError(
            f"{path} holds more than {cap} bytes, more than a file of its kind may; "
            "it is damaged or not the ledger's (move it aside: the ledger rebuilds caches)",
            size=None if endless else max(st.st_size, len(data)),
            cap=cap,
            path=str(path),
        )
    return data
