"""A small Hugging Face Hub server for tests: the endpoints huggingface_hub 2.x calls for our use.

A test fixture, not product code. :class:`FakeHub` serves the Hub's HTTP
protocol (tests/servers/hub_http.py: repos, commits, LFS, downloads;
tests/servers/hub_refs.py: branches, tags, visibility, ``whoami``) on
127.0.0.1 to the real ``huggingface_hub`` client; :func:`serve_hub` points the
client (and ``transformers.from_pretrained``) at it, and :func:`hub_fixture`
makes the pytest fixture that runs each test once per upload path. Run as a
script (``python tests/servers/hub.py PORT TOKEN``) it serves until killed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

if not __package__:  # run as a script (benchmarks/push.py): make the `servers` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from servers.hub_http import Blob, Handler, HubState


class _Server(ThreadingHTTPServer):
    """An HTTP server that can close its clients' kept-alive connections when it stops."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address, Handler)
        self.open: set[socket.socket] = set()
        self.stopping = False

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        self.open.add(sock)
        return sock, addr

    def shutdown_request(self, request: Any) -> None:
        self.open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection stop() cut is not an error, nor a client that hung up mid-answer (a
        # bounded read stops reading once it has what it asked for, as the Hub's clients may).
        if not self.stopping and not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeHub:
    """A running fake Hub: ``endpoint``, ``state``; ``stop()`` ends it.

    Example:
        >>> hub = FakeHub(token="hf_test")  # doctest: +SKIP
        >>> hub.endpoint  # doctest: +SKIP
        'http://127.0.0.1:41234'
    """

    def __init__(
        self,
        token: str,
        lfs_threshold: int | None = None,
        port: int = 0,
        state: HubState | None = None,
    ) -> None:
        self.state = state or HubState(token, lfs_threshold)
        self.server = _Server(("127.0.0.1", port))
        self.server.hub = self.state  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close every connection (a killed server).

        Kept-alive connections are closed too: a client's pooled connection must
        not reach this server's state after a new server took its port.
        """
        self.server.stopping = True
        self.server.shutdown()
        for sock in list(self.server.open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.server.server_close()

    def restart(self) -> FakeHub:
        """A new server on the same port with the same repos (the service came back)."""
        return FakeHub(self.state.token, port=self.port, state=self.state)

    def file(self, repo_id: str, path: str, rev: str = "main") -> bytes:
        """A file at the tip of branch ``rev`` (or at tag ``rev``)."""
        repo = self.state.repos[repo_id]
        return repo.commits[repo.branches.get(rev) or repo.tags[rev]][path].data

    def tip_added(self, repo_id: str, branch: str = "main") -> list[str]:
        """The paths the last commit on ``branch`` uploaded (unchanged files are not sent)."""
        repo = self.state.repos[repo_id]
        return repo.added[repo.branches[branch]]

    def set_file(self, repo_id: str, path: str, data: bytes) -> None:
        """Overwrite a file in place at the tip (tampering, as a compromised store would)."""
        repo = self.state.repos[repo_id]
        files = repo.commits[repo.branches["main"]]
        files[path] = Blob(data, lfs=files[path].lfs)


TOKEN = "hf_ledgerTestToken0123456789abcdef"


def hub_fixture() -> Any:
    """A pytest fixture: a fake Hub for one test, once per upload path the client takes,
    ``regular`` (bytes inline in the NDJSON commit) and ``lfs`` (every file through the LFS
    batch API). A test module binds it: ``hub = hub_fixture()``.
    """

    @pytest.fixture(params=["regular", "lfs"])
    def hub(
        request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> Iterator[FakeHub]:
        threshold = 1 if request.param == "lfs" else None
        server = serve_hub(monkeypatch, tmp_path, lfs_threshold=threshold)
        yield server
        server.stop()

    return hub


def serve_hub(monkeypatch: Any, tmp_path: Any, lfs_threshold: int | None = None) -> FakeHub:
    """A fake Hub with the real client pointed at it (endpoint, token, private cache, Xet off);
    stop() it."""
    import huggingface_hub.constants

    server = FakeHub(TOKEN, lfs_threshold=lfs_threshold)
    monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
    # The client reads these once at import; from_pretrained and HfApi() use them.
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.endpoint)
    template = server.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    # Tests of offline code (the Trainer's, the importers') set HF_HUB_OFFLINE=1 in this process;
    # whichever imported huggingface_hub first fixed it. The fake Hub is online, always.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return server


if (
    __name__ == "__main__"
):  # a standalone server for benchmarks: python tests/servers/hub.py PORT TOKEN
    import sys
    import time

    hub = FakeHub(sys.argv[2], lfs_threshold=1, port=int(sys.argv[1]))
    print(hub.endpoint, flush=True)
    while True:
        time.sleep(3600)
