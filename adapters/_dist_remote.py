"""Distributed commits and restores straight to a remote URL, for jobs with no shared disk.

This module owns ``distributed.commit(url, ...)`` / ``distributed.restore(url, ...)``
(docs/adapters/distributed.md, "Straight to an object store"). Every rank
works in a private staging ledger in a temporary directory of its own (under
``TMPDIR``), removed when the call returns: it flattens its shard
there, then sends the chunks the remote lacks as packs (``DirectCommit.send``);
rank 0 gathers every rank's part and pack list over the :class:`Channel`,
writes the commit record in its staging ledger and publishes it: one metadata
pack, one index file for every pack of the commit, and the branch moved in the
remote's refs by compare-and-swap (``DirectCommit.publish``). Restoring opens a
staging ledger whose lazy source is the remote (``URL@rev``), so each rank
downloads only the chunks of the stored boxes it reads, each one checked.
It uses only the public API of the core.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal

import msgspec

from ledger import Commit, Ledger
from ledger.remotes import DirectCommit
from ledger.state.rng import capture_rng

from ._dist_channel import FAILED, OK, Channel

_RESTORED: dict[str, str] = {}
"""URL -> the commit this process last restored from it: the parent of its next commit there
(after that commit, the branch's tip is, as for a ledger's resume lineage)."""


def is_remote_url(ledger: object) -> bool:
    """Whether ``ledger`` names a remote (``s3://...``, ``file://...``) rather than a directory."""
    return isinstance(ledger, str) and "://" in ledger


@contextlib.contextmanager
def _staging(chunk_size: int | None, compress: bool | Literal["auto"]) -> Iterator[Ledger]:
    """A private ledger in a fresh temporary directory (under ``TMPDIR``; removed on exit)."""
    with tempfile.TemporaryDirectory(prefix="ledger-staging-") as tmp:
        options: dict[str, Any] = {"compress": compress}
        if chunk_size is not None:
            options["chunk_size"] = chunk_size  # the remote's: chunks dedup against it
        lg = Ledger.open(Path(tmp) / "ledger", create=True, fsync=False, **options)
        try:
            yield lg
        finally:
            lg.close()


def _failure(e: BaseException) -> bytes:
    return FAILED + f"{type(e).__name__}: {e}".encode()


def commit(
    url: str,
    state: Mapping[str, Any],
    *,
    timeout: float,
    **meta: Any,
) -> Commit:
    """``distributed.commit`` to a remote URL (every rank calls it); see the module docstring."""
    from .distributed import _commit_on_rank0, _pair, _unpair, expand

    ch = Channel(timeout)
    error: BaseException | None = None
    target: DirectCommit | None = None
    settings: tuple[int | None, bool | Literal["auto"]] = (None, "auto")
    try:
        target = DirectCommit(url)  # every rank reads the remote's refs and indexes once
        settings = target.settings
    except Exception as e:
        error = e
    with _staging(*settings) as lg:
        report = _failure(error) if error is not None else b""
        if target is not None:
            try:
                with lg.stage() as stage:
                    shard = stage.write(expand(state))
                    rng = stage.write(capture_rng())
                packs = target.send(lg, [shard.node, rng.node])
                report = OK + _pair(_pair(shard.encode(), rng.encode()), packs)
            except Exception as e:  # reported to every rank, re-raised here below
                error = e
                report = _failure(e)
        reports = ch.gather(report)
        outcome = None
        if reports is not None:
            assert target is not None or error is not None
            outcome = _publish(lg, target, url, reports, state, meta, _commit_on_rank0, _unpair)
        result = ch.broadcast(outcome, "learning the commit from rank 0")
    if error is not None:
        raise error
    from ._common import DistributedCommitError

    if result.startswith(FAILED):
        raise DistributedCommitError(result[1:].decode())
    made = msgspec.msgpack.decode(result[1:], type=Commit)
    _RESTORED.pop(url, None)
    return made


def _publish(
    lg: Ledger,
    target: DirectCommit | None,
    url: str,
    reports: list[bytes],
    state: Mapping[str, Any],
    meta: dict[str, Any],
    commit_on_rank0: Any,
    unpair: Any,
) -> bytes:
    """Rank 0: write the commit in the staging ledger, then publish it on the remote."""
    failed = [p for p in reports if p[:1] != OK]
    if failed or target is None:
        return commit_on_rank0(None, reports, **meta)  # names every failed rank
    parts = [unpair(p[1:]) for p in reports]
    try:
        branch, tip = target.tip(meta.get("branch"))
        parent = _RESTORED.get(url, tip)
        if parent is not None:
            target.fetch_record(lg, parent)
            lg.base_on(parent)
        with lg.stage() as stage:
            made = commit_on_rank0(
                stage,
                [OK + inner for inner, _ in parts],
                summary=state,
                **{**meta, "branch": branch},
            )
        if made[:1] != OK:
            return bytes(made)
        cid = made[1:].decode()
        target.publish(lg, cid, [packs for _, packs in parts], branch)
        return OK + msgspec.msgpack.encode(lg.get(cid))
    except Exception as e:
        return (
            FAILED
            + f"rank 0 could not publish the commit on {url}: {_failure(e)[1:].decode()}".encode()
        )


def restore(
    url: str,
    state: MutableMapping[str, Any],
    rev: str,
    *,
    strict: bool,
    rng: bool,
    timeout: float,
) -> Commit | None:
    """``distributed.restore`` from a remote URL (every rank calls it): chunks come on demand."""
    from ._common import DistributedCommitError
    from .distributed import restore as restore_local

    ch = Channel(timeout)
    with _staging(None, "auto") as lg:
        answer = None
        if ch.rank == 0:
            answer = _resolve(lg, url, rev)
        chosen = ch.broadcast(answer, "learning the revision from rank 0")
        if chosen.startswith(FAILED):
            raise DistributedCommitError(chosen[1:].decode())
        if len(chosen) == 1:
            return None  # the remote holds no commit yet: start afresh
        cid = chosen[1:].decode()
        if ch.rank != 0:
            lg.resolve(f"{url}@{cid}")  # the remote's records; its chunks come on demand
        lg.branch("restored", at=cid)  # the staging ledger's only ref: what restore resolves
        made = restore_local(lg, state, cid, strict=strict, rng=rng, timeout=timeout)
    if made is not None:
        _RESTORED[url] = made.id
    return made


def _resolve(lg: Ledger, url: str, rev: str) -> bytes:
    """Rank 0: OK + the commit ``rev`` names on the remote; OK alone when it holds none."""
    try:
        target = DirectCommit(url)
        if target.view.refs is None or not target.view.refs.branches:
            return OK
        return OK + lg.resolve(f"{url}@{rev}").encode()
    except Exception as e:
        return _failure(e)
