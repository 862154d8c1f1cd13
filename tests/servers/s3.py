"""moto's S3 server in a thread, reached through the real s3fs client (a test fixture).

moto 5.2 implements conditional PutObject (``If-None-Match: *``, ``If-Match``),
so the S3 backend's compare-and-swap is exercised for real.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

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


#: The S3 error code answered with each injected status.
_ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 429: "SlowDown", 503: "SlowDown"}


class S3Proxy:
    """A thin HTTP proxy in front of moto that answers opaque ETags and injects faults.

    SSE-KMS buckets answer ETags that are not the MD5 of the body; moto always
    answers MD5s. The proxy replaces every ETag it forwards (headers and XML
    bodies) by an opaque token of the same shape and maps ``If-Match`` back,
    so a client that computes or checks MD5s fails here as it would on such a
    bucket. ``fail(n, status, retry_after)`` answers the next ``n`` requests
    with ``status`` (an S3 XML error, with ``Retry-After`` when given);
    ``served`` counts the requests that reached it, ``log`` lists each as
    (method, path, Range header), ``signed_by`` the access key id each was signed with, and ``on_request`` (when set) is called with
    each (method, path) before it is forwarded.

    Example:
        >>> proxy = S3Proxy("http://127.0.0.1:5000")  # doctest: +SKIP
        >>> proxy.fail(1, 503, retry_after=1)  # doctest: +SKIP
    """

    def __init__(self, upstream: str) -> None:
        import hashlib
        import http.client
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.upstream = urlsplit(upstream)
        self.lock = threading.Lock()
        self.opaque: dict[str, str] = {}  # opaque ETag -> moto's
        self.served = 0
        self.log: list[tuple[str, str, str | None]] = []
        self.signed_by: list[str] = []  # the access key id of each signed request
        self.on_request: Callable[[str, str], None] | None = None
        self.faults: list[tuple[int, float | None]] = []
        proxy = self
        etag_xml = re.compile(rb"<ETag>(.*?)</ETag>")

        def hide(real: str) -> str:
            token = '"' + hashlib.sha256(b"kms" + real.encode()).hexdigest()[:32] + '"'
            with proxy.lock:
                proxy.opaque[token] = real
            return token

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.served += 1
                    proxy.log.append((self.command, self.path, self.headers.get("Range")))
                    signed = re.search(
                        r"Credential=([A-Z0-9]+)/", self.headers.get("Authorization", "")
                    )
                    if signed:
                        proxy.signed_by.append(signed.group(1))
                if proxy.on_request is not None:
                    proxy.on_request(self.command, self.path)
                with proxy.lock:
                    fault = proxy.faults.pop() if proxy.faults else None
                if fault is not None:
                    status, after = fault
                    code = _ERROR_CODES.get(status, "InternalError")
                    doc = f"<Error><Code>{code}</Code><Message>injected {status}</Message></Error>"
                    data = doc.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    if after is not None:
                        self.send_header("Retry-After", str(after))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() not in ("expect", "if-match")
                }
                if self.headers.get("If-Match"):
                    given = self.headers["If-Match"]
                    headers["If-Match"] = proxy.opaque.get(given, given)
                conn = http.client.HTTPConnection(
                    proxy.upstream.hostname, proxy.upstream.port, timeout=30
                )
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                conn.close()
                data = etag_xml.sub(
                    lambda m: (
                        b"<ETag>"
                        + hide(m.group(1).decode().replace("&quot;", '"')).encode()
                        + b"</ETag>"
                    ),
                    data,
                )
                self.send_response(response.status)
                for k, v in response.getheaders():
                    if k.lower() in ("transfer-encoding", "connection", "content-length"):
                        continue
                    self.send_header(k, hide(v) if k.lower() == "etag" else v)
                if self.command == "HEAD":
                    self.send_header("Content-Length", response.getheader("Content-Length", "0"))
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def fail(self, n: int, status: int, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After``)."""
        with self.lock:
            self.faults = [(status, retry_after)] * n

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def s3_proxy(
    s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[S3Proxy]:
    """``s3_bucket`` reached through an :class:`S3Proxy` (opaque ETags, injectable faults)."""
    proxy = S3Proxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    yield proxy
    proxy.stop()
