"""Resume lineage: which commit one ``Ledger`` instance's live state came from.

This module owns the rule that gives a commit its parent once a process has
restored (or declared, ``base_on``) a commit other than its branch's tip, and
the automatic branch that keeps the tip it moves the branch off
(docs/design-decisions.md, "History"). It is pure: it plans ref changes from a
ref snapshot and a parent lookup it is handed; the stage applies them with
one compare-and-swap. It never reads the store or moves a ref itself.

Names: the old tip ``T`` of branch ``B`` is kept on branch ``orig/B/<T[:12]>``
("the original B"), created by an ordinary ref event whose reason says why.
"""

from __future__ import annotations

import threading

import msgspec

from ledger.errors import DetachedHeadError
from ledger.history.graph import ParentsOf, ancestors
from ledger.history.refs import BRANCH_PREFIX, TAG_PREFIX, check_ref_name
from ledger.history.revisions import head_target

AUTO_BRANCH_PREFIX = "orig/"
"""Automatic branches are named ``orig/<branch>/<old tip, 12 hex digits>``."""


def commit_target(refs: dict[str, str], branch: str | None) -> tuple[str, str | None]:
    """The branch a commit goes to and its parent: ``branch`` (its tip, or HEAD's commit for a
    new branch), else the branch HEAD is on.

    Raises:
        DetachedHeadError: HEAD is detached and ``branch`` is None.

    Example:
        >>> commit_target({"HEAD": "ref: refs/heads/main"}, None)
        ('main', None)
    """
    head_branch, head_id = head_target(refs)
    if branch is not None:
        check_ref_name(branch, "branch")
        existing = refs.get(BRANCH_PREFIX + branch)
        return branch, existing if existing is not None else head_id
    if head_branch is None:
        raise DetachedHeadError(
            f"HEAD is detached at {head_id and head_id[:12]}; pass branch='name' to commit, "
            "or switch to a branch first",
            commit=head_id,
        )
    return head_branch, head_id


class CommitPlan(msgspec.Struct, frozen=True):
    """Where a commit goes: its parent and the ref changes besides moving its branch.

    ``keep`` maps a new automatic branch ref to the old tip it keeps; ``reason``
    is the event-log note of that ref event (empty when nothing is kept).
    """

    parent: str | None
    keep: dict[str, str] = msgspec.field(default_factory=dict)
    reason: str = ""


def auto_branch(branch: str, tip: str, refs: dict[str, str]) -> str:
    """The automatic branch (full ref) that keeps ``tip``, the old tip of ``branch``.

    A free name: ``orig/<branch>/<tip[:12]>``, with ``-2``, ``-3`` ... appended in
    the (unlikely) case that name is taken by another commit.

    Example:
        >>> auto_branch("main", "ab" * 32, {})
        'refs/heads/orig/main/abababababab'
    """
    base = f"{BRANCH_PREFIX}{AUTO_BRANCH_PREFIX}{branch}/{tip[:12]}"
    name, n = base, 1
    while refs.get(name) not in (None, tip):
        n += 1
        name = f"{base}-{n}"
    return name


class Lineage:
    """The commit one ledger instance's live state came from, and whether it was restored.

    ``explicit`` is True after ``restore``/``base_on`` until the next commit:
    only then does a commit take ``commit`` as its parent even where the
    target branch is elsewhere. After a commit, ``commit`` is the new commit
    and the next commit follows the ordinary rule (the branch's tip), which is
    the same commit unless another writer moved the branch meanwhile.

    Example:
        >>> lin = Lineage()
        >>> lin.set("ab" * 32, explicit=True)
        >>> lin.commit[:4], lin.explicit
        ('abab', True)
    """

    def __init__(self) -> None:
        self.commit: str | None = None
        self.explicit = False
        self.source = ""  # what set it, for the event log: "restore of best", ...
        self._lock = threading.Lock()

    def set(self, commit: str, *, explicit: bool, source: str = "") -> None:
        """Record that the live state is ``commit`` (restored/declared, or just committed)."""
        with self._lock:
            self.commit = commit
            self.explicit = explicit
            self.source = source

    def plan(
        self,
        refs: dict[str, str],
        target: str,
        default_parent: str | None,
        parents_of: ParentsOf,
    ) -> CommitPlan:
        """The parent of a commit to branch ``target`` and what it must keep.

        ``default_parent`` is the ordinary rule's parent (the target's tip, or
        HEAD's commit for a new branch). With an explicit base, the parent is the
        base; the target's tip, when the base does not descend from it and no
        other branch or tag reaches it, is kept on an automatic branch.
        """
        with self._lock:
            base, explicit, source = self.commit, self.explicit, self.source
        if base is None or not explicit:
            return CommitPlan(parent=default_parent)
        tip = refs.get(BRANCH_PREFIX + target)
        if tip is None or tip == base or tip in ancestors(parents_of, [base]):
            return CommitPlan(parent=base)
        others = [
            cid
            for ref, cid in refs.items()
            if ref != BRANCH_PREFIX + target and ref.startswith((BRANCH_PREFIX, TAG_PREFIX))
        ]
        if tip in ancestors(parents_of, others):
            return CommitPlan(parent=base)  # still reachable: nothing to keep
        keep = auto_branch(target, tip, refs)
        why = source or f"resume from {base[:12]}"
        reason = (
            f"keep the old tip {tip[:12]} of {target}: the next commit on {target} "
            f"continues from {base[:12]} ({why}), which does not descend from it"
        )
        return CommitPlan(parent=base, keep={keep: tip}, reason=reason)
