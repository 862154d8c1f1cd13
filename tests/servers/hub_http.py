"""The fake Hub's protocol: its state (repos, commits, LFS objects) and the request handler.

A test fixture, not product code (the server around it is tests/servers/hub.py).
It speaks the Hub's HTTP protocol on 127.0.0.1 to the real ``huggingface_hub``
client, keeps repos in memory as chains of commits, and refuses what the Hub refuses: an unknown repo
(``X-Error-Code: RepoNotFound``), an unknown revision (``RevisionNotFound``)
or file (``EntryNotFound``), a missing or wrong token (401), and a commit whose
``parentCommit`` is no longer the branch tip (412).

Endpoints (``{id}`` is ``user/repo``, ``{rev}`` a branch or a 40-hex commit):

    POST /api/repos/create                      create (409 + {"url"} if it exists)
    GET  /api/models/{id}[/revision/{rev}]      repo info: id, sha, siblings
    GET  /api/models/{id}/tree/{rev}[/{path}]   file listing (?recursive=true)
    POST /api/models/{id}/paths-info/{rev}      info on given paths
    POST /api/models/{id}/preupload/{rev}       upload mode per file: "regular" or "lfs"
    POST /api/models/{id}/commit/{rev}          NDJSON commit (header, file, lfsFile, deletedFile)
    POST /{id}.git/info/lfs/objects/batch       LFS batch: upload actions for absent objects
    PUT  /lfs-upload/{sha256}                   LFS basic transfer (checked against the oid)
    HEAD/GET /{id}/resolve/{rev}/{path}         download, with X-Repo-Commit, ETag, size, Range -> 206
    POST /api/validate-yaml                     model card metadata check (always valid)

Branches, tags, visibility and ``whoami`` are tests/servers/hub_refs.py's. A
private repo answers 401 ``RepoNotFound`` to a request without the token, as
the Hub does; commits go onto branches only, never onto a tag or a commit id.

Faults for tests: ``fail(n, status, retry_after)`` answers the next n requests
with ``status`` (and a ``Retry-After`` header when given); ``drop(n)`` closes the next n connections without an answer;
``on_request(method, path)`` runs before each request is served; when it
returns False the connection is closed unanswered (a server killed mid-request).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from servers.hub_refs import HubError, RefRoutes

ZERO = "0" * 40


@dataclass
class Blob:
    """A file in a commit: its bytes, and its LFS oid when uploaded through LFS."""

    data: bytes
    lfs: str | None = None

    @property
    def oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class Repo:
    """A repo: commits (sha -> files), branches, tags (never moved) and its visibility.

    ``parents`` maps each commit to its parent (None for the first), ``added`` to the
    paths its commit request uploaded (what a test counts as uploads).
    """

    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    parents: dict[str, str | None] = field(default_factory=dict)
    added: dict[str, list[str]] = field(default_factory=dict)
    private: bool = False


class HubState:
    """Everything the fake Hub stores, and its fault switches."""

    def __init__(self, token: str, lfs_threshold: int | None) -> None:
        self.token = token
        #: further tokens the Hub knows: token -> role (``"read"`` or ``"write"``), all of USER
        self.tokens: dict[str, str] = {}
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.uploaded_bytes = 0
        self.served_bytes = 0
        self._fail: list[tuple[int, float | None]] = []
        self._drop = 0
        self.on_request: Callable[[str, str], bool] | None = None

    def fail(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``n`` requests with ``status`` (and ``Retry-After`` when given)."""
        self._fail = [(status, retry_after)] * n

    def drop(self, n: int) -> None:
        """Close the next ``n`` connections without answering."""
        self._drop = n

    def new_commit(
        self,
        repo: Repo,
        files: dict[str, Blob],
        message: str,
        branch: str = "main",
        added: list[str] | None = None,
    ) -> str:
        """Add a commit on top of ``branch`` (created when new) and move the branch to it."""
        parent = repo.branches.get(branch)
        sha = hashlib.sha1(
            f"{parent}{message}{sorted(files)}{len(repo.commits)}".encode()
        ).hexdigest()
        repo.commits[sha] = files
        repo.messages[sha] = message
        repo.parents[sha] = parent
        repo.added[sha] = list(added or [])
        repo.branches[branch] = sha
        return sha


class Handler(RefRoutes, BaseHTTPRequestHandler):
    """One request against :class:`HubState` (``self.server.hub``)."""

    protocol_version = "HTTP/1.1"
    hub: HubState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- plumbing -------------------------------------------------------------

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        self._send(
            status,
            json.dumps(doc).encode(),
            {"Content-Type": "application/json", **(headers or {})},
        )

    def _role(self) -> str | None:
        """The role of the request's token: None without one; 401 for a token the Hub lacks."""
        given = self.headers.get("Authorization")
        if given is None:
            return None
        token = given.removeprefix("Bearer ")
        role = "write" if token == self.hub.token else self.hub.tokens.get(token)
        if role is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return role

    def _auth(self, write: bool) -> None:
        role = self._role()
        if write and role is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        if write and role == "read":
            raise HubError(403, None, "You don't have the rights to write with a read token")

    def _dispatch(self) -> None:
        hub = self.server.hub  # type: ignore[attr-defined]
        self.hub = hub
        path = urlsplit(self.path).path
        with hub.lock:
            hub.requests.append((self.command, path))
            if hub._drop:
                hub._drop -= 1
                self._body()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            fault = hub._fail.pop() if hub._fail else None
        if hub.on_request is not None and not hub.on_request(self.command, path):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault is not None:
            status, after = fault
            self._body()
            extra = {"Retry-After": str(after)} if after is not None else None
            self._json(status, {"error": "injected fault"}, extra)
            return
        try:
            self._route(path)
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json(e.status, {"error": e.message}, headers)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _dispatch

    # -- routes ---------------------------------------------------------------

    def _route(self, path: str) -> None:
        m = self.command, path
        if m == ("POST", "/api/repos/create"):
            return self._create()
        if m == ("POST", "/api/validate-yaml"):
            self._body()
            return self._json(200, {"errors": [], "warnings": []})
        if self.command == "PUT" and path.startswith("/lfs-upload/"):
            return self._lfs_put(path.rsplit("/", 1)[1])
        if self._ref_route(path):
            return None
        api = re.match(
            r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree|paths-info|preupload|commit)/([^/]+)(/.*)?)?$",
            path,
        )
        if api:
            repo_id, verb, rev, rest = api.groups()
            rev = unquote(rev) if rev else "main"
            if verb in (None, "revision") and self.command == "GET":
                return self._info(repo_id, rev)
            if verb == "tree" and self.command == "GET":
                return self._tree(repo_id, rev, unquote(rest or "").strip("/"))
            if verb == "paths-info" and self.command == "POST":
                return self._paths_info(repo_id, rev)
            if verb == "preupload" and self.command == "POST":
                return self._preupload(repo_id, rev)
            if verb == "commit" and self.command == "POST":
                return self._commit(repo_id, rev)
        batch = re.match(r"^/([^/]+/[^/]+)\.git/info/lfs/objects/batch$", path)
        if batch and self.command == "POST":
            return self._lfs_batch(batch.group(1))
        res = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if res and self.command in ("GET", "HEAD"):
            return self._resolve(res.group(1), unquote(res.group(2)), unquote(res.group(3)))
        raise HubError(404, None, f"no route for {self.command} {path}")

    def _repo(self, repo_id: str) -> Repo:
        """The repo; a private one is "not found" (401, as the Hub answers) without the token."""
        self._auth(write=False)
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        if repo.private and self.headers.get("Authorization") is None:
            raise HubError(401, "RepoNotFound", "Repository not found")
        return repo

    def _files(self, repo: Repo, rev: str) -> tuple[str, dict[str, Blob]]:
        sha = repo.branches.get(rev) or repo.tags.get(rev) or rev
        if sha not in repo.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha, repo.commits[sha]

    def _create(self) -> None:
        self._auth(write=True)
        doc = json.loads(self._body())
        repo_id = f"{doc.get('organization') or 'user'}/{doc['name']}"
        url = f"http://{self.headers['Host']}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            # The Hub's default is public; the client sends "visibility" (older ones "private").
            private = doc.get("visibility") == "private" or doc.get("private") is True
            repo = Repo(private=private)
            self.hub.repos[repo_id] = repo
            self.hub.new_commit(
                repo, {".gitattributes": Blob(b"*.bin filter=lfs\n")}, "initial commit"
            )
        self._json(200, {"url": url})

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        sha, files = self._files(repo, rev)
        siblings = [{"rfilename": p} for p in sorted(files)]
        doc = {"id": repo_id, "sha": sha, "siblings": siblings, "private": repo.private}
        self._json(200, doc)

    def _entry(self, path: str, blob: Blob) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "type": "file",
            "oid": blob.oid,
            "size": len(blob.data),
            "path": path,
        }
        if blob.lfs:
            doc["lfs"] = {"oid": blob.lfs, "size": len(blob.data), "pointerSize": 134}
        return doc

    def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
        repo = self._repo(repo_id)
        _, files = self._files(repo, rev)
        recursive = (
            parse_qs(urlsplit(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        )
        base = prefix + "/" if prefix else ""
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, blob in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = base + "/".join(parts[:i])
                if (recursive or i == 1) and d not in dirs:
                    dirs.add(d)
                    out.append({"type": "directory", "oid": ZERO, "path": d})
            if recursive or len(parts) == 1:
                out.append(self._entry(path, blob))
        if prefix and not out:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist")
        self._json(200, out)

    def _paths_info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        _, files = self._files(repo, rev)
        body = self._body()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        self._json(200, [self._entry(p, files[p]) for p in paths if p in files])

    def _preupload(self, repo_id: str, rev: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        doc = json.loads(self._body())
        tip, files = self._files(repo, rev)
        out = []
        for f in doc["files"]:
            lfs = self.hub.lfs_threshold is not None and f["size"] >= self.hub.lfs_threshold
            existing = files.get(f["path"])
            out.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": existing.oid if existing else None,
                }
            )
        self._json(200, {"files": out, "commitOid": tip})

    def _lfs_batch(self, repo_id: str) -> None:
        self._auth(write=True)
        self._repo(repo_id)
        doc = json.loads(self._body())
        host = self.headers["Host"]
        objects = []
        for obj in doc["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.hub.lfs:
                entry["actions"] = {
                    "upload": {"href": f"http://{host}/lfs-upload/{obj['oid']}", "header": {}}
                }
            objects.append(entry)
        self._send(
            200,
            json.dumps({"transfer": "basic", "objects": objects}).encode(),
            {"Content-Type": "application/vnd.git-lfs+json"},
        )

    def _lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, None, "uploaded bytes do not match the LFS oid")
        with self.hub.lock:
            self.hub.lfs[oid] = data
            self.hub.uploaded_bytes += len(data)
        self._send(200)

    def _commit(self, repo_id: str, rev: str) -> None:
        self._auth(write=True)
        repo = self._repo(repo_id)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = lines[0]["value"] if lines and lines[0]["key"] == "header" else {}
        with self.hub.lock:
            if rev not in repo.branches:  # the Hub commits onto branches only
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            sha, files = self._files(repo, rev)
            parent = header.get("parentCommit")
            if parent is not None and parent != sha:
                raise HubError(
                    412, None, "A commit has happened since. Please refresh and try again."
                )
            files = dict(files)
            added = [i["value"]["path"] for i in lines[1:] if i["key"] in ("file", "lfsFile")]
            for item in lines[1:]:
                key, value = item["key"], item["value"]
                if key == "file":
                    data = base64.b64decode(value["content"])
                    files[value["path"]] = Blob(data)
                    self.hub.uploaded_bytes += len(data)
                elif key == "lfsFile":
                    data = self.hub.lfs.get(value["oid"])
                    if data is None:
                        raise HubError(422, None, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = Blob(data, lfs=value["oid"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                elif key == "deletedFolder":
                    files = {
                        p: b
                        for p, b in files.items()
                        if not p.startswith(value["path"].rstrip("/") + "/")
                    }
            message = "\n".join(filter(None, [header.get("summary"), header.get("description")]))
            new = self.hub.new_commit(repo, files, message, rev, added)
        host = self.headers["Host"]
        self._json(
            200,
            {
                "commitUrl": f"http://{host}/{repo_id}/commit/{new}",
                "commitOid": new,
                "pullRequestUrl": None,
            },
        )

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        sha, files = self._files(repo, rev)
        blob = files.get(path)
        if blob is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist at {rev}")
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{blob.lfs or blob.oid}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.lfs}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        rng = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range") or "")
        if rng:
            start = int(rng.group(1))
            end = min(int(rng.group(2)) if rng.group(2) else len(blob.data) - 1, len(blob.data) - 1)
            if start >= len(blob.data):
                raise HubError(416, None, "range not satisfiable")
            headers["Content-Range"] = f"bytes {start}-{end}/{len(blob.data)}"
            self.hub.served_bytes += end + 1 - start if self.command == "GET" else 0
            return self._send(206, blob.data[start : end + 1], headers)
        self.hub.served_bytes += len(blob.data) if self.command == "GET" else 0
        self._send(200, blob.data, headers)
