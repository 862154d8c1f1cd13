"""S3 remotes through the real s3fs client against moto's S3 server on 127.0.0.1.

Proves what is S3's own: the compare-and-swap (conditional PutObject) with
ETags that are not MD5s (a multipart-uploaded ``refs.json``, and a proxy that
answers opaque ETags as SSE-KMS buckets do), and that AWS keys never reach
the ledger directory. The guarantees every backend shares are
tests/test_remote_conformance.py's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servers.s3 import AWS_KEY_ID, AWS_SECRET, S3Proxy, s3_bucket, s3_endpoint, s3_proxy
from servers.training import model, new_ledger, secrets_in, state

from ledger import Ledger
from ledger.errors import RemoteConflictError
from ledger.remotes.fs import FsspecRemote

__all__ = ["s3_bucket", "s3_endpoint", "s3_proxy"]  # fixtures used by this module


def test_conditional_writes_make_put_if_a_compare_and_swap(s3_bucket: str) -> None:
    r = FsspecRemote(f"s3://{s3_bucket}/cas")
    assert r.atomic
    r.put_if("refs.json", b"one", None)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"other", None)  # If-None-Match: * on an existing key
    data, v1 = r.get_versioned("refs.json")
    assert data == b"one"
    r.put_if("refs.json", b"two", v1)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"three", v1)  # If-Match on a stale ETag
    assert r.get("refs.json") == b"two"


def _compare_and_swap(r: FsspecRemote) -> None:
    """put_if on an existing key succeeds with the version read, and only with it."""
    data, version = r.get_versioned("refs.json")
    assert data is not None and version is not None
    r.put_if("refs.json", b"next", version)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"late", version)  # If-Match on a stale ETag
    assert r.get("refs.json") == b"next"


def test_a_multipart_refs_json_whose_etag_is_not_its_md5_swaps(s3_bucket: str) -> None:
    import hashlib

    import boto3

    s3 = boto3.client("s3")
    key = "mp/refs.json"
    body = b"x" * (5 << 20)  # S3's smallest part
    upload = s3.create_multipart_upload(Bucket=s3_bucket, Key=key)
    part = s3.upload_part(
        Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=body
    )
    s3.complete_multipart_upload(
        Bucket=s3_bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
    )
    r = FsspecRemote(f"s3://{s3_bucket}/mp")
    data, version = r.get_versioned("refs.json")
    assert data == body and version is not None
    assert version.strip('"') != hashlib.md5(body).hexdigest()  # a multipart ETag
    _compare_and_swap(r)


def test_opaque_etags_as_with_sse_kms_still_swap(s3_proxy: S3Proxy, s3_bucket: str) -> None:
    import hashlib

    r = FsspecRemote(f"s3://{s3_bucket}/kms")
    r.put_if("refs.json", b"one", None)
    data, version = r.get_versioned("refs.json")
    assert data == b"one" and version is not None
    assert version.strip('"') != hashlib.md5(b"one").hexdigest()  # the proxy hid the MD5
    _compare_and_swap(r)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"other", None)  # If-None-Match: * on an existing key


def test_aws_keys_never_reach_the_ledger(s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/secret"
    lg = new_ledger(tmp_path / "a")
    lg.commit(state(model()), step=1)
    lg.remote_add("origin", url)
    lg.push()
    lg.commit(state(model()), step=2)  # metadata captured with the keys in the environment
    lg.push()
    Ledger.clone(url, tmp_path / "b").close()
    assert secrets_in(tmp_path, AWS_KEY_ID, AWS_SECRET) == []
