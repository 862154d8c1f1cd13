"""Making a ledger directory, and starting over only an init the ledger provably began.

This module owns the init marker (docs/format.md, "2.2 `.ledger-init`"): before
it writes anything else into a new ledger directory, ``Ledger.open(create=True)``
writes ``.ledger-init`` (a random token, fsync'd); the config file ``LEDGER`` is
written last, then the marker is removed. A directory with the marker and no
config is an interrupted init of ours: :func:`clear_interrupted_init` removes
only the names an init makes, each only when it is the kind of file the init
makes (never a link), and refuses on anything else. A directory that merely
looks like one (an ``objects/`` folder and a ``refs`` file of the user's own)
has no marker and is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ledger.errors import NotALedgerError
from ledger.objects.durable import fsync_dir

CONFIG_FILE = "LEDGER"
INIT_MARKER = ".ledger-init"
MARKER_KIND = "training-ledger-init"
# The files an init writes at the top level, and its directories (objects/packs, objects/tmp).
_INIT_FILES = {"events.log", "refs", "lock", "gc.lock", "gc.intent"}
_INIT_DIRS = ("objects/packs", "objects/tmp", "objects")
# Temporary files an init can leave in objects/tmp (durable.temp_path names).
_TEMP_NAME = re.compile(r"\.\d+-[0-9a-f]{32}\.tmp")


class InitMarker(msgspec.Struct, frozen=True):
    """The content of ``.ledger-init``."""

    kind: str
    token: str


def write_marker(root: Path, *, fsync: bool) -> None:
    """Write ``.ledger-init`` (exclusively: never over a file of the user's), durably."""
    marker = InitMarker(kind=MARKER_KIND, token=secrets.token_hex(16))
    fd = os.open(root / INIT_MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, msgspec.json.encode(marker) + b"\n")
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    if fsync:
        fsync_dir(root)


def remove_marker(root: Path, *, fsync: bool) -> None:
    """Remove the marker once ``LEDGER`` is durable: the init is complete."""
    with contextlib.suppress(FileNotFoundError):
        (root / INIT_MARKER).unlink()
    if fsync:
        fsync_dir(root)


def _has_marker(root: Path) -> bool:
    path = root / INIT_MARKER
    try:
        if not stat.S_ISREG(path.lstat().st_mode) or path.lstat().st_size > 4096:
            return False
        return msgspec.json.decode(path.read_bytes(), type=InitMarker).kind == MARKER_KIND
    except (OSError, msgspec.DecodeError):
        return False


def _looks_like_init(root: Path, *, marked: bool = False) -> bool:
    """Only names an init makes, no config, no pack; with ``marked``, the marker alone
    (an init cut short right after writing it) counts too."""
    if not root.is_dir() or (root / CONFIG_FILE).exists():
        return False
    names = {p.name for p in root.iterdir()} - {INIT_MARKER}
    if not (names or marked) or not names <= _INIT_FILES | {"objects"}:
        return False
    packs = root / "objects" / "packs"
    return not (packs.is_dir() and any(packs.iterdir()))


def interrupted_init(root: Path) -> bool:
    """Whether ``root`` holds an init this package began and never finished (its marker)."""
    return _has_marker(root) and _looks_like_init(root, marked=True)


def not_a_ledger(root: Path) -> NotALedgerError:
    """The error for a directory that holds something, but no ledger."""
    if interrupted_init(root):
        return NotALedgerError(
            f"{root} holds an interrupted init (no {CONFIG_FILE} file, no data); "
            "pass create=True to start it over",
            path=str(root),
        )
    if _looks_like_init(root):
        return NotALedgerError(
            f"{root} looks like an interrupted init but has no {INIT_MARKER} marker, so "
            "training-ledger cannot tell that it made those files and leaves them alone; "
            "remove them yourself or choose an empty or new directory",
            path=str(root),
        )
    return NotALedgerError(
        f"{root} is not empty and is not a ledger (no {CONFIG_FILE} file); "
        "choose an empty or new directory",
        path=str(root),
    )


def clear_interrupted_init(root: Path) -> None:
    """Remove what an interrupted init of ours left, and nothing else.

    Raises:
        NotALedgerError: a name the init would have made is a link or of the
            wrong kind, or a directory holds a file the init does not make;
            nothing more is removed then.
    """
    doomed: list[tuple[Path, bool]] = []  # (path, is a directory), children first
    for rel in _INIT_DIRS:
        path = root / rel
        kind = _kind(path)
        if kind is None:
            continue
        if kind != "dir":
            raise _foreign(root, path)
        for child in path.iterdir():
            if rel == "objects/tmp" and _TEMP_NAME.fullmatch(child.name) and _kind(child) == "file":
                doomed.append((child, False))
            elif rel == "objects" and child.name in ("packs", "tmp"):
                continue
            else:
                raise _foreign(root, child)
        doomed.append((path, True))
    for name in sorted(_INIT_FILES):
        kind = _kind(root / name)
        if kind not in (None, "file"):
            raise _foreign(root, root / name)
        if kind == "file":
            doomed.append((root / name, False))
    for path, is_dir in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.rmdir() if is_dir else path.unlink()
    (root / INIT_MARKER).unlink()


def _kind(path: Path) -> str | None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    return "dir" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _foreign(root: Path, path: Path) -> NotALedgerError:
    return NotALedgerError(
        f"{root} holds an interrupted init, but {path} is not something an init makes (a link, "
        "or a file of someone else's); nothing was removed: move it away and retry",
        path=str(path),
    )


@contextlib.contextmanager
def init_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the (new or empty) ledger directory itself.

    Nothing is written for it: the lock lives on the directory's own inode, so
    the last process out leaves no file behind and a crash leaves no stale lock.

    Example:
        >>> import tempfile
        >>> with init_lock(Path(tempfile.mkdtemp()) / "ckpt"):
        ...     pass
    """
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
