"""Lazy restore: objects a read needs and the store lacks come from a remote.

This module owns the store's ``source`` hook (:class:`LazySource`): when a
checkout, restore or record read asks for objects the local store lacks, it
looks for them in the remotes this ledger knows (those registered with
``remote_add`` or ``clone``, and any remote named by URL in this process),
downloads only those objects (coalesced range reads), checks each one, and
stores it. It also resolves revisions written as ``URL@rev``
(``hf://user/repo@main``) against the remote's refs. It never contacts a
remote unless something is missing, and never stores an unchecked object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from ledger.errors import CommitExpiredError, RemoteError
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, TAG_PREFIX
from ledger.history.revisions import resolve
from ledger.remotes.config import cache_dir, load_config, open_remote, split_url_rev
from ledger.remotes.fetch import fetch_metadata
from ledger.remotes.transfer import RemoteView, download, load_view

if TYPE_CHECKING:
    from ledger.api.core import LedgerCore


class LazySource:
    """The ledger's remotes, as a source of objects the local store lacks.

    Example:
        >>> lg.store.source.fetch([oid], {oid: "model/fc.weight"})  # doctest: +SKIP
    """

    def __init__(self, lg: LedgerCore) -> None:
        self.lg = lg
        self._views: dict[str, RemoteView] = {}
        self._urls: list[str] = []

    def _configured(self) -> dict[str, str]:
        return {e.url: n for n, e in sorted(load_config(self.lg.root).remotes.items())}

    def view(self, url: str, *, refresh: bool = False) -> RemoteView:
        """The view of the remote at ``url`` (read once per process unless ``refresh``)."""
        if refresh or url not in self._views:
            name = self._configured().get(url)
            if name is not None:
                cache = cache_dir(self.lg.root, name)
            else:
                digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
                cache = self.lg.root / "remotes" / ".urls" / digest
            self._views[url] = load_view(open_remote(url), cache)
        return self._views[url]

    def use(self, url: str) -> RemoteView:
        """Consult the remote at ``url`` for missing objects from now on (first)."""
        if url not in self._urls:
            self._urls.insert(0, url)
        return self.view(url)

    def _candidates(self) -> Iterator[str]:
        yield from self._urls
        yield from (u for u in self._configured() if u not in self._urls)

    def fetch(self, oids: Sequence[bytes], what: Mapping[bytes, str] | None = None) -> None:
        """Download what the store lacks of ``oids`` from the first remotes that have it."""
        missing = [o for o in dict.fromkeys(oids) if not self.lg.store.has(o)]
        for url in self._candidates():
            if not missing:
                return
            view = self.view(url)
            if not any(view.has(o) for o in missing):
                view = self.view(url, refresh=True)  # its refs may have moved since
            found = [o for o in missing if view.has(o)]
            if found:
                download(view, self.lg.store, found, what)
                missing = [o for o in missing if not self.lg.store.has(o)]

    def has(self, oid: bytes) -> bool:
        """Whether a known remote holds ``oid`` as of its last contact (no network)."""
        for url, name in self._configured().items():
            if url not in self._views:
                remote = open_remote(url)
                self._views[url] = load_view(remote, cache_dir(self.lg.root, name), offline=True)
            if self._views[url].has(oid):
                return True
        return False


def resolve_url(lg: LedgerCore, text: str) -> str:
    """The commit that ``URL@rev`` names on that remote (default: its head branch).

    Fetches the remote's commit records and manifests (small) into the store,
    and lets the store fetch the commit's chunks lazily from it.

    Raises:
        RemoteError: the remote holds no ledger.
        CommitExpiredError: the remote expired that commit's state.

    Example:
        >>> resolve_url(lg, "hf://me/bert-run@main")  # doctest: +SKIP
        '3f2a...'
    """
    url, rev = split_url_rev(text)
    source = lg.store.source
    if not isinstance(source, LazySource):
        raise RemoteError("this ledger cannot read from remotes (no lazy source)")
    view = source.use(url)
    if view.refs is None:
        raise RemoteError(f"{url} holds no ledger (no refs.json)")
    fetch_metadata(lg, view)
    refs = {BRANCH_PREFIX + b: c for b, c in view.refs.branches.items()}
    refs.update({TAG_PREFIX + t: c for t, c in view.refs.tags.items()})
    if view.refs.head is not None:
        refs[HEAD] = SYMREF_PREFIX + BRANCH_PREFIX + view.refs.head
    commit_ids = [o.hex() for o, (_, e) in view.objects.items() if e.kind == "commit"]

    def first_parent(cid: str) -> str | None:
        parents = lg.record(cid).parents
        return parents[0] if parents else None

    cid = resolve(rev or HEAD, refs, lambda: commit_ids, first_parent)
    expiry = view.refs.expired.get(cid)
    if expiry is not None:
        raise CommitExpiredError(
            f"commit {cid[:12]} on {url} was expired there at {expiry.time:%Y-%m-%d %H:%M:%S} "
            f"UTC: {expiry.reason}; its state is gone, its metadata remains"
        )
    return cid
