"""Revision syntax: turning ``main``, ``v1``, ``a1b2c3``, ``HEAD``, ``main~2`` into a commit id.

This module owns the grammar (docs/format.md, "Revisions") and its error
messages. It resolves against a ref mapping, the set of known commit ids and a
parent lookup it is handed; it must never read the store itself.

Grammar: ``base ( "~" [N] | "^" )*`` where base is ``HEAD``, a branch, a tag,
a remote-tracking branch (``origin/main``), ``refs/...``, or a full or
unique-prefix (4+ hex chars) commit id. Names are tried in that order, like git.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ledger.errors import AmbiguousRevisionError, EmptyLedgerError, RevisionNotFoundError
from ledger.history.refs import BRANCH_PREFIX, HEAD, REMOTE_PREFIX, SYMREF_PREFIX, TAG_PREFIX

_SUFFIX_RE = re.compile(r"(~\d*|\^)$")
_HEX_RE = re.compile(r"^[0-9a-f]{4,64}$")


def head_target(refs: dict[str, str]) -> tuple[str | None, str | None]:
    """(branch HEAD is attached to or None, commit id HEAD points at or None).

    Example:
        >>> head_target({"HEAD": "ref: refs/heads/main"})
        ('main', None)
    """
    head = refs.get(HEAD)
    if head is None:
        return None, None
    if head.startswith(SYMREF_PREFIX):
        ref = head[len(SYMREF_PREFIX) :]
        branch = ref[len(BRANCH_PREFIX) :] if ref.startswith(BRANCH_PREFIX) else ref
        return branch, refs.get(ref)
    return None, head


def resolve(
    rev: str,
    refs: dict[str, str],
    commit_ids: Callable[[], Iterable[str]],
    first_parent: Callable[[str], str | None],
) -> str:
    """The full commit id that ``rev`` names.

    Raises:
        RevisionNotFoundError: nothing has that name, or ``~N`` walks past the root.
        AmbiguousRevisionError: an id prefix matches several commits.
        EmptyLedgerError: HEAD or a branch is unborn (no commit yet).
    """
    rev = rev.strip()
    steps = 0
    base = rev
    while True:
        m = _SUFFIX_RE.search(base)
        if m is None:
            break
        token = m.group(1)
        steps += 1 if token in ("^", "~") else int(token[1:])
        base = base[: m.start()]
    if not base:
        raise RevisionNotFoundError(f"revision {rev!r} is empty", revision=rev)
    cid = _resolve_base(base, refs, commit_ids)
    for walked in range(steps):
        parent = first_parent(cid)
        if parent is None:
            raise RevisionNotFoundError(
                f"revision {rev!r} goes back {steps} commits but history ends after {walked}",
                revision=rev,
            )
        cid = parent
    return cid


def _resolve_base(base: str, refs: dict[str, str], commit_ids: Callable[[], Iterable[str]]) -> str:
    if base == HEAD or base == "@":
        branch, cid = head_target(refs)
        if cid is None:
            raise EmptyLedgerError(
                f"HEAD is on branch {branch!r}, which has no commit yet; commit first"
            )
        return cid
    for ref in (base, BRANCH_PREFIX + base, TAG_PREFIX + base, REMOTE_PREFIX + base):
        if ref in refs and ref != HEAD:
            return refs[ref]
    lowered = base.lower()
    if _HEX_RE.match(lowered):
        matches = [cid for cid in commit_ids() if cid.startswith(lowered)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(sorted(m[:12] for m in matches)[:5])
            raise AmbiguousRevisionError(
                f"revision {base!r} matches {len(matches)} commits ({shown}); give more characters",
                revision=base,
                candidates=sorted(matches),
            )
    raise RevisionNotFoundError(f"no branch, tag or commit named {base!r}", revision=base)
