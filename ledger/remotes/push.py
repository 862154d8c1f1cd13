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
from dataclasses import dataclass
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
from ledger.remotes.hub import HubRemote
from ledger.remotes.layout import (
    MAX_INDEX_FILES,
    MAX_REFS_BYTES,
    REFS_KEY,
    PackRecord,
    RemoteExpiry,
    RemoteRefs,
    encode_index,
    encode_refs,
    index_key,
)
from ledger.remotes.protocol import LocalLedger
from ledger.remotes.tracking import ancestors, is_ancestor, known, open_named, track
from ledger.remotes.transfer import (
    Progress,
    RemoteView,
    cache_refs,
    load_view,
    upload,
)

if TYPE_CHECKING:  # export needs torch; pushing does not
    from ledger.interop.export import CommitReader


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


class PlannedObject(msgspec.Struct, frozen=True):
    """One object a push would send: its id, kind, what it is, and its stored (encoded) size."""

    id: str
    kind: str
    what: str
    bytes: int


class RefMove(msgspec.Struct, frozen=True):
    """A remote ref a push would move: ``old`` is the value it expects there (None: new)."""

    ref: str
    old: str | None
    new: str


class PushPlan(msgspec.Struct):
    """What a push would do, computed without changing either side (``push(dry_run=True)``).

    ``objects`` are exactly the objects a push then sends (metadata first, then
    chunks), ``refs`` the refs it moves with the values it expects to find, and
    ``version`` the version of ``refs.json`` its compare-and-swap expects.
    """

    remote: str
    commits: list[str]
    objects: list[PlannedObject]
    refs: list[RefMove]
    expired: list[str]
    bytes: int
    bytes_skipped: int
    version: str | None

    @property
    def up_to_date(self) -> bool:
        """Whether the push would change nothing on the remote."""
        return not self.objects and not self.refs and not self.expired


@dataclass
class _Prepared:
    """A plan and what executing it needs (the remote as read, the new refs)."""

    plan: PushPlan
    remote: Remote
    cache: Path
    view: RemoteView
    refs: RemoteRefs
    meta: list[tuple[bytes, str]]
    chunks: list[tuple[bytes, str]]
    tracked: dict[str, str]
    head: str | None
    must_write: bool


# -- push ---------------------------------------------------------------------------


def plan_push(
    lg: LocalLedger,
    name: str,
    branch: str | None = None,
    *,
    all_branches: bool = False,
    tags: bool = False,
) -> PushPlan:
    """What pushing ``branch`` (default: HEAD's), every branch and/or tags to ``name`` would do.

    Reads the remote's refs and index files; writes nothing on either side
    (the remote's refs and index files are cached locally, as a fetch does).

    Example:
        >>> plan = plan_push(lg, "origin")  # doctest: +SKIP
        >>> plan.commits, plan.bytes  # doctest: +SKIP
        (['3f2a...'], 1048576)
    """
    return _prepare(lg, name, branch, all_branches, tags, export=False).plan


def _prepare(
    lg: LocalLedger,
    name: str,
    branch: str | None,
    all_branches: bool,
    tags: bool,
    export: bool,
    write: bool = False,
) -> _Prepared:
    remote, cache = open_named(lg, name)
    if write:  # a missing, invalid or read-only token fails before anything is read or sent
        remote.check_write_access()
    view = load_view(remote, cache)
    if view.refs is None:
        _refuse_a_release_branch(remote, name)
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
                    "not seen: fetch first, then pull",
                    ref=BRANCH_PREFIX + b,
                    expected=tip,
                    actual=theirs,
                    remote=name,
                )
            if not is_ancestor(lg, theirs, tip):
                raise DivergedError(
                    f"remote {name} branch {b!r} (at {theirs[:12]}) is not an ancestor of local "
                    f"{b!r} (at {tip[:12]}): the push would drop its commits; pull or push to a "
                    "new branch",
                    branch=b,
                    ours=tip,
                    theirs=theirs,
                    remote=name,
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
    moves = [
        RefMove(f"{BRANCH_PREFIX}{b}", old.branches.get(b), c)
        for b, c in sorted(branches.items())
        if old.branches.get(b) != c
    ]
    moves += [
        RefMove(f"{TAG_PREFIX}{t}", None, c)
        for t, c in sorted(new_tags.items())
        if t not in old.tags
    ]
    objects = [_planned(lg, oid, what) for oid, what in [*meta, *chunks]]
    plan = PushPlan(
        remote=name,
        commits=commits,
        objects=objects,
        refs=moves,
        expired=sorted(set(gone) - set(old.expired)),
        bytes=sum(o.bytes for o in objects),
        bytes_skipped=skipped,
        version=view.version,
    )
    hub_extras = export and isinstance(remote.unwrap(), HubRemote)
    new = msgspec.structs.replace(old, branches=branches, tags=new_tags, expired=gone, head=head)
    return _Prepared(
        plan,
        remote,
        cache,
        view,
        new,
        meta,
        chunks,
        {b: branches[b] for b in wanted},
        head,
        must_write=not plan.up_to_date or view.refs is None or hub_extras,
    )


def _planned(lg: LocalLedger, oid: bytes, what: str) -> PlannedObject:
    found = lg.store.locate(oid)
    size = found[1].length if found is not None else 0
    kind = found[1].kind if found is not None else "missing"
    return PlannedObject(oid.hex(), kind, what, size)


def push(
    lg: LocalLedger,
    name: str,
    branch: str | None = None,
    *,
    all_branches: bool = False,
    tags: bool = False,
    export: CommitReader | None = None,
    progress: Progress | None = None,
) -> PushResult:
    """Send ``branch`` (default: HEAD's), every branch, and/or tags to remote ``name``.

    Executes :func:`plan_push`'s plan: the objects it lists go up as packs,
    one index file names them, then the refs move by compare-and-swap. On the
    Hub, ``export`` (a reader of the head's state) adds plain safetensors files.

    Example:
        >>> push(lg, "origin").chunks_sent  # doctest: +SKIP
        12
    """
    started = time.perf_counter()
    ready = _prepare(lg, name, branch, all_branches, tags, export=export is not None, write=True)
    if not ready.must_write:
        return PushResult(remote=name, updated={}, duration_s=time.perf_counter() - started)
    remote, view, plan = ready.remote, ready.view, ready.plan
    old = view.refs
    keep = remote.stages_writes
    sent = [
        upload(
            lg.store,
            remote,
            ready.chunks,
            lg.pool,
            target=transfer.PACK_TARGET,
            keep_files=keep,
            progress=progress,
        ),
        upload(
            lg.store,
            remote,
            ready.meta,
            lg.pool,
            target=1 << 62,
            keep_files=keep,
            progress=progress,
        ),
    ]
    extras: Path | None = None
    try:
        packs = [p for s in sent for p in s.packs]
        index, indexes = write_index(remote, view, packs)
        new = msgspec.structs.replace(
            ready.refs,
            indexes=indexes,
            updated=utcnow(),
            pushes=(old.pushes if old else 0) + 1,
        )
        extras = _stage_hub_extras(lg, remote, ready.refs.branches.get(ready.head or ""), export)
        body = encode_refs(new)
        swap_refs(remote, view, body, _push_message(name, plan), name)
    finally:
        for s in sent:
            for path in s.temp_files:
                path.unlink(missing_ok=True)
        if extras is not None:
            shutil.rmtree(extras, ignore_errors=True)
    cache_refs(ready.cache, body, (index[1], index[0]) if index else None)
    track(lg, name, ready.tracked, f"push {name}")
    return PushResult(
        remote=name,
        updated=_updated(plan),
        commits=len(plan.commits),
        objects_sent=sum(s.objects for s in sent),
        chunks_sent=sent[0].chunks,
        bytes_sent=sum(s.bytes_sent for s in sent) + (len(index[0]) if index else 0),
        bytes_skipped=plan.bytes_skipped,
        packs=len(packs),
        duration_s=time.perf_counter() - started,
    )


def _updated(plan: PushPlan) -> dict[str, str]:
    """The moved refs as ``PushResult.updated`` names them: ``main``, ``tag v1``."""
    out: dict[str, str] = {}
    for move in plan.refs:
        if move.ref.startswith(BRANCH_PREFIX):
            out[move.ref[len(BRANCH_PREFIX) :]] = move.new
        else:
            out[f"tag {move.ref[len(TAG_PREFIX) :]}"] = move.new
    return out


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
    lg: LocalLedger, view: RemoteView, commits: list[str], expired: dict[str, Expiry]
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


def _push_message(name: str, plan: PushPlan) -> str:
    updated = _updated(plan)
    moved = ", ".join(f"{ref} -> {cid[:12]}" for ref, cid in sorted(updated.items())) or "expiry"
    lines = [f"ledger push: {len(plan.commits)} commit(s); {moved}"]
    lines += [f"ledger commit {c}" for c in reversed(plan.commits)]
    return "\n".join(lines)


def write_index(
    remote: Remote, view: RemoteView, packs: list[PackRecord]
) -> tuple[tuple[bytes, str] | None, list[str]]:
    """Store one index file for ``packs``; return it (bytes, name) and the index list in force.

    The list keeps the remote's index files plus the new one; one that would
    grow past ``MAX_INDEX_FILES`` is replaced by a single merged index.
    """
    indexes = list(view.refs.indexes) if view.refs else []
    if not packs:
        return None, indexes
    if len(indexes) + 1 > MAX_INDEX_FILES:
        index = encode_index([*view.packs, *packs])
        indexes = [index[1]]
    else:
        index = encode_index(packs)
        indexes.append(index[1])
    remote.put(index_key(index[1]), index[0])
    return index, indexes


def swap_refs(remote: Remote, view: RemoteView, body: bytes, message: str, name: str) -> None:
    """Write ``refs.json`` by compare-and-swap against the version ``view`` read.

    Raises:
        RemoteConflictError: someone else wrote the refs since (nothing changed).
    """
    try:
        remote.put_if(REFS_KEY, body, view.version, message)
    except RemoteConflictError:
        # A retried write whose first attempt landed (its answer lost) sees its own refs.
        data, _ = remote.get_versioned(REFS_KEY, MAX_REFS_BYTES)
        if data != body:
            raise RemoteConflictError(
                f"remote {name} changed while this push was running (another push landed "
                "first): fetch first, then push again; the objects already sent stay there "
                "and are not sent twice",
                ref=REFS_KEY,
                remote=name,
            ) from None


def _refuse_a_release_branch(remote: Remote, name: str) -> None:
    """Refuse a first push onto a Hub ``main`` that ``ledger release`` wrote (its card would go)."""
    hub = remote.unwrap()
    if not isinstance(hub, HubRemote) or hub.head_commit() is None:
        return
    from ledger.remotes.card import released_files
    from ledger.remotes.release import ReleaseConflictError

    card = hub.read_card()
    if card is None or not released_files(card):
        return
    raise ReleaseConflictError(
        f"branch 'main' of {hub.url} holds a release (`ledger release` wrote its model card "
        f"and files); a push there would replace its card: give remote {name!r} another repo "
        "(a repo keeps a ledger remote on main and releases on other branches)",
        repo=hub.repo_id,
        revision="main",
        url=hub.url,
        remote=name,
        reason="release-branch",
    )


def _stage_hub_extras(
    lg: LocalLedger, remote: Remote, head: str | None, export: CommitReader | None
) -> Path | None:
    """On the Hub: stage the model card (and the head's weights); the folder to delete after."""
    hub = remote.unwrap()
    if not isinstance(hub, HubRemote) or head is None:
        return None
    from ledger.remotes.card import export_weights, model_card

    files = export_weights(export, head, lg.store.tmp_dir) if export is not None else []
    for path_in_repo, local in files:
        hub.stage(path_in_repo, local)
    card = model_card(lg, head, hub.repo_id, [p for p, _ in files])
    hub.stage("README.md", card.encode())
    return files[0][1].parent if files else None
