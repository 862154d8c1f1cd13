"""push: send a ledger's branches and tags to a remote, only the objects it lacks.

This module owns the order of effects of a push (docs/remotes.md, "Push"):
read the remote's refs and indexes; refuse a branch whose remote tip this
ledger has not seen ("fetch first") or that the push would rewind; send only
the objects the remote lacks, as packs (chunks in data packs, records and
manifests in one small metadata pack); write one index file; then move the
remote's refs with ``put_if`` (compare-and-swap). Refs move only after every
object they name is stored, so an interrupted push leaves the remote as it
was, and a rerun finds its packs already there (same content, same name).
It must never overwrite a remote ref it did not read.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from ledger.errors import DetachedHeadError, DivergedError, RefNameError, RemoteConflictError
from ledger.history.graph import refs_under
from ledger.history.needs import commit_needs
from ledger.history.records import Expiry, utcnow
from ledger.history.refs import BRANCH_PREFIX, TAG_PREFIX
from ledger.history.revisions import head_target
from ledger.remotes import transfer
from ledger.remotes.base import Remote
from ledger.remotes.layout import (
    MAX_INDEX_FILES,
    REFS_KEY,
    RemoteExpiry,
    RemoteRefs,
    encode_index,
    encode_refs,
    index_key,
)
from ledger.remotes.tracking import ancestors, is_ancestor, known, open_named, track
from ledger.remotes.transfer import (
    Progress,
    RemoteView,
    cache_refs,
    load_view,
    upload,
)

if TYPE_CHECKING:
    from ledger.api.core import LedgerCore


class PushResult(msgspec.Struct):
    """What a push did: ledger commits, chunks and bytes sent, bytes the remote already had."""

    remote: str
    updated: dict[str, str]
    commits: int = 0
    objects_sent: int = 0
    chunks_sent: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    packs: int = 0
    duration_s: float = 0.0


# -- push ---------------------------------------------------------------------------


def push(
    lg: LedgerCore,
    name: str,
    branch: str | None = None,
    *,
    all_branches: bool = False,
    tags: bool = False,
    export_weights: bool = False,
    progress: Progress | None = None,
) -> PushResult:
    """Send ``branch`` (default: HEAD's), every branch, and/or tags to remote ``name``."""
    started = time.perf_counter()
    remote, cache = open_named(lg, name)
    view = load_view(remote, cache)
    local = lg.refs.snapshot()
    wanted = _push_branches(local, branch, all_branches)
    old = view.refs or RemoteRefs(
        chunk_size=lg.config.chunk_size, compress=lg.config.compress, updated=utcnow()
    )
    branches, new_tags = dict(old.branches), dict(old.tags)
    for b in wanted:
        tip = local[BRANCH_PREFIX + b]
        theirs = old.branches.get(b)
        if theirs is not None and theirs != tip:
            if not known(lg, theirs):
                raise RemoteConflictError(
                    f"remote {name} has branch {b!r} at {theirs[:12]}, a commit this ledger has "
                    f"not seen: fetch first (ledger fetch {name}), then pull"
                )
            if not is_ancestor(lg, theirs, tip):
                raise DivergedError(
                    f"remote {name} branch {b!r} (at {theirs[:12]}) is not an ancestor of local "
                    f"{b!r} (at {tip[:12]}): the push would drop its commits; pull or push to a "
                    "new branch"
                )
        branches[b] = tip
    if tags:
        for t, cid in refs_under(local, TAG_PREFIX).items():
            if old.tags.get(t, cid) != cid:
                raise RefNameError(
                    f"tag {t!r} is at {old.tags[t][:12]} on remote {name} but at {cid[:12]} "
                    "here; tags never move"
                )
            new_tags[t] = cid
    # The remote stores the whole history of every commit it has: stop there.
    stop = {o.hex() for o, (_, e) in view.objects.items() if e.kind == "commit"}
    commits = ancestors(lg, [*branches.values(), *new_tags.values()], stop)
    expired = lg.refs.state().expired
    meta, chunks, skipped = _objects_to_send(lg, view, commits, expired)
    gone = dict(old.expired)
    sending = set(commits)
    for cid, why in expired.items():
        if cid in sending or bytes.fromhex(cid) in view.objects:
            gone.setdefault(cid, RemoteExpiry(reason=why.reason, time=why.time))
    head = old.head or (branch if branch else lg.current_branch)
    if head not in branches:
        head = next(iter(sorted(branches)), None)
    updated = {b: c for b, c in branches.items() if old.branches.get(b) != c}
    updated.update({f"tag {t}": c for t, c in new_tags.items() if t not in old.tags})
    extras_only = export_weights and type(remote).__name__ == "HubRemote"
    if (
        not meta
        and not chunks
        and not updated
        and gone == old.expired
        and view.refs
        and not extras_only
    ):
        return PushResult(remote=name, updated={}, duration_s=time.perf_counter() - started)
    keep = remote.stages_writes
    sent = [
        upload(
            lg.store,
            remote,
            chunks,
            lg.pool,
            target=transfer.PACK_TARGET,
            keep_files=keep,
            progress=progress,
        ),
        upload(lg.store, remote, meta, lg.pool, target=1 << 62, keep_files=keep, progress=progress),
    ]
    extras: Path | None = None
    try:
        packs = [p for s in sent for p in s.packs]
        index = None
        indexes = list(old.indexes)
        if packs:
            if len(indexes) + 1 > MAX_INDEX_FILES:
                index = encode_index([*view.packs, *packs])
                indexes = [index[1]]
            else:
                index = encode_index(packs)
                indexes.append(index[1])
            data, iname = index
            remote.retry("writing the index", lambda: remote.put(index_key(iname), data))
        new = msgspec.structs.replace(
            old,
            branches=branches,
            tags=new_tags,
            expired=gone,
            indexes=indexes,
            head=head,
            updated=utcnow(),
            pushes=old.pushes + 1,
        )
        extras = _stage_hub_extras(lg, remote, branches.get(head or ""), export_weights)
        body = encode_refs(new)
        message = _push_message(name, updated, commits)
        _swap_refs(remote, view, body, message, name)
    finally:
        for s in sent:
            for path in s.temp_files:
                path.unlink(missing_ok=True)
        if extras is not None:
            shutil.rmtree(extras, ignore_errors=True)
    cache_refs(cache, body, (index[1], index[0]) if index else None)
    track(lg, name, {b: branches[b] for b in wanted}, f"push {name}")
    return PushResult(
        remote=name,
        updated=updated,
        commits=len(commits),
        objects_sent=sum(s.objects for s in sent),
        chunks_sent=sent[0].chunks,
        bytes_sent=sum(s.bytes_sent for s in sent) + (len(index[0]) if index else 0),
        bytes_skipped=skipped,
        packs=len(packs),
        duration_s=time.perf_counter() - started,
    )


def _push_branches(local: dict[str, str], branch: str | None, all_branches: bool) -> list[str]:
    names = refs_under(local, BRANCH_PREFIX)
    if all_branches:
        return sorted(names)
    if branch is None:
        branch, _ = head_target(local)
        if branch is None:
            raise DetachedHeadError("HEAD is detached: name the branch to push, or pass --all")
    if branch not in names:
        raise RefNameError(f"no local branch {branch!r} to push (it may have no commit yet)")
    return [branch]


def _objects_to_send(
    lg: LedgerCore, view: RemoteView, commits: list[str], expired: dict[str, Expiry]
) -> tuple[list[tuple[bytes, str]], list[tuple[bytes, str]], int]:
    """(metadata objects, chunks) the remote lacks, in commit order; bytes it already has."""
    meta: list[tuple[bytes, str]] = []
    chunks: list[tuple[bytes, str]] = []
    queued: set[bytes] = set()
    skipped = 0

    def want(oid: bytes, what: str, into: list[tuple[bytes, str]]) -> None:
        nonlocal skipped
        if oid in queued:
            return
        queued.add(oid)
        if oid in view.objects:
            skipped += view.objects[oid][1].length
        else:
            into.append((oid, what))

    for cid in commits:
        for need in commit_needs(lg, cid, expired=cid in expired):
            want(need.id, need.what, chunks if need.kind == "chunk" else meta)
    return meta, chunks, skipped


def _push_message(name: str, updated: dict[str, str], commits: list[str]) -> str:
    moved = ", ".join(f"{ref} -> {cid[:12]}" for ref, cid in sorted(updated.items())) or "expiry"
    lines = [f"ledger push: {len(commits)} commit(s); {moved}"]
    lines += [f"ledger commit {c}" for c in reversed(commits)]
    return "\n".join(lines)


def _swap_refs(remote: Remote, view: RemoteView, body: bytes, message: str, name: str) -> None:
    try:
        remote.retry(
            "updating refs.json", lambda: remote.put_if(REFS_KEY, body, view.version, message)
        )
    except RemoteConflictError:
        # A retried write whose first attempt landed (its answer lost) sees its own refs.
        data, _ = remote.retry("reading refs.json", lambda: remote.get_versioned(REFS_KEY))
        if data != body:
            raise RemoteConflictError(
                f"remote {name} changed while this push was running (another push landed "
                f"first): fetch first (ledger fetch {name}), then push again; the objects "
                "already sent stay there and are not sent twice"
            ) from None


def _stage_hub_extras(
    lg: LedgerCore, remote: Remote, head: str | None, export: bool
) -> Path | None:
    """On the Hub: stage the model card (and the head's weights); the folder to delete after."""
    from ledger.remotes.hub import HubRemote

    if not isinstance(remote, HubRemote) or head is None:
        return None
    from ledger.remotes.card import export_weights, model_card

    files = export_weights(lg, head, lg.store.tmp_dir) if export else []
    for path_in_repo, local in files:
        remote.stage(path_in_repo, local)
    card = model_card(lg, head, remote.repo_id, [p for p, _ in files])
    remote.stage("README.md", card.encode())
    return files[0][1].parent if files else None
