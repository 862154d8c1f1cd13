"""A webhook receiver on 127.0.0.1 that checks payloads as Slack, Discord and our schema define them.

``POST /slack/...``, ``/discord/...`` and ``/json/...`` are validated against
the shape each service documents (Slack: a non-empty ``text``, optional
``blocks`` whose ``section`` text is mrkdwn or plain_text of at most 3000
characters; Discord: ``content`` of at most 2000 characters and/or
``embeds`` within the embed limits; ours: ``training-ledger.notification/1``).
A valid body is recorded in ``received`` (kind, body) and answered as the
service does (Slack ``200 ok``, Discord ``204``); an invalid one is answered
400 and recorded in ``invalid``. ``fail(n, status)`` answers the next ``n``
requests with ``status``; ``hold()`` keeps requests waiting until
``release()`` (a slow endpoint, without asserting a time).

Example:
    >>> with WebhookServer() as hooks:  # doctest: +SKIP
    ...     lg.notify_add("s", hooks.url("slack"), on=["commit"])
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

SCHEMA_KEYS = {
    "schema",
    "event",
    "ledger",
    "time",
    "branch",
    "commit",
    "step",
    "epoch",
    "metrics",
    "message",
    "detail",
    "text",
}


def check_slack(body: dict[str, Any]) -> str | None:
    """Why ``body`` is not a Slack incoming-webhook message (None: it is)."""
    if not isinstance(body.get("text"), str) or not body["text"]:
        return "text must be a non-empty string"
    for block in body.get("blocks", []):
        if block.get("type") != "section":
            return f"unexpected block type {block.get('type')!r}"
        text = block.get("text", {})
        if text.get("type") not in ("mrkdwn", "plain_text"):
            return "section text type must be mrkdwn or plain_text"
        if not 1 <= len(text.get("text", "")) <= 3000:
            return "section text must be 1..3000 characters"
    if len(body.get("blocks", [])) > 50:
        return "at most 50 blocks"
    return None


def check_discord(body: dict[str, Any]) -> str | None:
    """Why ``body`` is not a Discord webhook message (None: it is)."""
    content, embeds = body.get("content"), body.get("embeds", [])
    if not content and not embeds:
        return "content or embeds required"
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        return "content must be a string of at most 2000 characters"
    if len(embeds) > 10:
        return "at most 10 embeds"
    for e in embeds:
        fields = e.get("fields", [])
        total = len(e.get("title", "")) + len(e.get("description", ""))
        total += sum(len(f["name"]) + len(f["value"]) for f in fields)
        if len(e.get("title", "")) > 256 or len(e.get("description", "")) > 4096:
            return "embed title <= 256, description <= 4096"
        if len(fields) > 25 or any(
            not f["name"] or not f["value"] or len(f["name"]) > 256 or len(f["value"]) > 1024
            for f in fields
        ):
            return "embed fields: at most 25, name 1..256, value 1..1024"
        if total > 6000:
            return "embed total over 6000 characters"
        if not isinstance(e.get("color", 0), int):
            return "color must be an integer"
    return None


def check_json(body: dict[str, Any]) -> str | None:
    """Why ``body`` is not a ``training-ledger.notification/1`` document (None: it is)."""
    if set(body) != SCHEMA_KEYS:
        return f"keys {sorted(set(body) ^ SCHEMA_KEYS)} differ from the schema"
    if body["schema"] != "training-ledger.notification/1":
        return "wrong schema"
    if not isinstance(body["metrics"], dict) or not isinstance(body["detail"], dict):
        return "metrics and detail must be objects"
    if body["step"] is not None and not isinstance(body["step"], int):
        return "step must be an integer or null"
    return None


CHECKS = {"slack": check_slack, "discord": check_discord, "json": check_json}


class WebhookServer:
    """The receiver (see the module doc); a context manager that starts and stops it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.invalid: list[tuple[str, str]] = []
        self.requests = 0
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self._faults: list[int] = []
        self._open = threading.Event()
        self._open.set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                server._open.wait()
                kind = self.path.strip("/").split("/", 1)[0]
                with server.lock:
                    server.requests += 1
                    status = server._faults.pop(0) if server._faults else 0
                    server.arrived.notify_all()
                if status:
                    self._answer(status, b"failing on purpose")
                    return
                try:
                    body = json.loads(raw)
                    why = CHECKS[kind](body) if kind in CHECKS else f"unknown kind {kind!r}"
                except (ValueError, KeyError, TypeError) as e:
                    why = f"not a valid body: {e}"
                with server.lock:
                    if why:
                        server.invalid.append((kind, why))
                    else:
                        server.received.append((kind, body))
                    server.arrived.notify_all()
                if why:
                    self._answer(400, why.encode())
                elif kind == "discord":
                    self._answer(204, b"")
                else:
                    self._answer(200, b"ok")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, kind: str, secret: str = "T000/B000/s3cr3t") -> str:
        """A webhook URL of ``kind`` on this server; ``secret`` makes it recognisable."""
        return f"http://127.0.0.1:{self.port}/{kind}/{secret}"

    def fail(self, n: int, status: int = 503) -> None:
        """Answer the next ``n`` requests with ``status``."""
        with self.lock:
            self._faults += [status] * n

    def hold(self) -> None:
        """Keep every request waiting (a slow endpoint) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        """Let held requests through."""
        self._open.set()

    def wait_for(self, n: int, timeout: float = 30.0) -> list[tuple[str, dict[str, Any]]]:
        """Wait until ``n`` valid payloads arrived (or fail with what did); return them all."""
        with self.lock:
            ok = self.arrived.wait_for(lambda: len(self.received) >= n, timeout)
            assert ok, f"{len(self.received)} of {n} payloads arrived; invalid: {self.invalid}"
            return list(self.received)

    def __enter__(self) -> WebhookServer:
        self.thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
