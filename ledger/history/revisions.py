"""Revisions evaluated: ``main``, ``a1b2c3``, ``main~2``, ``step:1000``, ``main@{2 hours ago}``.

This module owns what a parsed revision (``ledger.history.revsyntax``) names
and the not-found and ambiguity errors, which say what was searched
(docs/revisions.md). It resolves against a ref mapping, the known commit ids
and lookups it is handed (parents, commit records, the refs at a moment, the
expired ids); it must never read the store or the event log itself.

A name is tried as ``HEAD``/``@``, an exact ref (``refs/...``), a branch, a
tag, a remote-tracking branch (``origin/main``), then a unique id prefix
(4+ hex chars), like git.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Collection, Iterable

from ledger.errors import AmbiguousRevisionError, EmptyLedgerError, RevisionNotFoundError
from ledger.history.records import CommitRecord, Event, RefView, utcnow
from ledger.history.refs import (
    BRANCH_PREFIX,
    HEAD,
    REMOTE_PREFIX,
    SYMREF_PREFIX,
    TAG_PREFIX,
    apply_event,
)
from ledger.history.revsyntax import (
    UNITS,
    At,
    Epoch,
    Name,
    Relative,
    Rev,
    Select,
    Selector,
    Step,
    When,
    format_rev,
    parse_rev,
)

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
    *,
    record: Callable[[str], CommitRecord] | None = None,
    refs_at: Callable[[dt.datetime], dict[str, str]] | None = None,
    expired: Callable[[], Collection[str]] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
    with_prefix: Callable[[str], Iterable[str]] | None = None,
) -> str:
    """The full commit id that ``rev`` names (grammar: ``ledger.history.revsyntax``).

    ``record`` (commit metadata) serves ``step:``, ``epoch:`` and ``best:``;
    ``refs_at`` (the refs as the event log had them at a moment) serves
    ``name@{when}``; ``expired`` (ids whose state is gone) keeps ``best:`` to
    retained commits. Without one, the forms it serves are refused.
    ``with_prefix`` (the commit ids starting with a lower-case hex prefix, from
    an index) spares an id or id prefix the pass over ``commit_ids``.

    Raises:
        RevisionSyntaxError: the text follows no form of the grammar.
        RevisionNotFoundError: nothing has that name, no commit matches a
            selector, or ``~N`` walks past the root.
        AmbiguousRevisionError: an id prefix, or ``step:N``, matches several commits.
        EmptyLedgerError: HEAD or a branch is unborn (no commit yet).

    Example:
        >>> resolve("main", {"refs/heads/main": "ab" * 32}, list, lambda c: None)[:4]
        'abab'
    """
    if with_prefix is not None:
        lookup = with_prefix
    else:

        def lookup(prefix: str) -> Iterable[str]:
            return (cid for cid in commit_ids() if cid.startswith(prefix))

    ctx = _Context(rev, refs, lookup, first_parent, record, refs_at, expired, now)
    return ctx.evaluate(parse_rev(rev))


class _Context:
    """One resolution: the callables it was handed and the text being resolved."""

    def __init__(
        self,
        text: str,
        refs: dict[str, str],
        with_prefix: Callable[[str], Iterable[str]],
        first_parent: Callable[[str], str | None],
        record: Callable[[str], CommitRecord] | None,
        refs_at: Callable[[dt.datetime], dict[str, str]] | None,
        expired: Callable[[], Collection[str]] | None,
        now: Callable[[], dt.datetime],
    ) -> None:
        self.text = text.strip()
        self.refs = refs
        self.with_prefix = with_prefix
        self.first_parent = first_parent
        self.record = record
        self.refs_at = refs_at
        self.expired = expired
        self.now = now

    def _missing(self, why: str) -> RevisionNotFoundError:
        return RevisionNotFoundError(f"revision {self.text!r}: {why}", revision=self.text)

    def evaluate(self, rev: Rev) -> str:
        base = rev.base
        if isinstance(base, Name):
            cid = _resolve_base(base.name, self.refs, self.with_prefix)
        elif isinstance(base, At):
            cid = self._at(base)
        else:
            cid = self._select(base)
        steps = sum(rev.back)
        for walked in range(steps):
            parent = self.first_parent(cid)
            if parent is None:
                raise self._missing(f"it goes back {steps} commits but history ends after {walked}")
            cid = parent
        return cid

    def _at(self, at: At) -> str:
        if self.refs_at is None:
            raise self._missing(
                "name@{time} reads this ledger's own event log, so it works on local refs "
                "only (fetch, then use origin/main@{...})"
            )
        name = at.name
        if name is None:
            name, _ = head_target(self.refs)
            if name is None:
                raise self._missing(
                    "HEAD is detached, so @{...} has no branch; name one, e.g. main@{2 hours ago}"
                )
        moment = when_utc(at.when, self.now())
        past = self.refs_at(moment)
        try:
            return _resolve_base(name, past, lambda prefix: ())
        except (RevisionNotFoundError, EmptyLedgerError):
            raise self._missing(
                f"the event log shows no commit for {name!r} at "
                f"{moment:%Y-%m-%d %H:%M:%S} UTC (it did not exist yet, or had no commit)"
            ) from None

    def _select(self, sel: Select) -> str:
        if self.record is None:
            raise self._missing("step:, epoch: and best: need commit records, not available here")
        record = self.record
        if sel.scope is None:
            branch, tip = head_target(self.refs)
            if tip is None:
                raise EmptyLedgerError(
                    f"HEAD is on branch {branch!r}, which has no commit yet; commit first"
                )
            where = f"branch {branch!r}" if branch is not None else "HEAD (detached)"
        else:
            tip = self.evaluate(sel.scope)
            where = repr(format_rev(sel.scope))
        history: list[tuple[str, CommitRecord]] = []
        cid: str | None = tip
        while cid is not None:
            history.append((cid, record(cid)))
            cid = self.first_parent(cid)
        searched = f"the first-parent history of {where} ({len(history)} commits)"
        return pick(sel.selector, history, searched, self.text, self.expired)


def pick(
    selector: Selector,
    history: list[tuple[str, CommitRecord]],
    searched: str,
    text: str,
    expired: Callable[[], Collection[str]] | None = None,
) -> str:
    """The id a selector picks from ``history`` (newest first); errors name ``searched``.

    ``step:N`` must match one commit; ``step:<=N`` takes the greatest step at or
    below N (the newest of equals); ``epoch:N`` the newest of that epoch;
    ``best:`` the commit ``KeepBest(metric, k=1, mode)`` keeps among those not expired.

    Example:
        >>> pick(Epoch(1), [], "nothing", "epoch:1")  # doctest: +SKIP
    """
    if isinstance(selector, Step):
        return _pick_step(selector, history, searched, text)
    if isinstance(selector, Epoch):
        for cid, rec in history:
            if rec.epoch == selector.epoch:
                return cid
        epochs = sorted({r.epoch for _, r in history if r.epoch is not None})
        seen = f"epochs {epochs[0]}..{epochs[-1]}" if epochs else "no commit has an epoch"
        raise RevisionNotFoundError(
            f"no commit of epoch {selector.epoch} in {searched}; {seen}", revision=text
        )
    gone = set(expired()) if expired is not None else set()
    scored = [
        (cid, rec.metrics[selector.metric])
        for cid, rec in history
        if cid not in gone
        and selector.metric in rec.metrics
        and not math.isnan(rec.metrics[selector.metric])
    ]
    if not scored:
        names = sorted({m for cid, r in history if cid not in gone for m in r.metrics})
        raise RevisionNotFoundError(
            f"no retained commit in {searched} has metric {selector.metric!r}; "
            f"metrics there: {', '.join(names[:10]) or 'none'}",
            revision=text,
        )
    # A stable sort of the newest-first history, as retention's KeepBest does: the
    # commit best: names is the one KeepBest(k=1) keeps, the newest of equal values.
    scored.sort(key=lambda item: item[1], reverse=selector.mode == "max")
    return scored[0][0]


def _pick_step(
    selector: Step, history: list[tuple[str, CommitRecord]], searched: str, text: str
) -> str:
    steps = [(cid, rec.step) for cid, rec in history if rec.step is not None]
    if selector.at_most:
        below = [(cid, s) for cid, s in steps if s <= selector.step]
        if below:
            top = max(s for _, s in below)
            return next(cid for cid, s in below if s == top)
    else:
        matches = [cid for cid, s in steps if s == selector.step]
        if len(matches) == 1:
            return matches[0]
        if matches:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise AmbiguousRevisionError(
                f"{len(matches)} commits have step {selector.step} in {searched} ({shown}); "
                "give one by id",
                revision=text,
                candidates=matches,
            )
    known = sorted(s for _, s in steps)
    seen = f"steps there run {known[0]}..{known[-1]}" if known else "no commit there has a step"
    how = "at or before" if selector.at_most else "at"
    hint = "" if selector.at_most else "; step:<=N takes the latest at or before N"
    raise RevisionNotFoundError(
        f"no commit {how} step {selector.step} in {searched}; {seen}{hint}", revision=text
    )


def when_utc(when: When, now: dt.datetime) -> dt.datetime:
    """The aware UTC moment of a parsed time; naive times are local time, as in git.

    Example:
        >>> now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
        >>> when_utc(Relative(2, "hour"), now).hour
        22
    """
    if isinstance(when, Relative):
        return now - dt.timedelta(seconds=when.amount * UNITS[when.unit])
    return when.moment.astimezone(dt.timezone.utc)


def refs_as_of(events: Iterable[Event], moment: dt.datetime) -> dict[str, str]:
    """The refs the event log held at ``moment``: its events up to then, replayed.

    Example:
        >>> refs_as_of([], dt.datetime.now(dt.timezone.utc))
        {}
    """
    state = RefView(offset=0, refs={})
    for event in events:
        if event.time > moment:
            break
        apply_event(state, event)
    return state.refs


def _resolve_base(
    base: str, refs: dict[str, str], with_prefix: Callable[[str], Iterable[str]]
) -> str:
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
        matches = list(with_prefix(lowered))
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
