"""A remote on any fsspec filesystem; S3 gets real compare-and-swap.

This module owns the fsspec backend. On S3 (``s3://bucket/prefix`` through
s3fs) ``put_if`` is a conditional ``PutObject``: ``If-None-Match: *`` when the
key must be absent, ``If-Match: <ETag>`` otherwise, so two writers can never
both win. Other fsspec filesystems offer no atomic conditional write: there
``put_if`` compares and then writes, which is safe for a single writer only
(``atomic`` is False and docs/remotes.md says so). Credentials come from the
filesystem's own configuration (environment, profiles); this module must
never accept or store one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
from pathlib import Path
from typing import Any

from ledger.errors import RemoteConflictError, RemoteError
from ledger.objects.hashing import hash_bytes
from ledger.remotes.base import Remote, Version, check_key

_TRANSIENT_ERRNO = {
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ECONNRESET,
    errno.EAGAIN,
    121,
}  # 121: EREMOTEIO


class FsspecRemote(Remote):
    """Keys as files under an fsspec URL such as ``s3://bucket/runs/bert``.

    Example:
        >>> r = FsspecRemote("memory://ledger-doc")
        >>> r.put("a", b"1"); r.get("a")
        b'1'
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        import fsspec

        super().__init__(url)
        protocol = url.split("://", 1)[0]
        if protocol in ("s3", "s3a"):
            storage_options.setdefault("use_listings_cache", False)
        self.fs, self.root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
        self.root = self.root.rstrip("/")
        self.s3 = protocol in ("s3", "s3a")
        self.atomic = self.s3

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def get(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self._path(key)))

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = bytes(self.fs.cat_file(self._path(key), start=start, end=start + length))
        if len(data) != length:
            raise RemoteError(f"{key} on remote {self.url} is shorter than its index says")
        return data

    def get_versioned(self, key: str) -> tuple[bytes | None, Version]:
        path = self._path(key)
        for _ in range(3):
            try:
                etag = self.fs.info(path).get("ETag") if self.s3 else None
                data = bytes(self.fs.cat_file(path))
            except FileNotFoundError:
                return None, None
            if not self.s3:
                return data, hash_bytes(data).hex()
            # The ETag is read first, so a concurrent write can only make put_if fail, never
            # succeed on stale data; a single-part object's ETag is its MD5, which confirms it.
            if etag and etag.strip('"') == hashlib.md5(data).hexdigest():
                return data, etag
        raise RemoteError(f"{key} on remote {self.url} keeps changing while being read; retry")

    def put(self, key: str, data: bytes | Path) -> None:
        path = self._path(key)
        if isinstance(data, Path):
            self.fs.put_file(str(data), path)
        else:
            self.fs.pipe_file(path, data)

    def put_if(self, key: str, data: bytes, expected: Version, message: str = "") -> None:
        path = self._path(key)
        if not self.s3:
            _, current = self.get_versioned(key)
            if current != expected:
                raise _conflict(key, self.url)
            self.fs.pipe_file(path, data)
            return
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        try:
            self.fs.pipe_file(path, data, **condition)
        except FileExistsError:
            raise _conflict(key, self.url) from None
        except OSError as e:
            text = str(e).lower()
            if e.errno == errno.EINVAL and ("pre-condition" in text or "precondition" in text):
                raise _conflict(key, self.url) from None
            raise

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list(self, prefix: str) -> list[str]:
        base = f"{self.root}/{prefix}".rstrip("/")
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        strip = len(self.root.rstrip("/")) + 1
        return sorted(str(p)[strip:] for p in found)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def transient(self, exc: BaseException) -> bool:
        if isinstance(exc, FileNotFoundError | PermissionError | FileExistsError):
            return False
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNO:
            return True
        name = type(exc).__name__
        return super().transient(exc) or "Connection" in name or "Timeout" in name


def _conflict(key: str, url: str) -> RemoteConflictError:
    return RemoteConflictError(f"{key} on remote {url} changed since it was read; fetch first")
