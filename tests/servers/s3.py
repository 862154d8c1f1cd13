"""moto's S3 server in a thread, reached through the real s3fs client (a test fixture).

moto 5.2 implements conditional PutObject (``If-None-Match: *``, ``If-Match``),
so the S3 backend's compare-and-swap is exercised for real.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

AWS_KEY_ID = "AKIATESTLEDGERKEY01"
AWS_SECRET = "tEsT/sEcReT+ledger0123456789abcdefghij"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One moto S3 server for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the AWS client settings point at the local server."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"ledger-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket
