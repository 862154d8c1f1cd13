"""What the refs need: the commits they reach and the objects each commit needs.

This module owns the one answer to "which objects does this commit need",
with its special cases in one place: a commit always needs its record; a
commit whose state was expired needs nothing else; a kept commit also needs
its manifest, the blob of installed packages its metadata names (when it
names one), and every chunk of every tensor, array and file in its manifest. gc
(what to keep), verify (what must exist) and push (what to send) all ask it.
It reads records and manifests only through a :class:`HistoryReader`; it never
touches the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

from ledger.errors import LedgerError
from ledger.history.graph import ancestors
from ledger.history.records import CommitRecord
from ledger.history.refs import BRANCH_PREFIX, HEAD, REMOTE_PREFIX, SYMREF_PREFIX, TAG_PREFIX
from ledger.history.tree import iter_leaves
from ledger.manifest import CHUNKED, Manifest
from ledger.objects.hashing import is_hex_id


class HistoryReader(Protocol):
    """What gc, verify and push need from the ledger: decoded records and manifests."""

    def record(self, commit_id: str) -> CommitRecord: ...

    def manifest_by_id(self, manifest_id: str, commit_id: str) -> Manifest: ...


class Need(NamedTuple):
    """One object a commit needs: its id, its kind, and how to name it in a message."""

    id: bytes
    kind: str
    what: str


def commit_needs(reader: HistoryReader, cid: str, *, expired: bool) -> Iterator[Need]:
    """Every object commit ``cid`` needs, each once: record, then manifest, packages, chunks.

    A generator: the record comes first, before anything is read, so a caller
    that catches the error of an unreadable record or manifest has been given
    every object known to be needed up to there.

    Args:
        reader: where records and manifests come from.
        cid: the commit's full id.
        expired: whether the commit's state was expired (then only its record).

    Raises:
        LedgerError: the record or the manifest cannot be read (missing, damaged,
            newer format); the objects the commit needs are then not all known.

    Example:
        >>> [n.kind for n in commit_needs(lg, lg.head.id, expired=False)][:2]  # doctest: +SKIP
        ['commit', 'manifest']
    """
    short = cid[:12]
    yield Need(bytes.fromhex(cid), "commit", f"commit {short}")
    if expired:
        return
    rec = reader.record(cid)
    yield Need(bytes.fromhex(rec.manifest), "manifest", f"manifest of commit {short}")
    packages = rec.meta.get("env", {}).get("packages")
    if isinstance(packages, str) and is_hex_id(packages):
        yield Need(bytes.fromhex(packages), "blob", f"packages of commit {short}")
    manifest = reader.manifest_by_id(rec.manifest, cid)
    seen: set[str] = set()
    for path, node in iter_leaves(manifest.root):
        if isinstance(node, CHUNKED):
            for i, chunk in enumerate(node.chunks):
                if chunk not in seen:
                    seen.add(chunk)
                    yield Need(bytes.fromhex(chunk), "chunk", f"{path} chunk {i} in commit {short}")


def reachable_commits(
    reader: HistoryReader, refs: dict[str, str], errors: list[str] | None = None
) -> list[str]:
    """Every commit any branch, tag, remote-tracking branch or detached HEAD reaches (all parents).

    A commit whose record cannot be read hides its ancestors; when ``errors`` is
    given, each such commit is described there.

    Example:
        >>> reachable_commits(lg, lg.refs.snapshot())[0] == lg.head.id  # doctest: +SKIP
        True
    """
    roots = [v for k, v in refs.items() if k.startswith((BRANCH_PREFIX, TAG_PREFIX, REMOTE_PREFIX))]
    head = refs.get(HEAD)
    if head is not None and not head.startswith(SYMREF_PREFIX):
        roots.append(head)

    def parents_of(cid: str) -> list[str]:
        try:
            return reader.record(cid).parents
        except LedgerError as e:
            if errors is not None:
                errors.append(f"commit {cid[:12]}: {e}")
            return []

    return list(ancestors(parents_of, roots))
