"""A full disk while writing a commit out (``checkout --out``, ``export``) is one clear error.

This module owns :func:`guarded_output`: before an export writes anything it
compares the bytes it will write (the commit's tensor bytes, plus a margin for
headers and metadata files) with the free space where ``out`` will be, and
refuses with a :class:`~ledger.errors.DiskFullError` naming both; and when the
disk fills up anyway (another process took the space, the estimate was short),
whatever the writer raised (an ``OSError``, safetensors' ``SafetensorError``,
the ``RuntimeError`` ``torch.save`` turns ``ENOSPC`` into) becomes that same
error. Whatever ends an export early (a full disk, an error, Ctrl-C), what it
created at ``out`` is removed, so nothing half-written is left behind. An
``out`` that existed before (``force=True``) is never removed: the ledger
deletes only what it made. Commits check their own bound with the same
helpers (:func:`free_bytes`, :func:`human_size`) in ``ledger.api.preflight``.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

from ledger.errors import DiskFullError

#: Added to the tensor bytes: headers, JSON metadata, config files.
MARGIN = 64 << 10
#: Below this many free bytes after a failed write, the disk is taken to be what failed.
NEARLY_FULL = 256 << 10
_FULL_WORDS = ("no space left on device", "os error 28", "disk quota exceeded", "enospc")


def _existing_parent(path: Path) -> Path:
    for folder in (path, *path.parents):
        if folder.exists():
            return folder
    return Path.cwd()


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that ``path`` (or its nearest existing parent) is on.

    Example:
        >>> free_bytes(Path("/tmp")) > 0
        True
    """
    return shutil.disk_usage(_existing_parent(path)).free


def _mentions_full_disk(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(word in str(current).lower() for word in _FULL_WORDS):
            return True
        current = current.__cause__ or current.__context__
    return False


def human_size(n: int) -> str:
    """``n`` bytes as the messages say it: ``512 B``, ``2.4 MiB``.

    Example:
        >>> human_size(512), human_size(2_400_000)
        ('512 B', '2.3 MiB')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _remove(out: Path) -> None:
    with contextlib.suppress(OSError):
        if out.is_symlink() or out.is_file():
            out.unlink()
        elif out.is_dir():
            shutil.rmtree(out)


@contextlib.contextmanager
def guarded_output(out: Path, needed: int, what: str) -> Iterator[None]:
    """Refuse, or clean up after, a write of about ``needed`` bytes to ``out`` on a full disk.

    Raises:
        DiskFullError: not enough free space before writing (nothing written), or the
            disk filled up while writing (what this call created at ``out`` removed).

    Example:
        >>> with guarded_output(Path("model-v1"), 4 << 30, "export of 1a2b3c"):  # doctest: +SKIP
        ...     write_hf(...)
    """
    existed = out.exists() or out.is_symlink()
    where = _existing_parent(out)
    total = needed + MARGIN
    free = free_bytes(out)
    if total > free:
        raise DiskFullError(
            f"{what} needs about {human_size(total)} at {out} but {where} has {human_size(free)} free; "
            "nothing was written: free some space or choose another place",
            path=str(out),
        )
    try:
        yield
    except BaseException as e:  # DCP's CheckpointException is a BaseException
        # torch.save and DCP turn ENOSPC into errors that no longer say so: a disk
        # left nearly full by the failed write is then taken to be the cause
        full = _mentions_full_disk(e) or free_bytes(out) < NEARLY_FULL
        if not existed:
            _remove(out)  # a failed or interrupted export leaves nothing half-written
        if isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit)) or not full:
            raise
        left = "nothing was left there" if not existed else f"{out} may hold partial files"
        raise DiskFullError(
            f"the disk at {where} filled up during the {what} to {out} "
            f"({human_size(free)} free before, about {human_size(total)} needed); {left}: "
            "free some space and run it again",
            path=str(out),
        ) from None
