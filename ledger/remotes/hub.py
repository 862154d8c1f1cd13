"""A remote in a Hugging Face Hub model repo (``hf://user/repo``).

This module owns the Hub backend. Keys live under ``ledger/`` in the repo's
``main`` branch. Reads go to ``/{repo}/resolve/{commit}/{path}`` (with
``Range`` for partial reads), pinned to the commit that ``get_versioned`` saw,
so one operation reads one consistent snapshot. Writes (``put``, ``delete``,
and extra files such as the model card) are staged and land together in the
next ``put_if`` as **one Hub commit** created with ``parent_commit=`` the
version read: a stale parent is refused by the Hub, which is our
compare-and-swap. Large files travel by whatever the client picks (LFS or
Xet); nothing here is Xet-specific.

A repo the first push creates is **private** unless the caller asked for a
public one (:func:`creating_public`, which ``Ledger.push(public=True)`` sets);
an existing repo keeps its visibility: nothing here ever changes it.

The server is ``$HF_ENDPOINT`` (or the client's default) and the token comes
from the client's usual sources (``HF_TOKEN``, the saved login), or, when the
remote names one, from the tokens the client stores by name
(:mod:`ledger.remotes.hub_auth`); before a write the token is checked with
``whoami``. This module must never store, log or pass on a token itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ledger.errors import RemoteConflictError, RemoteError, RemoteURLError
from ledger.remotes.base import Answer, Remote, Version, check_key, take_capped

PREFIX = "ledger/"
#: The longest model card (``README.md``) read back from a repo.
MAX_CARD_BYTES = 16 << 20

_PUBLIC: contextvars.ContextVar[bool] = contextvars.ContextVar("ledger_hub_public", default=False)


@contextlib.contextmanager
def creating_public(public: bool) -> Iterator[None]:
    """Within the block, a Hub repo a push creates is public when ``public`` (else private).

    Example:
        >>> with creating_public(True):  # doctest: +SKIP
        ...     push(lg, "origin")
    """
    token = _PUBLIC.set(public)
    try:
        yield
    finally:
        _PUBLIC.reset(token)


class HubRemote(Remote):
    """Keys under ``ledger/`` in the Hub model repo ``repo_id`` (writes staged per commit).

    Example:
        >>> r = HubRemote("hf://me/bert-run")  # doctest: +SKIP
        >>> r.get_versioned("refs.json")  # doctest: +SKIP
        (None, None)
    """

    stages_writes = True

    def __init__(
        self, url: str, endpoint: str | None = None, token_name: str | None = None
    ) -> None:
        from huggingface_hub import HfApi, constants

        from ledger.remotes.hub_auth import stored_token

        super().__init__(url)
        repo_id = url.split("://", 1)[1].strip("/")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise RemoteURLError(f"{url!r}: a Hub remote is hf://<user or org>/<repo>")
        self.repo_id = repo_id
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip(
            "/"
        )
        # None: the client's default token; a name: that stored token, never kept elsewhere
        self._token = stored_token(token_name, url) if token_name is not None else None
        self.api = HfApi(endpoint=self.endpoint, token=self._token)
        self.revision = "main"
        self.sha: str | None = None
        self._staged: list[Any] = []
        self.network_errors = (_http_library().TransportError,)

    # -- reading -----------------------------------------------------------------

    def _url(self, path: str) -> str:
        from huggingface_hub import hf_hub_url

        return hf_hub_url(
            self.repo_id, path, revision=self.sha or self.revision, endpoint=self.endpoint
        )

    def _download(
        self, key: str, byte_range: tuple[int, int] | None = None, limit: int | None = None
    ) -> bytes:
        from huggingface_hub.utils import build_hf_headers

        headers = build_hf_headers(token=self._token)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[0] + byte_range[1] - 1}"
            limit = byte_range[1]  # a server that ignores the range is not read past it
        got = read_capped(self._url(PREFIX + check_key(key)), headers, key, self.url, limit)
        if got is None:
            raise FileNotFoundError(f"{key} is not in {self.url}")
        status, data = got
        if byte_range is not None and (status != 206 or len(data) != byte_range[1]):
            raise RemoteError(f"{self.url} answered a range read of {key} with the wrong bytes")
        return data

    def get(self, key: str, limit: int | None = None) -> bytes:
        return self._download(key, limit=limit)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._download(key, (start, length))

    def head_commit(self) -> str | None:
        """The commit at the tip of ``main`` (None: no such repo)."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        try:
            return self.api.repo_info(self.repo_id, revision=self.revision).sha
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None

    def read_card(self) -> str | None:
        """The model card (``README.md`` at the repo root) on ``main``, or None without one."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers

        where = hf_hub_url(
            self.repo_id, "README.md", revision=self.sha or self.revision, endpoint=self.endpoint
        )
        headers = build_hf_headers(token=self._token)
        got = read_capped(where, headers, "README.md", self.url, MAX_CARD_BYTES)
        return None if got is None else got[1].decode("utf-8", errors="replace")

    def check_write_access(self) -> None:
        """Refuse early (``whoami``) a missing, invalid or read-only token."""
        from ledger.remotes.hub_auth import check_write_token

        check_write_token(self.api, self._token, self.repo_id, self.url)

    def get_versioned(self, key: str, limit: int | None = None) -> tuple[bytes | None, Version]:
        self.sha = self.head_commit()
        if self.sha is None:
            return None, None
        try:
            return self.get(key, limit), self.sha
        except FileNotFoundError:
            return None, self.sha

    def exists(self, key: str) -> bool:
        return bool(
            self.api.file_exists(
                self.repo_id, PREFIX + check_key(key), revision=self.sha or self.revision
            )
        )

    def list(self, prefix: str) -> list[str]:
        from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

        try:
            entries = self.api.list_repo_tree(
                self.repo_id,
                path_in_repo=(PREFIX + prefix).rstrip("/"),
                recursive=True,
                revision=self.sha or self.revision,
            )
            paths = [e.path for e in entries if getattr(e, "size", None) is not None]
        except (EntryNotFoundError, RemoteEntryNotFoundError):
            return []
        return sorted(p[len(PREFIX) :] for p in paths if p.startswith(PREFIX))

    # -- writing (staged into one Hub commit) ---------------------------------------

    def put(self, key: str, data: bytes | Path) -> None:
        self.stage(PREFIX + check_key(key), data)

    def stage(self, path_in_repo: str, data: bytes | Path) -> None:
        """Add a file (anywhere in the repo) to the next commit."""
        from huggingface_hub import CommitOperationAdd

        source: str | bytes = str(data) if isinstance(data, Path) else data
        self._staged.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=source))

    def delete(self, key: str) -> None:
        from huggingface_hub import CommitOperationDelete

        self._staged.append(CommitOperationDelete(path_in_repo=PREFIX + check_key(key)))

    def put_if(self, key: str, data: bytes, expected: Version, message: str = "") -> None:
        from huggingface_hub import CommitOperationAdd
        from huggingface_hub.errors import HfHubHTTPError

        parent = expected
        if parent is None:
            # Private unless asked; exist_ok keeps an existing repo's visibility as it is.
            self.api.create_repo(self.repo_id, private=not _PUBLIC.get(), exist_ok=True)
            parent = self.head_commit()
            if parent is None or self.api.file_exists(self.repo_id, PREFIX + key, revision=parent):
                raise _conflict(key, self.url)
        ops = [*self._staged, CommitOperationAdd(PREFIX + check_key(key), data)]
        summary, _, description = (message or f"ledger: update {key}").partition("\n")
        from huggingface_hub.utils import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )

        quiet_before = are_progress_bars_disabled()
        disable_progress_bars()  # the ledger shows its own progress
        try:
            info = self.api.create_commit(
                self.repo_id,
                ops,
                commit_message=summary,
                commit_description=description.strip() or None,
                parent_commit=parent,
                revision=self.revision,
            )
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status in (409, 412):
                raise _conflict(key, self.url) from None
            raise
        finally:
            if not quiet_before:
                enable_progress_bars()
        self.sha = info.oid
        self._staged = []

    def answer_of(self, exc: BaseException) -> Answer | None:
        from huggingface_hub.errors import HfHubHTTPError

        if isinstance(exc, HfHubHTTPError) and exc.response is not None:
            return exc.response.status_code, exc.response.headers
        return None


def read_capped(
    url: str,
    headers: dict[str, str],
    key: str,
    remote: str,
    limit: int | None,
) -> tuple[int, bytes] | None:
    """GET ``url``: (status, body), or None for 404; a body over ``limit`` is refused unread.

    The body is streamed: refused from its ``Content-Length``, or as soon as
    more than ``limit`` bytes arrived (``too_large`` via ``take_capped``).

    Example:
        >>> read_capped(hub._url("ledger/refs.json"), {}, "refs.json", hub.url, 1 << 20)  # doctest: +SKIP
        (200, b'{...}')
    """
    from huggingface_hub.utils import get_session, hf_raise_for_status

    with get_session().stream("GET", url, headers=headers) as response:
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            response.read()  # an error page, for the message
            hf_raise_for_status(response)
        if limit is None:
            return response.status_code, bytes(response.read())
        declared = response.headers.get("Content-Length") or ""
        size = int(declared) if declared.isdigit() else None
        return response.status_code, take_capped(response.iter_bytes(), limit, key, remote, size)


def _http_library() -> Any:
    """The HTTP library huggingface_hub speaks through (httpx, or its fork httpx2)."""
    try:
        import httpx2

        return httpx2
    except ImportError:
        import httpx

        return httpx


def _conflict(key: str, url: str) -> RemoteConflictError:
    return RemoteConflictError(
        f"{key} on remote {url} changed since it was read (the Hub refused the stale parent "
        "commit); fetch first",
        ref=key,
        url=url,
    )
