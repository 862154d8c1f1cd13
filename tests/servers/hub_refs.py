"""The fake Hub's branches, tags, visibility and ``whoami`` (mixed into tests/servers/hub.py).

A test fixture, not product code. The routes (``{id}`` is ``user/repo``):

    POST   /api/models/{id}/branch/{name}    create (``startingPoint``: a rev, default main; 409 if it exists)
    DELETE /api/models/{id}/branch/{name}    delete (main cannot be deleted)
    POST   /api/models/{id}/tag/{rev}        tag ``rev`` (``{"tag": ...}``; 409 if the tag exists: tags never move)
    GET    /api/models/{id}/refs             {"branches", "tags", "converts"}
    GET    /api/models/{id}/commits/{rev}    the commits reachable from rev, newest first
    PUT    /api/models/{id}/settings         ``{"visibility": "private"|"public"}`` (or ``{"private": bool}``)
    GET    /api/whoami-v2                    the token's user (401 without a valid token)
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import unquote

USER = "user"
ORGS = ["org"]


class HubError(Exception):
    """An answer the fake Hub gives instead of serving: status, ``X-Error-Code``, message."""

    def __init__(self, status: int, code: str | None = None, message: str = "") -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


_ROUTE = re.compile(r"^/api/models/([^/]+/[^/]+)/(branch|tag|refs|commits|settings)(?:/([^/]+))?$")


class RefRoutes:
    """Route handlers over the Handler's ``hub``, ``_repo``, ``_files``, ``_auth``, ``_role``, ``_body``, ``_json``."""

    hub: Any
    command: str
    _repo: Any
    _files: Any
    _auth: Any
    _role: Any
    _body: Any
    _json: Any

    def _ref_route(self, path: str) -> bool:
        """Serve ``path`` if it is one of this module's routes; whether it was."""
        if path == "/api/whoami-v2" and self.command == "GET":
            self._whoami()
            return True
        m = _ROUTE.match(path)
        if m is None:
            return False
        repo_id, verb, arg = m.group(1), m.group(2), unquote(m.group(3) or "")
        handler = {
            ("POST", "branch"): self._create_branch,
            ("DELETE", "branch"): self._delete_branch,
            ("POST", "tag"): self._create_tag,
            ("GET", "refs"): lambda r, _: self._refs(r),
            ("GET", "commits"): self._commits,
            ("PUT", "settings"): lambda r, _: self._settings(r),
        }.get((self.command, verb))
        if handler is None:
            return False
        handler(repo_id, arg)
        return True

    def _whoami(self) -> None:
        role = self._role()
        if role is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": o, "roleInOrg": "write"} for o in ORGS]
        token = {"displayName": "ledger-tests", "role": role}
        auth = {"type": "access_token", "accessToken": token}
        self._json(
            200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": orgs, "auth": auth}
        )

    def _create_branch(self, repo_id: str, name: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        body = self._body()
        start = (json.loads(body) if body else {}).get("startingPoint") or "main"
        with self.hub.lock:
            if name in repo.branches:
                raise HubError(409, None, f"Reference already exists: refs/heads/{name}")
            sha, _ = self._files(repo, start)
            repo.branches[name] = sha
        self._json(200, {})

    def _delete_branch(self, repo_id: str, name: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        with self.hub.lock:
            if name not in repo.branches:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {name}")
            if name == "main":
                raise HubError(403, None, "You cannot delete the default branch")
            del repo.branches[name]
        self._json(200, {})

    def _create_tag(self, repo_id: str, rev: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        doc = json.loads(self._body())
        with self.hub.lock:
            sha, _ = self._files(repo, rev)
            if doc["tag"] in repo.tags:
                raise HubError(409, None, f"Reference already exists: refs/tags/{doc['tag']}")
            repo.tags[doc["tag"]] = sha
        self._json(200, {})

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)

        def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
            return [
                {"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c}
                for n, c in sorted(names.items())
            ]

        self._json(
            200,
            {
                "branches": refs("heads", repo.branches),
                "tags": refs("tags", repo.tags),
                "converts": [],
            },
        )

    def _commits(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        sha, _ = self._files(repo, rev or "main")
        out = []
        while sha is not None:
            title, _, message = repo.messages[sha].partition("\n")
            out.append(
                {
                    "id": sha,
                    "title": title,
                    "message": message,
                    "authors": [{"user": USER}],
                    "date": "2026-01-01T00:00:00.000Z",
                }
            )
            sha = repo.parents.get(sha)
        self._json(200, out)

    def _settings(self, repo_id: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        doc = json.loads(self._body())
        if "visibility" in doc:
            repo.private = doc["visibility"] == "private"
        elif "private" in doc:
            repo.private = bool(doc["private"])
        self._json(200, {})
