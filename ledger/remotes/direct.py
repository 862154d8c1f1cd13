"""Commits written straight to a remote by many processes that share no disk.

This module owns the remote side of a distributed commit to a URL
(``ledger.adapters.distributed.commit("s3://bucket/run", ...)``;
docs/remotes.md, "Straight to a remote"). A :class:`DirectCommit` reads the
remote's ``refs.json`` and index files once, in every process. Each process
then sends the chunks of its own parts that the remote lacks, as packs
(:meth:`DirectCommit.send`), and hands the entries of the packs it wrote
(index-file bytes) to one committer, which writes the commit's records in one
metadata pack, ONE index file naming every pack of the commit, and then moves
the branch in ``refs.json`` by compare-and-swap (:meth:`DirectCommit.publish`),
exactly as ``push`` does. The remote layout is push's: nothing new lives there.

The objects come from a local ledger (each process's private staging ledger),
read back and re-hashed before they leave (``transfer.upload``). Refs move
only after every object they name is stored, so a process that dies mid-upload
leaves the remote as it was plus unreferenced packs. Reading a remote commit
back needs nothing here: the lazy source (``ledger.remotes.lazy``) does it.
It must never move a remote ref it did not read.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import msgspec

from ledger.errors import RemoteConflictError, RemoteError
from ledger.history.lineage import auto_branch
from ledger.history.needs import commit_needs
from ledger.history.records import utcnow
from ledger.history.refs import BRANCH_PREFIX
from ledger.history.tree import iter_leaves
from ledger.manifest import CHUNKED, DictNode, Node
from ledger.objects.hashing import hash_bytes
from ledger.remotes.config import open_remote
from ledger.remotes.hub import HubRemote
from ledger.remotes.layout import PackRecord, RemoteRefs, decode_index, encode_index, encode_refs
from ledger.remotes.protocol import LocalLedger
from ledger.remotes.push import swap_refs, write_index
from ledger.remotes.transfer import PACK_TARGET, download, load_view, upload

#: The branch a direct commit goes to when neither the caller nor the remote names one.
DEFAULT_BRANCH = "main"


class DirectCommit:
    """One commit written straight to the remote at ``url`` (read once, at construction).

    Every process builds one; each :meth:`send` s its chunks; one of them
    :meth:`publish` es the commit with every process's packs.

    Example:
        >>> target = DirectCommit("s3://bucket/run")  # doctest: +SKIP
        >>> packs = target.send(lg, [part.node])  # in every process  # doctest: +SKIP
        >>> target.publish(lg, commit_id, [packs, *others], "main")  # in one  # doctest: +SKIP
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.remote = open_remote(url)
        if isinstance(self.remote.unwrap(), HubRemote):
            raise RemoteError(
                f"{url}: a distributed commit cannot go straight to the Hugging Face Hub (a Hub "
                "commit lands one process's files at once); commit to a shared directory or S3, "
                "then push to the Hub"
            )
        self.view = load_view(self.remote, None)

    @property
    def settings(self) -> tuple[int | None, bool | Literal["auto"]]:
        """The remote's chunk size and compression (None, "auto": a new remote), for dedup."""
        refs = self.view.refs
        return (refs.chunk_size, refs.compress) if refs else (None, "auto")

    def tip(self, branch: str | None) -> tuple[str, str | None]:
        """The branch a commit goes to (``branch``, else the remote's head, else main) and its tip.

        Example:
            >>> DirectCommit("/tmp/empty-remote").tip(None)  # doctest: +SKIP
            ('main', None)
        """
        refs = self.view.refs
        name = branch or (refs.head if refs else None) or DEFAULT_BRANCH
        return name, refs.branches.get(name) if refs else None

    def fetch_record(self, lg: LocalLedger, commit_id: str) -> None:
        """Download one commit record of the remote into ``lg`` (checked), e.g. a parent.

        Example:
            >>> target.fetch_record(lg, target.tip("main")[1])  # doctest: +SKIP
        """
        download(
            self.view, lg.store, [bytes.fromhex(commit_id)], {bytes.fromhex(commit_id): "commit"}
        )

    def send(self, lg: LocalLedger, nodes: Iterable[Node]) -> bytes:
        """Upload the chunks under ``nodes`` that the remote lacks, as packs; their index bytes.

        The chunks are read from ``lg``'s store and re-hashed; a pack already
        on the remote (a rerun) is not sent again. The returned bytes are an
        index file's (``RemoteIndex``) listing the packs sent, for :meth:`publish`.

        Example:
            >>> with lg.stage() as st:  # doctest: +SKIP
            ...     part = st.write({"w": shard})
            >>> packs = target.send(lg, [part.node])  # doctest: +SKIP
        """
        wanted: dict[bytes, str] = {}
        root = DictNode(keys=[], values=[])
        for i, node in enumerate(nodes):
            root.keys.append(str(i))
            root.values.append(node)
        for path, leaf in iter_leaves(root):
            if isinstance(leaf, CHUNKED):
                for cid in leaf.chunks:
                    oid = bytes.fromhex(cid)
                    if oid not in self.view.objects:
                        wanted.setdefault(oid, f"chunk of {path}")
        stats = upload(
            lg.store,
            self.remote,
            list(wanted.items()),
            lg.pool,
            target=PACK_TARGET,
            keep_files=False,
        )
        return encode_index(stats.packs)[0]

    def publish(self, lg: LocalLedger, commit_id: str, sent: list[bytes], branch: str) -> None:
        """Store commit ``commit_id``'s records, one index of every pack, then move ``branch``.

        ``sent`` are the :meth:`send` results of every process. The commit's
        parent is its first parent; when the branch's tip on the remote is
        another commit (a restore of an older one), that tip is kept on the
        branch ``orig/<branch>/<tip>`` in the same compare-and-swap.

        Raises:
            RemoteCorruptionError: a process's pack list is malformed.
            RemoteError: a chunk of the commit is neither sent nor on the remote as read.
            RemoteConflictError: someone else wrote the remote's refs since they were read.

        Example:
            >>> target.publish(lg, commit.id, [packs_0, packs_1], "main")  # doctest: +SKIP
        """
        packs: list[PackRecord] = []
        for rank, data in enumerate(sent):
            packs += decode_index(data, hash_bytes(data).hex(), f"the packs of process {rank}")
        needs = list(commit_needs(lg, commit_id, expired=False))
        sent_ids = {entry.id for pack in packs for entry in pack.entries}
        lost = [
            n.what
            for n in needs
            if n.kind == "chunk" and n.id not in sent_ids | self.view.objects.keys()
        ]
        if lost:
            raise RemoteError(
                f"{self.url}: {lost[0]} (and {len(lost) - 1} more) is neither sent nor listed by "
                "the remote as read here (a remote gc ran meanwhile?): nothing was committed; "
                "commit again"
            )
        meta = [
            (need.id, need.what)
            for need in needs
            if need.kind != "chunk" and need.id not in self.view.objects
        ]
        stats = upload(lg.store, self.remote, meta, lg.pool, target=1 << 62, keep_files=False)
        _, indexes = write_index(self.remote, self.view, [*packs, *stats.packs])
        old = self.view.refs or RemoteRefs(
            chunk_size=lg.config.chunk_size, compress=lg.config.compress, updated=utcnow()
        )
        branches = dict(old.branches)
        tip = branches.get(branch)
        parents = lg.record(commit_id).parents
        if tip is not None and tip not in parents:
            refs = {BRANCH_PREFIX + b: c for b, c in branches.items()}
            branches[auto_branch(branch, tip, refs)[len(BRANCH_PREFIX) :]] = tip
        branches[branch] = commit_id
        new = msgspec.structs.replace(
            old,
            branches=branches,
            head=old.head or branch,
            indexes=indexes,
            updated=utcnow(),
            pushes=old.pushes + 1,
        )
        message = f"ledger distributed commit {commit_id[:12]} to {branch}"
        try:
            swap_refs(self.remote, self.view, encode_refs(new), message, self.url)
        except RemoteConflictError as e:
            raise RemoteConflictError(
                f"{self.url} changed while the distributed commit was running (another writer "
                f"moved its refs): nothing was committed; commit again (the packs already sent "
                f"stay and are not sent twice)",
                **e.fields,
            ) from None
