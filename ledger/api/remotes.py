"""Remotes on the facade: remote_add, push, fetch, pull, clone, and ``URL@rev`` revisions.

Thin: every method takes the ledger's lock, checks it is open and delegates
to ``ledger.remotes`` (docs/remotes.md), passing the ledger itself as the
``ledger.remotes.protocol.LocalLedger`` those functions are typed with. The
object store's lazy source (``LazySource(root, store)``: a checkout of a
commit whose chunks live only on a remote fetches exactly the chunks the
store lacks) is built from plain parts by ``LedgerCore.__init__`` and holds
no reference to the facade.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar, cast, overload

from ledger.api.notify import Notifying
from ledger.errors import RemoteError, RevisionSyntaxError
from ledger.remotes import fetch as _fetch
from ledger.remotes import push as _push
from ledger.remotes import tracking
from ledger.remotes.collect import RemoteGcReport, collect_remote
from ledger.remotes.fetch import FetchResult, PullResult
from ledger.remotes.hub import creating_public
from ledger.remotes.lazy import LazySource
from ledger.remotes.push import PushPlan, PushResult
from ledger.remotes.transfer import Progress

if TYPE_CHECKING:  # exporting weights needs torch; a plain push does not
    from ledger.interop.export import CommitReader

R = TypeVar("R", bound="RemoteOps")
log = logging.getLogger("ledger.remotes")


class RemoteOps(Notifying):
    """Push to and pull from directories, S3 (fsspec) and the Hugging Face Hub."""

    def remote_add(
        self,
        name: str,
        url: str,
        *,
        hf_token_name: str | None = None,
        aws_profile: str | None = None,
    ) -> None:
        """Register remote ``name`` at ``url``: a path or ``file://``, ``s3://bucket/prefix``
        (any fsspec URL), or ``hf://user/repo``. Credentials stay in each client's settings.

        Args:
            name: the remote's name (``origin`` ...).
            url: where it is.
            hf_token_name: for a Hub remote, which of the tokens ``huggingface_hub`` stores
                (``hf auth login``) to use, by name (default: the client's active token).
            aws_profile: for an S3 remote, which AWS profile to use (default: the
                client's usual chain: environment, then the default profile).

        Raises:
            RemoteURLError: the URL is malformed or carries a credential, or a credential
                name does not fit its kind.
            RemoteAuthError: no stored token or profile has the name given.
            RemoteError: the name is taken or invalid.

        Example:
            >>> lg.remote_add("origin", "s3://bucket/runs/bert", aws_profile="ml")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            tracking.remote_add(self, name, url, hf_token_name, aws_profile)

    def remote_settings(self) -> dict[str, dict[str, str]]:
        """Remote name -> its settings (``url``, and ``hf_token_name``/``aws_profile`` if set).

        Example:
            >>> lg.remote_settings()  # doctest: +SKIP
            {'origin': {'url': 'hf://me/run', 'hf_token_name': 'work'}}
        """
        self._check_open()
        return tracking.remote_settings(self)

    def remotes(self) -> dict[str, str]:
        """Remote name -> URL.

        Example:
            >>> lg.remotes()  # doctest: +SKIP
            {'origin': 's3://bucket/runs/bert'}
        """
        self._check_open()
        return tracking.remotes(self)

    @overload
    def push(
        self,
        remote: str | None = None,
        branch: str | None = None,
        *,
        all: bool = False,
        tags: bool = False,
        export_weights: bool = False,
        public: bool = False,
        dry_run: Literal[False] = False,
        progress: Progress | None = None,
    ) -> PushResult: ...

    @overload
    def push(
        self,
        remote: str | None = None,
        branch: str | None = None,
        *,
        all: bool = False,
        tags: bool = False,
        export_weights: bool = False,
        public: bool = False,
        dry_run: Literal[True],
        progress: Progress | None = None,
    ) -> PushPlan: ...

    def push(
        self,
        remote: str | None = None,
        branch: str | None = None,
        *,
        all: bool = False,
        tags: bool = False,
        export_weights: bool = False,
        public: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> PushResult | PushPlan:
        """Send ``branch`` (default: HEAD's) to ``remote``: only the objects it lacks.

        The remote's refs move last, by compare-and-swap: if someone pushed since
        this ledger last saw the remote, nothing moves and ``RemoteConflictError``
        says to fetch first. Expired commits send their record, not their state.

        Args:
            remote: remote name (default ``origin``).
            branch: the branch to push (default: the one HEAD is on).
            all: push every branch.
            tags: push every tag too.
            export_weights: (Hub) also upload the head's model in the ``hf`` layout under
                ``weights/`` (``from_pretrained(repo, subfolder="weights")`` loads it).
            public: (Hub) create a missing repo public; by default it is created private.
                An existing repo keeps its visibility.
            dry_run: change nothing on either side; return the :class:`PushPlan`
                (commits and objects to send with their bytes, refs to move with
                the values expected there).
            progress: called with the bytes of each pack as it is stored.

        Returns:
            :class:`PushResult`: ``commits``, ``chunks_sent``, ``bytes_sent``, ``bytes_skipped``;
            with ``dry_run``, the :class:`PushPlan` instead.

        Example:
            >>> lg.push("origin", dry_run=True).bytes  # doctest: +SKIP
            1048576
            >>> r = lg.push("origin")  # doctest: +SKIP
            >>> r.chunks_sent, r.bytes_sent  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            name = remote or tracking.default_remote(self)
            if dry_run:
                return _push.plan_push(self, name, branch, all_branches=all, tags=tags)
            # The facade composes checkout (ledger.api.restore) with this mixin: a Ledger reads state.
            reader = cast("CommitReader", self) if export_weights else None
            with (
                self._reporting("push-failed", {"remote": name}, branch=branch),
                creating_public(public),
            ):
                result = _push.push(
                    self,
                    name,
                    branch,
                    all_branches=all,
                    tags=tags,
                    export=reader,
                    progress=progress,
                )
            log.info(
                "push to %s: %d commits, %d chunks (%d bytes) sent, %d bytes already there",
                name,
                result.commits,
                result.chunks_sent,
                result.bytes_sent,
                result.bytes_skipped,
            )
            detail = {"remote": name, "commits": result.commits, "bytes": result.bytes_sent}
            self._raise_event("push", branch=branch or self.current_branch, detail=detail)
            return result

    def fetch(self, remote: str | None = None, progress: Progress | None = None) -> FetchResult:
        """Bring the remote's commit records and refs (``origin/main`` ...); chunks come on demand.

        Example:
            >>> lg.fetch("origin"); lg.resolve("origin/main")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            result = _fetch.fetch(self, remote or tracking.default_remote(self), progress)
        log.info(
            "fetch from %s: %d commits, %d objects (%d bytes)",
            result.remote,
            result.commits,
            result.objects,
            result.bytes_received,
        )
        return result

    def pull(
        self,
        remote: str | None = None,
        branch: str | None = None,
        progress: Progress | None = None,
    ) -> PullResult:
        """Fetch, then fast-forward ``branch`` (default: HEAD's) with the state it gains.

        Raises:
            DivergedError: both sides have commits the other lacks (no merges).

        Example:
            >>> lg.pull("origin", "main").new  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            name = remote or tracking.default_remote(self)
            result = _fetch.pull(self, name, branch, progress)
        log.info(
            "pull from %s: %s %s -> %s, %d objects (%d bytes)",
            name,
            result.branch,
            (result.old or "-")[:12],
            (result.new or "-")[:12],
            result.objects,
            result.bytes_received,
        )
        return result

    def gc_remote(self, remote: str | None = None, dry_run: bool = False) -> RemoteGcReport:
        """Apply this ledger's retention policies on ``remote``; delete the packs nothing needs.

        Packs partly needed are kept whole. On the Hub the files leave the tip
        of the repo, but its git history keeps them until the history is squashed.

        Example:
            >>> lg.gc_remote("origin", dry_run=True).bytes_freed  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            return collect_remote(self, remote or tracking.default_remote(self), dry_run=dry_run)

    @classmethod
    def clone(
        cls: type[R],
        url: str,
        path: str | os.PathLike[str],
        branch: str | None = None,
        depth: int | None = None,
        progress: Progress | None = None,
    ) -> R:
        """A new ledger at ``path`` from ``url`` (remote ``origin``), HEAD on ``branch``.

        ``depth=1`` fetches every commit record but only the newest commit's chunks:
        "download the latest checkpoint and resume"; older states come on demand.

        Example:
            >>> lg = Ledger.clone("hf://me/bert-run", "ckpt", depth=1)  # doctest: +SKIP
        """
        return _fetch.clone(cls.open, url, Path(path), branch, depth, progress)

    def resolve(self, rev: str) -> str:
        """Like :meth:`LedgerCore.resolve`, plus ``URL@rev`` (``hf://user/repo@main``) on a remote.

        Example:
            >>> lg.checkout("hf://me/bert-run@main")  # doctest: +SKIP
        """
        if "://" in rev:
            self._check_open()
            if "@{" in rev:
                raise RevisionSyntaxError(
                    f"revision {rev!r}: name@{{time}} reads the local event log, so it is "
                    "refused after a remote URL; fetch, then use e.g. origin/main@{2 hours ago}",
                    revision=rev,
                )
            source = self.store.source
            if not isinstance(source, LazySource):
                raise RemoteError("this ledger cannot read from remotes (no lazy source)")
            return source.resolve(rev, self)
        return super().resolve(rev)
