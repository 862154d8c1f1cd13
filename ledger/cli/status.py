"""``ledger status``: HEAD, branch, last commit, retention, space and remotes, at a glance.

This module owns how ``Ledger.status``'s :class:`~ledger.api.status.StatusReport`
looks in a terminal (``--json`` prints it as it is). It reads no tensor, imports
no torch or pyarrow, and never touches the network: remotes are compared as the
last fetch or push left their tracking refs.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

import click
from rich.console import Console

from ledger.cli._common import age, emit, fmt, fmt_step, global_options, human_bytes, open_ledger
from ledger.cli._common import short as short_id

if TYPE_CHECKING:  # loaded by the command that runs: `ledger --help` loads no ledger
    from ledger.api.status import StatusReport, TrackStatus


@click.command("status")
@global_options
def status_command() -> None:
    """Show HEAD, the branch, its last commit, retention, space and remotes.

    Remotes' ahead/behind are as of the last fetch or push (no network);
    run `ledger fetch` first for today's answer.
    """
    report = open_ledger().status()
    emit(report, lambda con: render_status(con, report))


def render_status(con: Console, r: StatusReport) -> None:
    """Print a status report, one fact a line.

    Example:
        >>> render_status(Console(), lg.status())  # doctest: +SKIP
        on branch main at 3f2a9c1b7d4e  step 300  loss=0.31  2m ago
    """
    now = dt.datetime.now(dt.timezone.utc)
    where = f"on branch {r.branch}" if r.branch is not None else "HEAD detached"
    c = r.head
    if c is None:
        con.print(f"{where}, no commit yet", highlight=False)
    else:
        metrics = " ".join(f"{k}={fmt(v)}" for k, v in c.metrics.items())
        parts = [f"{where} at {short_id(c.id)}", fmt_step(c.step), metrics, age(c.time, now)]
        con.print("  ".join(p for p in parts if p), highlight=False)
        if c.message:
            con.print(f"  {c.message}", highlight=False)
    con.print(f"retention: {', '.join(r.retention) or 'none (every commit keeps its state)'}")
    if r.expired:
        con.print(f"expired: {r.expired} commits (metadata only)", highlight=False)
    con.print(
        f"stored: {human_bytes(r.stored_bytes)}; free on disk: {human_bytes(r.free_bytes)}",
        highlight=False,
    )
    for remote in r.remotes:
        when = "never fetched" if remote.fetched is None else f"as of {age(remote.fetched, now)}"
        con.print(f"remote {remote.name} ({remote.url}), {when}", highlight=False)
        for t in remote.branches:
            con.print(f"  {t.branch}: {_compare(t)}", highlight=False)


def _compare(t: TrackStatus) -> str:
    if t.local is None:
        return f"only on the remote (at {short_id(t.remote)})"
    if t.ahead is None or t.behind is None:
        return "unknown (fetch to bring the remote's commit records)"
    if t.ahead == t.behind == 0:
        return "up to date"
    return f"ahead {t.ahead}, behind {t.behind}"
