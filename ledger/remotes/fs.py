"""A remote on any fsspec filesystem; S3 gets real compare-and-swap.

This module owns the fsspec backend. On S3 (``s3://bucket/prefix`` through
s3fs) ``put_if`` is a conditional ``PutObject``: ``If-None-Match: *`` when the
key must be absent, ``If-Match: <ETag>`` otherwise, so two writers can never
both win. Other fsspec filesystems offer no atomic conditional write: there
``put_if`` compares and then writes, which is safe for a single writer only
(``atomic`` is False and docs/remotes.md says so). Credentials come from the
filesystem's own configuration (environment, profiles); this module must
never accept or store one.

Compare-and-swap on S3 reads the body and its ETag from one ``GetObject``
response and passes that ETag back as ``If-Match``; the ETag is an opaque
token (with SSE-KMS or a multipart upload it is not the MD5 of the body), so
nothing here computes one. A lost race is recognised by the error code S3
answers (``PreconditionFailed``, ``ConditionalRequestConflict``), not by a
message. The clients' own retry loops are turned off: retries are
``RetryingRemote``'s, which honours ``Retry-After``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from ledger.errors import RemoteConflictError, RemoteError
from ledger.objects.hashing import hash_bytes
from ledger.remotes.base import (
    READ_PIECE,
    Answer,
    Remote,
    Version,
    check_key,
    take_capped,
    too_large,
)

#: S3 error codes that mean "the condition of a conditional write did not hold".
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


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
        self.s3 = protocol in ("s3", "s3a")
        if self.s3:
            storage_options.setdefault("use_listings_cache", False)
            # one retry loop (RetryingRemote's): botocore's and s3fs's own are turned off
            storage_options.setdefault("config_kwargs", {"retries": {"total_max_attempts": 1}})
        self.fs, self.root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **storage_options)
        self.root = self.root.rstrip("/")
        self.atomic = self.s3
        if self.s3:
            import aiohttp
            import botocore.exceptions

            self.fs.retries = 1
            self.network_errors = (
                botocore.exceptions.HTTPClientError,
                botocore.exceptions.ConnectionError,
                aiohttp.ClientConnectionError,
                aiohttp.ClientPayloadError,
            )

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def get(self, key: str, limit: int | None = None) -> bytes:
        path = self._path(key)
        if limit is None:
            return bytes(self.fs.cat_file(path))
        if self.s3:
            return self._get_with_etag(path, key, limit)[0]
        with self.fs.open(path, "rb") as f:
            return take_capped(iter(lambda: f.read(READ_PIECE), b""), limit, key, self.url)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        data = bytes(self.fs.cat_file(self._path(key), start=start, end=start + length))
        if len(data) != length:
            raise RemoteError(f"{key} on remote {self.url} is shorter than its index says")
        return data

    def get_versioned(self, key: str, limit: int | None = None) -> tuple[bytes | None, Version]:
        path = self._path(key)
        try:
            if self.s3:
                return self._get_with_etag(path, key, limit)
            data = self.get(key, limit)
        except FileNotFoundError:
            return None, None
        return data, hash_bytes(data).hex()

    def _get_with_etag(self, path: str, key: str, limit: int | None) -> tuple[bytes, str]:
        """One ``GetObject``: the body (at most ``limit`` bytes) and the ETag of exactly that body.

        A body over ``limit`` is refused from its ``Content-Length``, or once
        more than ``limit`` bytes arrived; the connection is closed unread.
        """
        from fsspec.asyn import sync

        bucket, name, _ = self.fs.split_path(path)

        async def read() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=name)
            body = response["Body"]
            try:
                if limit is None:
                    return bytes(await body.read()), str(response["ETag"])
                if int(response.get("ContentLength") or 0) > limit:
                    raise too_large(key, self.url, limit)
                pieces = bytearray()
                while piece := await body.read(min(READ_PIECE, limit + 1 - len(pieces))):
                    pieces += piece
                    if len(pieces) > limit:
                        raise too_large(key, self.url, limit)
                return bytes(pieces), str(response["ETag"])
            finally:
                body.close()

        return sync(self.fs.loop, read)

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
        except OSError as e:
            if _error_code(e) in _CONFLICT_CODES:
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

    def answer_of(self, exc: BaseException) -> Answer | None:
        response = getattr(exc, "response", None) if self.s3 else None
        if not isinstance(response, dict):
            return None
        meta = response.get("ResponseMetadata") or {}
        status = meta.get("HTTPStatusCode")
        return (status, meta.get("HTTPHeaders") or {}) if isinstance(status, int) else None


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code (``PreconditionFailed`` ...) behind an error s3fs raised."""
    for e in (exc, exc.__cause__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            return str(code) if code is not None else None
    return None


def _conflict(key: str, url: str) -> RemoteConflictError:
    return RemoteConflictError(
        f"{key} on remote {url} changed since it was read; fetch first", ref=key, url=url
    )
