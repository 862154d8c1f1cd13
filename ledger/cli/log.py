"""``ledger log``: one line per commit, optionally with the branch graph.

This module owns choosing which commits a log shows (one revision's
first-parent history, or every commit reachable from any ref) and laying the
line out. The drawing itself is ``ledger.cli.graph``'s; the history comes from
``Ledger.log`` and ``Ledger.record``. It never writes.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from ledger.cli._common import (
    age,
    emit,
    fmt,
    fmt_step,
    global_options,
    open_ledger,
    options,
    short,
)
from ledger.cli.graph import GraphRow, draw, topo_order
from ledger.errors import RefNameError

if TYPE_CHECKING:  # loaded by the command that runs: `ledger --help` loads no ledger
    from ledger import Commit, Ledger

KEY_METRICS = 3
# HF Trainer logs eval_loss, eval_accuracy...; Lightning users often val_loss/val_acc
EVAL_PREFIXES = ("eval_", "eval/", "val_", "val/")


@click.command("log")
@click.argument("rev", required=False)
@click.option("--graph", is_flag=True, help="Draw the branch graph (all refs unless REV is given).")
@click.option("--branch", "branch", metavar="B", help="Show the history of branch B.")
@click.option("--all", "all_refs", is_flag=True, help="Every commit reachable from any ref.")
@click.option("-n", "--max-count", type=click.IntRange(min=0), help="Show at most N commits.")
@click.option(
    "--metrics",
    "metric_names",
    metavar="A,B",
    help="Metric columns to show, in order (default: watched and eval_* metrics first, 3 in all).",
)
@global_options
def log_command(
    rev: str | None,
    graph: bool,
    branch: str | None,
    all_refs: bool,
    max_count: int | None,
    metric_names: str | None,
) -> None:
    """List commits, newest first (--graph draws branches).

    One line per commit: id, branch, step, key metrics, message, age.
    A commit whose state retention dropped is marked [expired].

    Without REV: HEAD's history. With --all or --graph: every commit reachable
    from a branch, tag or HEAD, merged by time.
    """
    if rev is not None and branch is not None:
        raise click.UsageError("give REV or --branch, not both")
    if all_refs and (rev is not None or branch is not None):
        raise click.UsageError("--all shows every ref; drop REV/--branch or --all")
    lg = open_ledger()
    if branch is not None and branch not in lg.branches():
        raise RefNameError(f"no branch named {branch!r}; see `ledger branch`")
    start = rev if rev is not None else branch
    if graph or all_refs:
        tips = [lg.resolve(t) for t in ([start] if start is not None else _ref_tips(lg))]
        if max_count is None:
            commits = _reachable(lg, tips)
            parents = {c.id: c.parents for c in commits.values()}
            order = topo_order(parents, {c.id: c.time for c in commits.values()})
        else:  # the newest N only, found by generation numbers: the walk reads what it shows
            commits, parents, order = _newest(lg, tips, max_count)
        rows = draw(order, parents) if graph else [GraphRow("", cid) for cid in order]
    else:  # the first N of the history only: the walk stops there
        commits = {c.id: c for c in itertools.islice(lg.log(start or "HEAD"), max_count)}
        rows = [GraphRow("", cid) for cid in commits]
    rows = _limit(rows, max_count)
    shown = [commits[r.commit] for r in rows if r.commit is not None]
    expired = set(lg.expired())
    doc: dict[str, object] = {"commits": shown, "expired": [c.id for c in shown if c.id in expired]}
    if graph:
        doc["graph"] = rows
    columns = Columns(_split(metric_names), lg.watched_metrics(), expired)
    emit(doc, lambda con: _render(con, lg, rows, commits, columns))


def _ref_tips(lg: Ledger) -> list[str]:
    tips = [*lg.branches().values(), *lg.tags().values()]
    head = lg.head
    if head is not None:
        tips.append(head.id)
    return tips


def _newest(
    lg: Ledger, tips: list[str], count: int
) -> tuple[dict[str, Commit], dict[str, list[str]], list[str]]:
    """The first ``count`` commits of the topological order, their records, and their parents
    (each parent listed too, so the graph draws its lane as the whole graph would)."""
    from ledger.history.graph import generation, newest_in_topo_order
    from ledger.history.records import Commit

    memo: dict[str, int] = {}
    order = newest_in_topo_order(
        tips,
        lambda c: lg.record(c).parents,
        lambda c: generation(c, lg.record, memo),
        lambda c: lg.record(c).time,
        count,
    )
    commits = {cid: Commit.from_record(cid, lg.record(cid)) for cid in order}
    parents: dict[str, list[str]] = {p: [] for c in commits.values() for p in c.parents}
    parents.update({c.id: c.parents for c in commits.values()})
    return commits, parents, order


def _reachable(lg: Ledger, tips: Iterable[str]) -> dict[str, Commit]:
    """Every commit reachable from ``tips`` through all parent links."""
    from ledger.history.records import Commit

    found: dict[str, Commit] = {}
    stack = list(tips)
    while stack:
        cid = stack.pop()
        if cid in found:
            continue
        commit = Commit.from_record(cid, lg.record(cid))
        found[cid] = commit
        stack.extend(commit.parents)
    return found


def _limit(rows: list[GraphRow], max_count: int | None) -> list[GraphRow]:
    if max_count is None:
        return rows
    out: list[GraphRow] = []
    count = 0
    for r in rows:
        if r.commit is not None:
            if count == max_count:
                break
            count += 1
        out.append(r)
    return out


def _decorations(lg: Ledger) -> dict[str, list[str]]:
    """Commit id -> ref labels, git style: ``HEAD -> main``, ``exp``, ``tag: v1``."""
    labels: dict[str, list[str]] = {}
    current = lg.current_branch
    head = lg.head
    if head is not None and current is None:
        labels.setdefault(head.id, []).append("HEAD")
    for name, cid in lg.branches().items():
        labels.setdefault(cid, []).append(f"HEAD -> {name}" if name == current else name)
    for name, cid in lg.tags().items():
        labels.setdefault(cid, []).append(f"tag: {name}")
    return labels


@dataclass(frozen=True)
class Columns:
    """What a log line shows of metrics, and which commits are marked expired."""

    chosen: list[str] | None = None  # --metrics: exactly these, in order
    watched: list[str] = field(default_factory=list)  # retention's KeepBest metrics
    expired: set[str] = field(default_factory=set)

    def metrics(self, values: dict[str, float]) -> list[tuple[str, float]]:
        """The (name, value) pairs of one commit's line.

        Example:
            >>> Columns(watched=["val_loss"]).metrics({"lr": 1.0, "eval_acc": 0.5, "val_loss": 2.0})
            [('val_loss', 2.0), ('eval_acc', 0.5), ('lr', 1.0)]
        """
        if self.chosen is not None:
            return [(k, values[k]) for k in self.chosen if k in values]
        first = [k for k in self.watched if k in values]
        evals = [k for k in values if k.startswith(EVAL_PREFIXES) and k not in first]
        rest = [k for k in values if k not in first and k not in evals]
        return [(k, values[k]) for k in [*first, *evals, *rest][:KEY_METRICS]]


def _split(names: str | None) -> list[str] | None:
    if names is None:
        return None
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise click.BadParameter("give metric names separated by commas", param_hint="--metrics")
    return chosen


def commit_fields(
    c: Commit, labels: list[str], now: dt.datetime, columns: Columns | None = None
) -> list[str]:
    """The columns of a log line: id, branch, step, key metrics, message, age.

    Example:
        >>> commit_fields(lg.head, [], now)  # doctest: +SKIP
        ['3f2a9c1b7d4e', 'main', 'step 300', 'loss=0.31 acc=0.91', 'warmup done', '2m ago']
    """
    columns = columns or Columns()
    metrics = " ".join(f"{k}={fmt(v)}" for k, v in columns.metrics(c.metrics))
    message = c.message or ""
    if labels:
        message = f"({', '.join(labels)}) {message}".rstrip()
    if c.id in columns.expired:
        message = f"[expired] {message}".rstrip()
    return [
        short(c.id),
        c.branch or "",
        fmt_step(c.step),
        metrics,
        message,
        age(c.time, now),
    ]


def _render(
    con: Console, lg: Ledger, rows: list[GraphRow], commits: dict[str, Commit], columns: Columns
) -> None:
    if not any(r.commit for r in rows):
        if not options().quiet:
            click.echo("no commits yet", err=True)
        return
    now = dt.datetime.now(dt.timezone.utc)
    labels = _decorations(lg)
    fields = {
        r.commit: commit_fields(commits[r.commit], labels.get(r.commit, []), now, columns)
        for r in rows
        if r.commit is not None
    }
    widths = [max(len(f[i]) for f in fields.values()) for i in range(5)]
    graph_width = max((len(r.graph) for r in rows if r.commit is not None), default=0)
    styles = ("yellow", "green", "", "cyan", "", "dim")
    for r in rows:
        if r.commit is None:
            con.print(Text(r.graph), soft_wrap=True)
            continue
        line = Text(r.graph.ljust(graph_width) + (" " if graph_width else ""))
        cells = fields[r.commit]
        for i, cell in enumerate(cells):
            text = cell if i == len(cells) - 1 else cell.ljust(widths[i]) + "  "
            line.append(text, style=styles[i] or None)
        con.print(line, soft_wrap=True)
