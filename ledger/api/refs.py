"""Moving refs for people: branch, tag, switch, delete and rename branches.

This module owns the safety rules of ref operations (no deleting the checked
out branch, no losing unmerged commits without force, tags never move). Every
move is one compare-and-swap through ``RefStore.update``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ledger.api.core import LedgerCore
from ledger.errors import (
    RefNameError,
    RevisionNotFoundError,
    UnmergedBranchError,
)
from ledger.history.graph import ancestors
from ledger.history.records import (
    Commit,
)
from ledger.history.refs import (
    BRANCH_PREFIX,
    HEAD,
    SYMREF_PREFIX,
    TAG_PREFIX,
    check_ref_name,
)
from ledger.history.revisions import head_target


class RefOps(LedgerCore):
    """Branch, tag and HEAD operations of a ledger."""

    @contextlib.contextmanager
    def _rooting(self, rev: str) -> Iterator[str]:
        """Resolve ``rev`` for a new ref, safe against a concurrent gc.

        Holds the gc lock shared while the caller moves the ref (like a commit),
        after checking, with the pack list re-read, that the commit is still stored:
        a commit reachable from no ref may have been swept by another process.
        """
        with self.gc_lock.hold(shared=True):
            self.store.sync()
            cid = self.resolve(rev)
            if self.store.locate(bytes.fromhex(cid)) is None:
                self._records.pop(cid, None)
                raise RevisionNotFoundError(
                    f"commit {cid[:12]} ({rev!r}) is no longer stored: gc removed it after "
                    "it became unreachable",
                    revision=rev,
                )
            yield cid

    def branch(self, name: str, at: str = "HEAD") -> Commit:
        """Create branch ``name`` at revision ``at`` (HEAD does not move).

        Raises:
            RefNameError: the name is invalid or the branch exists.

        Example:
            >>> lg.branch("exp-b", at="main~2")  # doctest: +SKIP
        """
        check_ref_name(name, "branch")
        with self._lock:
            self._check_open()
            with self._rooting(at) as cid:
                if BRANCH_PREFIX + name in self.refs.snapshot():
                    raise RefNameError(
                        f"branch {name!r} already exists; pick another name or switch to it",
                        name=name,
                    )
                self.refs.update({BRANCH_PREFIX + name: (None, cid)}, f"branch {name} at {at}")
            return Commit.from_record(cid, self.record(cid))

    def move_branch(
        self, name: str, to: str, *, expected: str | None, reason: str | None = None
    ) -> Commit:
        """Point branch ``name`` at revision ``to`` if it still points at ``expected``.

        The one compare-and-swap ref move, for callers that keep their own
        pointers (a ``best`` branch, an importer appending to a branch): if
        another writer moved the branch since the caller read ``expected``,
        nothing moves and ``RefConflictError`` says so.

        Args:
            name: the branch.
            to: the revision it should point at.
            expected: the full commit id it points at now; None: it must not exist yet.
            reason: the note recorded in the event log.

        Raises:
            RefConflictError: the branch does not point at ``expected``.
            RevisionNotFoundError: ``to`` names nothing (or gc removed it).
            RefNameError: ``name`` is not a valid branch name.

        Example:
            >>> old = lg.branches().get("best")  # doctest: +SKIP
            >>> lg.move_branch("best", "main~2", expected=old)  # doctest: +SKIP
        """
        check_ref_name(name, "branch")
        with self._lock:
            self._check_open()
            with self._rooting(to) as cid:
                self.refs.update(
                    {BRANCH_PREFIX + name: (expected, cid)}, reason or f"move branch {name} to {to}"
                )
            return Commit.from_record(cid, self.record(cid))

    def delete_branch(self, name: str, force: bool = False) -> str:
        """Delete a branch; returns the commit id it pointed at.

        Refuses the branch HEAD is on, and a branch whose tip no other branch or
        tag reaches (its commits would lose their last ref) unless ``force``.

        Example:
            >>> lg.delete_branch("exp-b", force=True)  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            ref = BRANCH_PREFIX + name
            tip = refs.get(ref)
            if tip is None:
                raise RefNameError(f"no branch named {name!r}", name=name)
            if head_target(refs)[0] == name:
                raise RefNameError(
                    f"branch {name!r} is checked out (HEAD); switch to another branch first",
                    name=name,
                )
            others = [
                cid
                for other, cid in refs.items()
                if other != ref and other.startswith((BRANCH_PREFIX, TAG_PREFIX))
            ]
            if not force and tip not in ancestors(self.walker(), others):
                raise UnmergedBranchError(
                    f"branch {name!r} (at {tip[:12]}) is not reachable from any other branch or tag; "
                    "tag it, or pass force=True to delete it anyway",
                    branch=name,
                    commit=tip,
                )
            self.refs.update({ref: (tip, None)}, f"delete branch {name}")
            return tip

    def rename_branch(self, old: str, new: str) -> None:
        """Rename a branch (HEAD follows it if attached), atomically.

        Example:
            >>> lg.rename_branch("exp-b", "lr-3e-4")  # doctest: +SKIP
        """
        check_ref_name(new, "branch")
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            tip = refs.get(BRANCH_PREFIX + old)
            if tip is None:
                raise RefNameError(f"no branch named {old!r}", name=old)
            if BRANCH_PREFIX + new in refs:
                raise RefNameError(f"branch {new!r} already exists; pick another name", name=new)
            changes: dict[str, tuple[str | None, str | None]] = {
                BRANCH_PREFIX + old: (tip, None),
                BRANCH_PREFIX + new: (None, tip),
            }
            if head_target(refs)[0] == old:
                changes[HEAD] = (refs[HEAD], SYMREF_PREFIX + BRANCH_PREFIX + new)
            self.refs.update(changes, f"rename branch {old} to {new}")

    def tag(self, name: str, at: str = "HEAD") -> Commit:
        """Create tag ``name`` at ``at``; tags never move.

        Example:
            >>> lg.tag("v1")  # doctest: +SKIP
        """
        check_ref_name(name, "tag")
        with self._lock:
            self._check_open()
            with self._rooting(at) as cid:
                if TAG_PREFIX + name in self.refs.snapshot():
                    raise RefNameError(
                        f"tag {name!r} already exists; tags never move, pick another name",
                        name=name,
                    )
                self.refs.update({TAG_PREFIX + name: (None, cid)}, f"tag {name} at {at}")
            return Commit.from_record(cid, self.record(cid))

    def switch(self, rev: str) -> Commit | None:
        """Move HEAD: onto a branch, or detached onto any other revision.

        Returns the commit HEAD now points at (None for an unborn branch).

        Example:
            >>> lg.switch("exp-b")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            refs = self.refs.snapshot()
            old = refs.get(HEAD)
            if BRANCH_PREFIX + rev in refs or (rev.startswith(BRANCH_PREFIX) and rev in refs):
                ref = rev if rev.startswith(BRANCH_PREFIX) else BRANCH_PREFIX + rev
                self.refs.update({HEAD: (old, SYMREF_PREFIX + ref)}, f"switch to {rev}")
                cid = refs[ref]
            else:
                with self._rooting(rev) as cid:
                    self.refs.update({HEAD: (old, cid)}, f"switch to {rev} (detached)")
            return Commit.from_record(cid, self.record(cid))
