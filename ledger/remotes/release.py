"""release: a commit as an ordinary Hub model repo commit that plain ``transformers`` loads.

This module owns ``ledger release REV --to hf://org/name`` (docs/remotes.md,
"Release"): the ``hf`` export of one commit (``save_pretrained`` layout,
:func:`ledger.remotes.card.write_hf`) plus a model card
(:func:`ledger.remotes.card.release_card`) become one Hub commit on a branch
(``revision``, default ``main``: created when missing, else moved forward with
``parent_commit=`` its tip as compare-and-swap), optionally tagged (tags never
move: an existing tag is refused before anything is uploaded). Only files
whose content differs from the branch's (sha256 against the LFS oid, or the
git blob id of a small file) are uploaded; files an earlier release wrote and
this one does not are deleted; nothing else on the branch is touched.

It creates a missing repo **private** unless ``public=True`` and never changes
the visibility of an existing repo. It refuses a branch where a ledger remote
keeps its ``ledger/`` files (a push there would fight the release over
``README.md``). Like the Hub remote, it never stores, logs or passes on a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ledger.errors import RefNameError, ReleaseConflictError, RemoteError, RemoteURLError
from ledger.interop.export import CommitReader
from ledger.remotes.card import release_card, released_files, write_hf
from ledger.remotes.hub import MAX_CARD_BYTES, PREFIX, _http_library, read_capped
from ledger.remotes.hub_auth import check_write_token, stored_token
from ledger.remotes.layout import REFS_KEY

CARD = "README.md"
_REF_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class ReleaseReader(CommitReader, Protocol):
    """What a release reads from a ledger (``ledger.Ledger`` is one)."""

    def resolve(self, rev: str) -> str:
        """The full commit id ``rev`` names."""
        ...

    def remotes(self) -> dict[str, str]:
        """Remote name -> URL."""
        ...


class ReleaseResult(msgspec.Struct):
    """What a release did on the Hub.

    ``hub_commit`` is the Hub commit the branch is at afterwards (the one
    ``from_pretrained(repo, revision=...)`` loads); ``uploaded`` the files sent,
    ``unchanged`` those already there with the same content, ``deleted`` the
    files an earlier release wrote that this one does not.
    """

    repo: str
    url: str
    commit: str
    revision: str
    hub_commit: str
    tag: str | None
    private: bool
    created_repo: bool
    created_branch: bool
    uploaded: list[str]
    unchanged: list[str]
    deleted: list[str]


def parse_hub_url(to: str) -> str:
    """The ``org/name`` of an ``hf://org/name`` URL.

    Raises:
        RemoteURLError: ``to`` is not ``hf://<user or org>/<name>``, or carries a credential.

    Example:
        >>> parse_hub_url("hf://org/model")
        'org/model'
    """
    body = to.split("://", 1)[1] if to.startswith("hf://") else None
    parts = body.strip("/").split("/") if body else []
    if len(parts) != 2 or not all(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", p) for p in parts):
        raise RemoteURLError(
            f"{to!r}: a release goes to a Hub model repo, hf://<user or org>/<name>", url=to
        )
    return "/".join(parts)


def check_revision(name: str, what: str) -> str:
    """Validate a Hub branch or tag name (plain characters, no ``..``, not a commit id).

    Example:
        >>> check_revision("release/v1", "branch")
        'release/v1'
    """
    if (
        not _REF_RE.match(name)
        or ".." in name
        or "//" in name
        or name.endswith((".", "/", ".lock"))
    ):
        raise RefNameError(f"{name!r} is not a valid Hub {what} name (letters, digits, . _ - /)")
    if _HEX40.match(name):
        raise RefNameError(f"{name!r} looks like a commit id; choose a {what} name")
    return name


def release(
    reader: ReleaseReader,
    rev: str,
    to: str,
    revision: str = "main",
    tag: str | None = None,
    public: bool = False,
    endpoint: str | None = None,
    token_name: str | None = None,
) -> ReleaseResult:
    """Write commit ``rev``'s ``hf`` export and model card onto branch ``revision`` of ``to``.

    Args:
        reader: the ledger to release from.
        rev: the commit (any revision: ``HEAD``, ``main~2``, a tag, an id).
        to: ``hf://org/name``; created (private unless ``public``) when missing.
        revision: the Hub branch (created from the repo's first commit when missing).
        tag: also tag the release's Hub commit (refused if the tag exists).
        public: create a missing repo public; an existing repo keeps its visibility.
        endpoint: the Hub (default ``$HF_ENDPOINT`` or the client's).
        token_name: use the token the client stores under this name (default: its
            active token); either way it is checked with ``whoami`` before anything.

    Raises:
        ReleaseConflictError: ``revision`` is where a ledger remote pushes, ``tag``
            exists, or the branch moved while releasing (nothing changed then).
        RemoteAuthError: no token, or the Hub rejects it, or it is read-only (checked
            before anything is written).
        RemoteError: the Hub refused (token, permissions) or cannot be reached.

    Example:
        >>> r = release(lg, "HEAD", "hf://org/model", tag="v1")  # doctest: +SKIP
        >>> r.uploaded  # doctest: +SKIP
        ['README.md', 'config.json', 'model.safetensors']
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    repo_id = parse_hub_url(to)
    check_revision(revision, "branch")
    if tag is not None:
        check_revision(tag, "tag")
    commit_id = reader.resolve(rev)
    token = stored_token(token_name, to) if token_name is not None else None
    api = HfApi(
        endpoint=(endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/"),
        token=token,
    )
    try:
        check_write_token(api, token, repo_id, to)
        return _release(api, reader, commit_id, repo_id, revision, tag, public)
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        raise RemoteError(
            f"the Hub refused the release to {to} (HTTP {status}): {e}; check the token "
            "(HF_TOKEN or `hf auth login`) can write there",
            url=to,
        ) from None
    except (OSError, _http_library().TransportError) as e:  # refused, reset, timed out
        raise RemoteError(
            f"cannot reach the Hub for {to} ({type(e).__name__}: {e}); nothing is half-done "
            "there: release again",
            url=to,
        ) from None


def _release(
    api: Any,
    reader: ReleaseReader,
    commit_id: str,
    repo_id: str,
    revision: str,
    tag: str | None,
    public: bool,
) -> ReleaseResult:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import RepositoryNotFoundError

    url = f"hf://{repo_id}"
    _refuse_remote_branch(reader, url, revision)
    with tempfile.TemporaryDirectory(prefix="ledger-release-") as tmp:
        out = Path(tmp)
        # Written before the Hub is touched: a refusal there changes nothing.
        files = write_hf(reader, commit_id, out)
        for name in files:
            if name.endswith(".safetensors"):
                canonical_safetensors(out / name)
        config = (out / "config.json").read_bytes() if "config.json" in files else None
        card = release_card(reader, commit_id, repo_id, tag or revision, files, config)
        (out / CARD).write_text(card, encoding="utf-8")
        local = sorted({*files, CARD})
        try:
            info = api.repo_info(repo_id)
            created_repo = False
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=not public, exist_ok=True)
            info, created_repo = api.repo_info(repo_id), True
        refs = api.list_repo_refs(repo_id)
        if tag is not None and any(t.name == tag for t in refs.tags):
            raise ReleaseConflictError(
                f"tag {tag!r} already exists on {url}; tags never move: choose a new tag",
                repo=repo_id,
                tag=tag,
                reason="tag-exists",
                url=url,
            )
        branches = {b.name: b.target_commit for b in refs.branches}
        created_branch = revision not in branches
        # A new branch starts at the repo's first commit, so it holds the release and nothing else.
        tip = (
            api.list_repo_commits(repo_id, revision="main")[-1].commit_id
            if created_branch
            else branches[revision]
        )
        if api.file_exists(repo_id, PREFIX + REFS_KEY, revision=tip):
            raise _on_push_branch(url, repo_id, revision)
        remote = _remote_files(api, repo_id, tip, local)
        changed = [p for p in local if p not in remote or _ids(out / p, remote[p]) != remote[p]]
        stale = sorted(set(_earlier_release(api, repo_id, tip)) - set(local))
        gone = [p for p in stale if api.file_exists(repo_id, p, revision=tip)]
        ops: list[Any] = [CommitOperationAdd(p, str(out / p)) for p in changed]
        ops += [CommitOperationDelete(p) for p in gone]
        if created_branch:
            api.create_branch(repo_id, branch=revision, revision=tip)
        hub_commit = tip
        if ops:
            hub_commit = _commit(api, repo_id, revision, tip, ops, commit_id, url)
    if tag is not None:
        _tag(api, repo_id, tag, hub_commit, commit_id, url)
    return ReleaseResult(
        repo=repo_id,
        url=url,
        commit=commit_id,
        revision=revision,
        hub_commit=hub_commit,
        tag=tag,
        private=bool(info.private),
        created_repo=created_repo,
        created_branch=created_branch,
        uploaded=changed,
        unchanged=[p for p in local if p not in changed],
        deleted=gone,
    )


def canonical_safetensors(path: Path) -> bool:
    """Rewrite a safetensors file's header so the file depends on its tensors alone.

    The metadata becomes ``{"format": "pt"}`` (the export's ``ledger.commit``
    would make every commit's file differ, and safetensors writes a metadata
    map of several keys in no fixed order) and the header's keys are sorted.
    Tensor bytes and offsets do not change. Whether the file was rewritten.

    Example:
        >>> canonical_safetensors(Path("out/model.safetensors"))  # doctest: +SKIP
        True
    """
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        raw = f.read(size)
        header = json.loads(raw)
        header["__metadata__"] = {"format": "pt"}
        body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        body += b" " * (-len(body) % 8)  # safetensors keeps the data 8-byte aligned
        if body == raw:
            return False
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("wb") as g:
            g.write(struct.pack("<Q", len(body)) + body)
            shutil.copyfileobj(f, g, 1 << 24)
    tmp.replace(path)
    return True


def _refuse_remote_branch(reader: ReleaseReader, url: str, revision: str) -> None:
    """Refuse ``main`` of a repo this ledger has as a remote (pushes keep ``ledger/`` there)."""
    for name, remote_url in reader.remotes().items():
        if remote_url.rstrip("/") == url and revision == "main":
            raise _on_push_branch(url, url.split("://", 1)[1], revision, name)


def _on_push_branch(
    url: str, repo_id: str, revision: str, remote: str | None = None
) -> ReleaseConflictError:
    who = f"remote {remote!r} of this ledger" if remote else "a ledger remote"
    return ReleaseConflictError(
        f"branch {revision!r} of {url} is where {who} pushes (its ledger/ files and model "
        "card live there); release onto another branch (revision=...) or another repo",
        repo=repo_id,
        revision=revision,
        url=url,
        remote=remote,
        reason="push-branch",
    )


def _remote_files(api: Any, repo_id: str, tip: str, paths: list[str]) -> dict[str, tuple[str, str]]:
    """path -> ("lfs", sha256) or ("git", blob id) for the ``paths`` the branch holds."""
    out: dict[str, tuple[str, str]] = {}
    for entry in api.get_paths_info(repo_id, paths, revision=tip):
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            out[entry.path] = ("lfs", lfs.sha256)
        elif getattr(entry, "blob_id", None):
            out[entry.path] = ("git", entry.blob_id)
    return out


def _ids(path: Path, like: tuple[str, str]) -> tuple[str, str]:
    """The local file's id in the kind (``lfs`` sha256 or ``git`` blob id) the remote reports."""
    data_hash = hashlib.sha256() if like[0] == "lfs" else hashlib.sha1()
    if like[0] == "git":
        data_hash.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            data_hash.update(block)
    return like[0], data_hash.hexdigest()


def _earlier_release(api: Any, repo_id: str, tip: str) -> list[str]:
    """The files the branch's release card says an earlier release wrote."""
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    where = hf_hub_url(repo_id, CARD, revision=tip, endpoint=api.endpoint)
    url = f"hf://{repo_id}"
    got = read_capped(where, build_hf_headers(), CARD, url, MAX_CARD_BYTES)
    return [] if got is None else released_files(got[1].decode("utf-8", errors="replace"))


def _commit(
    api: Any, repo_id: str, revision: str, tip: str, ops: list[Any], commit_id: str, url: str
) -> str:
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    quiet_before = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        info = api.create_commit(
            repo_id,
            ops,
            commit_message=f"ledger release {commit_id[:12]}",
            commit_description=f"ledger commit {commit_id}",
            revision=revision,
            parent_commit=tip,
        )
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code in (409, 412):
            raise ReleaseConflictError(
                f"branch {revision!r} of {url} moved while releasing; nothing was changed: "
                "release again",
                repo=repo_id,
                revision=revision,
                url=url,
                reason="moved",
            ) from None
        raise
    finally:
        if not quiet_before:
            enable_progress_bars()
    return str(info.oid)


def _tag(api: Any, repo_id: str, tag: str, hub_commit: str, commit_id: str, url: str) -> None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.create_tag(
            repo_id, tag=tag, revision=hub_commit, tag_message=f"ledger commit {commit_id}"
        )
    except HfHubHTTPError as e:
        if e.response is not None and e.response.status_code == 409:
            raise ReleaseConflictError(
                f"tag {tag!r} was created on {url} by someone else during the release; the "
                f"files are on Hub commit {hub_commit[:12]}: tag that commit with a new name",
                repo=repo_id,
                tag=tag,
                url=url,
                reason="tag-exists",
            ) from None
        raise
