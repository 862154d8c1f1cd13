"""Lazy restore: objects a read needs and the store lacks come from a remote.

This module owns the store's ``source`` hook (:class:`LazySource`, built from
plain parts: the ledger's folder and its object store): when a checkout,
restore or record read asks for objects the local store lacks, it looks for
them in the remotes this ledger knows (those registered with ``remote_add`` or
``clone``, and any remote named by URL in this process), downloads only those
objects (coalesced range reads), checks each one, and stores it. It also
resolves revisions written as ``URL@rev`` (``hf://user/repo@main``) against
the remote's refs. It never contacts a remote unless something is missing,
never stores an unchecked object, and holds no reference to the facade.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from ledger.errors import CommitExpiredError, RemoteError
from ledger.history.needs import HistoryReader
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, TAG_PREFIX
from ledger.history.revisions import resolve
from ledger.objects.store import ObjectStore
from ledger.remotes.config import cache_dir, load_config, open_remote, split_url_rev
from ledger.remotes.fetch import fetch_metadata
from ledger.remotes.transfer import RemoteView, download, load_view


class LazySource:
    """The remotes of the ledger at ``root``, as a source of objects its ``store`` lacks.

    Install it as ``store.source``; it reads the remote settings under ``root``
    and writes only checked objects into ``store``.

    Example:
        >>> store.source = LazySource(root, store)  # doctest: +SKIP
        >>> store.source.fetch([oid], {oid: "model/fc.weight"})  # doctest: +SKIP
    """

    def __init__(self, root: Path, store: ObjectStore) -> None:
        self.root = root
        self.store = store
        self._views: dict[str, RemoteView] = {}
        self._urls: list[str] = []

    def _configured(self) -> dict[str, str]:
        return {e.url: n for n, e in sorted(load_config(self.root).remotes.items())}

    def view(self, url: str, *, refresh: bool = False) -> RemoteView:
        """The view of the remote at ``url`` (read once per process unless ``refresh``)."""
        if refresh or url not in self._views:
            name = self._configured().get(url)
            if name is not None:
                cache = cache_dir(self.root, name)
            else:
                digest = hashlib.blake2b(url.encode(), digest_size=8).hexdigest()
                cache = self.root / "remotes" / ".urls" / digest
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
        missing = [o for o in dict.fromkeys(oids) if not self.store.has(o)]
        for url in self._candidates():
            if not missing:
                return
            view = self.view(url)
            if not any(view.has(o) for o in missing):
                view = self.view(url, refresh=True)  # its refs may have moved since
            found = [o for o in missing if view.has(o)]
            if found:
                download(view, self.store, found, what)
                missing = [o for o in missing if not self.store.has(o)]

    def has(self, oid: bytes) -> bool:
        """Whether a known remote holds ``oid`` as of its last contact (no network)."""
        for url, name in self._configured().items():
            if url not in self._views:
                remote = open_remote(url)
                self._views[url] = load_view(remote, cache_dir(self.root, name), offline=True)
            if self._views[url].has(oid):
                return True
        return False

    def resolve(self, text: str, records: HistoryReader) -> str:
        """The commit that ``URL@rev`` names on that remote (default: its head branch).

        Fetches the remote's commit records and manifests (small) into the store
        (read back through ``records``), and consults that remote first for the
        chunks later reads lack.

        Raises:
            RemoteError: the remote holds no ledger.
            CommitExpiredError: the remote expired that commit's state.

        Example:
            >>> lg.store.source.resolve("hf://me/bert-run@main", lg)  # doctest: +SKIP
            '3f2a...'
        """
        url, rev = split_url_rev(text)
        view = self.use(url)
        if view.refs is None:
            raise RemoteError(f"{url} holds no ledger (no refs.json)")
        fetch_metadata(self.store, records, view)
        refs = {BRANCH_PREFIX + b: c for b, c in view.refs.branches.items()}
        refs.update({TAG_PREFIX + t: c for t, c in view.refs.tags.items()})
        if view.refs.head is not None:
            refs[HEAD] = SYMREF_PREFIX + BRANCH_PREFIX + view.refs.head
        commit_ids = [o.hex() for o, (_, e) in view.objects.items() if e.kind == "commit"]

        def first_parent(cid: str) -> str | None:
            parents = records.record(cid).parents
            return parents[0] if parents else None

        cid = resolve(
            rev or HEAD,
            refs,
            lambda: commit_ids,
            first_parent,
            record=records.record,
            expired=lambda: view.refs.expired if view.refs is not None else {},
        )
        expiry = view.refs.expired.get(cid)
        if expiry is not None:
            raise CommitExpiredError(
                f"commit {cid[:12]} on {url} was expired there at {expiry.time:%Y-%m-%d %H:%M:%S} "
                f"UTC: {expiry.reason}; its state is gone, its metadata remains"
            )
        return cid
