"""Retention: which commits keep their state.

This module owns evaluating policies over branch histories. A commit keeps its
state when any policy in force for any branch whose history holds it keeps
it, when it is a branch head or tagged, or when no policy at all applies to
its branches. Policies in force for a branch are the ledger-wide set plus that
branch's own set. It decides; it never deletes (gc.py does).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ledger.history.records import Commit, KeepBest, KeepEvery, KeepLast, KeepWithin, Policy

CustomPolicy = Callable[[list[Commit]], Iterable[Any]]
AnyPolicy = Policy | CustomPolicy


def describe(policy: AnyPolicy) -> str:
    """A short human name for a policy.

    Example:
        >>> describe(KeepLast(3))
        'KeepLast(3)'
    """
    if isinstance(policy, KeepLast):
        return f"KeepLast({policy.n})"
    if isinstance(policy, KeepBest):
        return f"KeepBest({policy.metric!r}, k={policy.k}, mode={policy.mode!r})"
    if isinstance(policy, KeepEvery):
        return f"KeepEvery({policy.steps})"
    if isinstance(policy, KeepWithin):
        return f"KeepWithin({policy.seconds:g}s)"
    return f"custom {getattr(policy, '__name__', type(policy).__name__)}"


def apply_policy(policy: AnyPolicy, history: list[Commit], now: dt.datetime) -> set[str]:
    """Ids a policy keeps from one branch's history (newest first)."""
    if isinstance(policy, KeepLast):
        return {c.id for c in history[: policy.n]}
    if isinstance(policy, KeepBest):
        scored = [c for c in history if policy.metric in c.metrics]
        scored.sort(key=lambda c: c.metrics[policy.metric], reverse=policy.mode == "max")
        return {c.id for c in scored[: policy.k]}
    if isinstance(policy, KeepEvery):
        return {c.id for c in history if c.step is not None and c.step % policy.steps == 0}
    if isinstance(policy, KeepWithin):
        cutoff = now - dt.timedelta(seconds=policy.seconds)
        return {c.id for c in history if c.time >= cutoff}
    kept = set()
    for item in policy(list(history)):
        kept.add(item.id if isinstance(item, Commit) else str(item))
    return kept


def plan(
    histories: Mapping[str, list[Commit]],
    pinned: Iterable[str],
    policies_for: Callable[[str], Sequence[AnyPolicy]],
    now: dt.datetime,
) -> tuple[set[str], dict[str, str]]:
    """(ids whose state is kept, {id: why it expires}) over every branch.

    Args:
        histories: branch -> its commits, newest first.
        pinned: ids always kept (branch heads, tags, HEAD).
        policies_for: the policies in force on a branch.
        now: the time ``KeepWithin`` measures from.
    """
    keep = set(pinned)
    dropped_by: dict[str, list[str]] = {}
    for branch, history in histories.items():
        policies = list(policies_for(branch))
        if not policies:
            keep.update(c.id for c in history)
            continue
        kept_here: set[str] = set()
        for policy in policies:
            kept_here |= apply_policy(policy, history, now)
        keep |= kept_here
        names = ", ".join(describe(p) for p in policies)
        for c in history:
            if c.id not in kept_here:
                dropped_by.setdefault(c.id, []).append(f"{names} on branch {branch!r}")
    expire = {
        cid: "no retention policy kept it (" + "; ".join(why) + ")"
        for cid, why in dropped_by.items()
        if cid not in keep
    }
    return keep, expire
