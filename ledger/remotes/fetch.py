"""fetch, pull and clone: bringing a remote's commits into a ledger.

This module owns their order of effects (docs/remotes.md, "Fetch, pull, clone"):

* fetch: read the remote's refs and indexes; download every commit record,
  manifest and blob the ledger lacks (small objects, checked one by one); then,
  in one event-log append, move ``refs/remotes/<remote>/<branch>``, add the
  remote's new tags, and mark commits the remote expired (and this ledger holds
  no state for) as expired. Chunks are not fetched: they come on demand;
* pull: fetch, download the state (chunks) of the commits that the branch
  gains, then fast-forward it (never a merge: diverged is an error);
* clone: a new ledger, then fetch, then the state of every commit (``depth``:
  only the newest ``depth`` commits of the branch), then the branch and HEAD.

It must never move a local ref before the objects it names are stored.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import msgspec

from ledger.errors import (
    DetachedHeadError,
    DivergedError,
    LedgerError,
    RemoteCorruptionError,
    RemoteError,
)
from ledger.history.graph import first_parents, refs_under
from ledger.history.needs import HistoryReader
from ledger.history.records import Expire, utcnow
from ledger.history.refs import BRANCH_PREFIX, HEAD, REMOTE_PREFIX, SYMREF_PREFIX, TAG_PREFIX
from ledger.history.tree import chunk_ids
from ledger.objects.hashing import is_hex_id
from ledger.objects.store import ObjectStore
from ledger.remotes.config import RemoteEntry, RemotesConfig, load_config, open_remote, save_config
from ledger.remotes.protocol import LocalLedger
from ledger.remotes.tracking import ancestors, is_ancestor, open_named
from ledger.remotes.transfer import Progress, RemoteView, download, load_view

L = TypeVar("L", bound=LocalLedger)


class FetchResult(msgspec.Struct):
    """What a fetch brought: new commit records, objects and bytes; tracking refs that moved."""

    remote: str
    commits: int = 0
    objects: int = 0
    bytes_received: int = 0
    updated: dict[str, str | None] = {}
    tags: list[str] = []


class PullResult(msgspec.Struct):
    """A pull: its fetch, how the branch moved, and the state downloaded for it."""

    fetch: FetchResult
    branch: str
    old: str | None
    new: str | None
    fast_forward: bool
    objects: int = 0
    bytes_received: int = 0


def fetch_metadata(
    store: ObjectStore,
    records: HistoryReader,
    view: RemoteView,
    progress: Progress | None = None,
) -> tuple[int, int, int]:
    """Download every record, manifest and blob the remote has and ``store`` lacks.

    Returns (new commits, objects, bytes). Every tip the remote's refs name must
    then be readable through ``records``, or the remote is refused as corrupt.

    Example:
        >>> fetch_metadata(lg.store, lg, load_view(remote, None))  # doctest: +SKIP
        (3, 9, 48213)
    """
    if view.refs is None:
        return 0, 0, 0
    wanted = [o for o, (_, e) in view.objects.items() if e.kind != "chunk" and not store.has(o)]
    commits = sum(1 for o in wanted if view.objects[o][1].kind == "commit")
    objects, received = download(view, store, wanted, progress=progress)
    for cid in {*view.refs.branches.values(), *view.refs.tags.values()}:
        try:
            records.record(cid)
        except LedgerError as e:
            raise RemoteCorruptionError(
                f"remote {view.remote.url} names commit {cid[:12]} in its refs but does not "
                f"store it readably ({e})"
            ) from e
    return commits, objects, received


def fetch(lg: LocalLedger, name: str, progress: Progress | None = None) -> FetchResult:
    """Fetch remote ``name``: records and refs (see the module docstring)."""
    remote, cache = open_named(lg, name)
    view = load_view(remote, cache)
    if view.refs is None:
        raise RemoteError(
            f"remote {name} ({remote.url}) holds no ledger yet (no refs.json); push to it first"
        )
    commits, objects, received = fetch_metadata(lg.store, lg, view, progress)
    state = lg.refs.state()
    local = state.refs
    prefix = f"{REMOTE_PREFIX}{name}/"
    want = {prefix + b: cid for b, cid in view.refs.branches.items()}
    have = {k: v for k, v in local.items() if k.startswith(prefix)}
    changes: dict[str, tuple[str | None, str | None]] = {
        ref: (have.get(ref), want.get(ref))
        for ref in sorted({*want, *have})
        if have.get(ref) != want.get(ref)
    }
    new_tags = [t for t in sorted(view.refs.tags) if TAG_PREFIX + t not in local]
    changes.update({TAG_PREFIX + t: (None, view.refs.tags[t]) for t in new_tags})
    now = utcnow()
    expire = [
        Expire(commit=cid, reason=f"expired on remote {name}: {why.reason}", time=now)
        for cid, why in sorted(view.refs.expired.items())
        if cid not in state.expired and _lacks_state(lg, cid)
    ]
    if changes or expire:
        lg.refs.update(changes, f"fetch {name}", extra=list(expire))
    return FetchResult(
        remote=name,
        commits=commits,
        objects=objects,
        bytes_received=received,
        updated={
            ref[len(prefix) :]: new for ref, (_, new) in changes.items() if ref.startswith(prefix)
        },
        tags=new_tags,
    )


def _lacks_state(lg: LocalLedger, cid: str) -> bool:
    """Whether this ledger holds a commit's record but not all of its state (manifest, chunks)."""
    if lg.store.locate(bytes.fromhex(cid)) is None:
        return False  # not even the record here: nothing to mark
    manifest = lg.record(cid).manifest
    if not is_hex_id(manifest) or lg.store.locate(bytes.fromhex(manifest)) is None:
        return True
    root = lg.manifest_by_id(manifest, cid).root
    return not all(lg.store.has(bytes.fromhex(c)) for c in chunk_ids(root))


def fetch_state(
    lg: LocalLedger, view: RemoteView, commits: Iterable[str], progress: Progress | None = None
) -> tuple[int, int]:
    """Download the chunks (and any missing manifest) of ``commits``; returns (objects, bytes)."""
    expired = lg.refs.state().expired
    remote_expired = view.refs.expired if view.refs else {}
    chunks: list[bytes] = []
    what: dict[bytes, str] = {}
    for cid in commits:
        if cid in expired or cid in remote_expired:
            continue
        rec = lg.record(cid)
        if not lg.store.has(bytes.fromhex(rec.manifest)):
            download(view, lg.store, [bytes.fromhex(rec.manifest)])
        for chunk in sorted(chunk_ids(lg.manifest_by_id(rec.manifest, cid).root)):
            oid = bytes.fromhex(chunk)
            if oid not in what:
                what[oid] = f"a chunk of commit {cid[:12]}"
                chunks.append(oid)
    return download(view, lg.store, chunks, what, progress)


def pull(
    lg: LocalLedger, name: str, branch: str | None = None, progress: Progress | None = None
) -> PullResult:
    """Fetch ``name``, then fast-forward ``branch`` (default: HEAD's) to the remote's."""
    result = fetch(lg, name, progress)
    local = lg.refs.snapshot()
    if branch is None:
        branch = lg.current_branch
        if branch is None:
            raise DetachedHeadError("HEAD is detached: name the branch to pull")
    theirs = local.get(f"{REMOTE_PREFIX}{name}/{branch}")
    if theirs is None:
        raise RemoteError(
            f"remote {name} has no branch {branch!r} (as of the last fetch)", remote=name
        )
    ours = local.get(BRANCH_PREFIX + branch)
    if ours == theirs or (ours is not None and is_ancestor(lg, theirs, ours)):
        return PullResult(result, branch, ours, ours, fast_forward=False)
    if ours is not None and not is_ancestor(lg, ours, theirs):
        raise DivergedError(
            f"local branch {branch!r} (at {ours[:12]}) and {name}/{branch} (at {theirs[:12]}) "
            "have diverged: pull only fast-forwards; push your commits to a new branch, or "
            "delete the local branch (force=True) and pull again",
            branch=branch,
            ours=ours,
            theirs=theirs,
            remote=name,
        )
    remote, cache = open_named(lg, name)
    view = load_view(remote, cache)
    shallow = load_config(lg.root).shallow
    gained = [theirs] if shallow else ancestors(lg, [theirs], {ours} if ours else None)
    objects, received = fetch_state(lg, view, gained, progress)
    lg.refs.update({BRANCH_PREFIX + branch: (ours, theirs)}, f"pull {name} {branch}: fast-forward")
    return PullResult(result, branch, ours, theirs, True, objects, received)


def clone(
    open_ledger: Callable[..., L],
    url: str,
    path: str | Path,
    branch: str | None = None,
    depth: int | None = None,
    progress: Progress | None = None,
) -> L:
    """A new ledger at ``path`` (made by ``open_ledger``) from the remote at ``url``."""
    if depth is not None and depth < 1:
        raise RemoteError(f"depth={depth} must be at least 1")
    started = time.perf_counter()
    remote = open_remote(url)
    view = load_view(remote, None)
    if view.refs is None:
        raise RemoteError(f"{url} holds no ledger (no refs.json); nothing to clone")
    refs = view.refs
    branch = branch or refs.head or next(iter(sorted(refs.branches)), None)
    if branch is None or branch not in refs.branches:
        known = ", ".join(sorted(refs.branches)) or "none"
        raise RemoteError(f"{url} has no branch {branch!r} (branches: {known})")
    target = Path(path)
    existed = target.exists()
    lg = open_ledger(target, create=True, chunk_size=refs.chunk_size, compress=refs.compress)
    try:
        with lg.refs.lock.hold():
            config = RemotesConfig(
                remotes={"origin": RemoteEntry(url=url)}, shallow=depth is not None
            )
            save_config(lg.root, config, lg.store.tmp_dir)
        fetch(lg, "origin", progress)
        tip = refs.branches[branch]
        if depth is None:
            wanted = ancestors(lg, [*refs.branches.values(), *refs.tags.values()])
        else:
            wanted = _first_parents(lg, tip, depth)
        remote, cache = open_named(lg, "origin")
        fetch_state(lg, load_view(remote, cache, offline=True), wanted, progress)
        local = lg.refs.snapshot()
        changes: dict[str, tuple[str | None, str | None]] = {BRANCH_PREFIX + branch: (None, tip)}
        attached = SYMREF_PREFIX + BRANCH_PREFIX + branch
        if local.get(HEAD) != attached:
            changes[HEAD] = (local.get(HEAD), attached)
        lg.refs.update(changes, f"clone {url} ({time.perf_counter() - started:.1f}s)")
    except BaseException:
        lg.close()
        if not existed:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return lg


def _first_parents(lg: LocalLedger, tip: str, depth: int) -> list[str]:
    return list(first_parents(lambda cid: lg.record(cid).parents, tip, depth))


def tracking_branches(lg: LocalLedger, name: str) -> dict[str, str]:
    """Branch -> commit as of the last contact with remote ``name``."""
    return refs_under(lg.refs.snapshot(), f"{REMOTE_PREFIX}{name}/")
