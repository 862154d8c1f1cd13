"""A remote in a local (or mounted) directory.

This module owns the directory backend: each key is a file under the root,
written under a temporary name, fsync'd and renamed, so a reader sees a whole
file or none. ``put_if`` is a compare-and-swap under ``flock`` on
``<root>/.lock`` (the same lock-then-rename discipline the ledger uses for its
own refs); the version of a file is the blake3 of its content. It must never
follow a key outside the root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from ledger.errors import RecordTooLargeError, RemoteConflictError
from ledger.objects.durable import fsync_dir, read_bounded, temp_path
from ledger.objects.hashing import hash_bytes
from ledger.remotes.base import Remote, Version, check_key, too_large

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TMP = ".tmp"
LOCK = ".lock"


class DirectoryRemote(Remote):
    """Keys as files under ``root`` (created on the first write).

    Example:
        >>> import tempfile
        >>> r = DirectoryRemote(Path(tempfile.mkdtemp()))
        >>> r.put_if("refs.json", b"{}", None)
        >>> data, version = r.get_versioned("refs.json")
        >>> data
        b'{}'
    """

    def __init__(self, root: Path, url: str | None = None) -> None:
        super().__init__(url or str(root))
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def get(self, key: str, limit: int | None = None) -> bytes:
        if limit is None:
            return self._path(key).read_bytes()
        try:
            return read_bounded(self._path(key), limit)
        except RecordTooLargeError:
            raise too_large(key, self.url, limit) from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with open(self._path(key), "rb") as f:
            f.seek(start)
            return f.read(length)

    def get_versioned(self, key: str, limit: int | None = None) -> tuple[bytes | None, Version]:
        try:
            data = self.get(key, limit)
        except FileNotFoundError:
            return None, None
        return data, hash_bytes(data).hex()

    def _write(self, key: str, data: bytes | Path) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = self.root / TMP
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(tmp_dir)
        try:
            if isinstance(data, Path):
                shutil.copyfile(data, tmp)
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
            else:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def put(self, key: str, data: bytes | Path) -> None:
        self._write(key, data)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def put_if(self, key: str, data: bytes, expected: Version, message: str = "") -> None:
        with self._locked():
            _, current = self.get_versioned(key)
            if current != expected:
                raise RemoteConflictError(
                    f"{key} on remote {self.url} changed since it was read; fetch first",
                    ref=key,
                    url=self.url,
                )
            self._write(key, data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        out = []
        for path in base.rglob("*"):
            rel = path.relative_to(self.root).as_posix()
            if path.is_file() and not rel.startswith((TMP + "/", LOCK)):
                out.append(rel)
        return sorted(out)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()
