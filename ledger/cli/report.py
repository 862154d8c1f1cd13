"""``ledger show``, ``ledger diff`` and ``ledger du``: the API's reports, printed.

This module owns how ``ShowReport``, ``DiffReport`` and ``DuReport`` look in
a terminal (under ``--json`` they are encoded as they are). Every figure comes
from ``Ledger.show/diff/du``; nothing here computes one or reads ledger bytes.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.cli._common import (
    age,
    aligned,
    emit,
    fmt,
    fmt_step,
    global_options,
    human_bytes,
    open_ledger,
    progress,
    row,
    short,
    signed,
    table,
)

if TYPE_CHECKING:  # loaded by the command that runs: `ledger --help` loads no ledger
    from ledger import Commit
    from ledger.inspect import DiffReport, DuReport, FieldChange, ShowReport

VALUE_WIDTH = 60


@click.command("show")
@click.argument("rev", default="HEAD")
@global_options
def show_command(rev: str) -> None:
    """Show one commit's metadata and tensors.

    Metrics, params, captured metadata, write stats, every tensor (dtype,
    shape, size) and every plain value.
    """
    report = open_ledger().show(rev)
    emit(report, lambda con: render_show(con, report))


@click.command("diff")
@click.argument("a")
@click.argument("b")
@click.option("--all", "show_all", is_flag=True, help="Also list what is the same.")
@global_options
def diff_command(a: str, b: str, show_all: bool) -> None:
    """Compare two commits: metadata, then tensors.

    Metrics (with deltas), params, metadata and the state's plain values and
    files side by side, then tensors added, removed and changed (bytes
    changed, relative L2, max abs).

    Only what differs is listed unless --all; --json always holds everything
    (each field says whether it is the same).
    """
    lg = open_ledger()
    with progress(f"comparing {a} and {b}"):
        report = lg.diff(a, b)
    emit(report, lambda con: render_diff(con, report, show_all))


@click.command("du")
@global_options
def du_command() -> None:
    """Space used, dedup and compression ratios.

    Logical bytes (what commits hold), unique bytes (distinct chunks), stored
    bytes (pack files), overall and per branch.
    """
    lg = open_ledger()
    with progress("measuring"):
        report = lg.du()
    emit(report, lambda con: render_du(con, report))


# -- rendering -----------------------------------------------------------------------


def _block(con: Console, t: Table) -> None:
    con.print()
    con.print(t)


def _clip(value: Any) -> str:
    text = fmt(value)
    return text if len(text) <= VALUE_WIDTH else text[: VALUE_WIDTH - 1] + "…"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def _header(c: Commit) -> list[tuple[str, str]]:
    when = c.time.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return [
        ("branch", c.branch or "-"),
        ("parents", " ".join(short(p) for p in c.parents) or "-"),
        ("date", f"{when} ({age(c.time)})"),
        ("step", fmt(c.step)),
        ("epoch", fmt(c.epoch)),
        ("message", c.message or ""),
    ]


def render_show(con: Console, report: ShowReport) -> None:
    """Print a :class:`ShowReport` (``ledger show``).

    Example:
        >>> render_show(console(), lg.show("HEAD"))  # doctest: +SKIP
    """
    c = report.commit
    con.print(Text(f"commit {c.id}", style="yellow"))
    for key, value in _header(c):
        con.print(Text(f"{key:<8} {value}"))
    if c.metrics:
        t = table("metric", "value", numeric=("value",), title="metrics")
        for name, v in c.metrics.items():
            row(t, name, v)
        _block(con, t)
    for title, fields in (("params", c.params), ("meta", c.meta), ("stats", _stats(c))):
        flat = _flatten(fields)
        if flat:
            t = table("key", "value", title=title)
            for key, v in flat.items():
                row(t, key, _clip(v))
            _block(con, t)
    if report.expired:
        con.print()
        con.print(f"state: {report.expired}")
        return
    t = table(
        "tensor",
        "dtype",
        "shape",
        "size",
        "chunks",
        numeric=("size", "chunks"),
        title=f"tensors ({len(report.tensors)}, {human_bytes(report.logical_bytes)})",
    )
    for info in report.tensors:
        row(t, info.path, info.dtype, info.shape, human_bytes(info.nbytes), info.chunks)
    _block(con, t)
    if report.values:
        t = table("path", "value", title=f"values ({len(report.values)})")
        for path, v in report.values.items():
            row(t, path, _clip(v))
        _block(con, t)


def _stats(c: Commit) -> dict[str, Any]:
    s = c.stats
    return {
        "logical": human_bytes(s.logical_bytes),
        "written": human_bytes(s.bytes_written),
        "chunks written": f"{s.chunks_written} of {s.chunks_total}"
        + (f" ({s.chunks_trusted} unchanged, not read)" if s.chunks_trusted else ""),
        "tensors": s.tensors,
        "duration": f"{s.duration_s:.3f}s",
    }


def render_diff(con: Console, report: DiffReport, show_all: bool = False) -> None:
    """Print a :class:`DiffReport` (``ledger diff A B``); only differences unless ``show_all``.

    Example:
        >>> render_diff(console(), lg.diff("main", "exp"))  # doctest: +SKIP
    """
    a, b = report.a, report.b
    sides = [
        [side, short(c.id), c.branch or "-", fmt_step(c.step), c.message or ""]
        for side, c in (("a", a), ("b", b))
    ]
    for line in aligned(sides):
        con.print(Text(line), soft_wrap=True)
    col_a, col_b = f"a {short(a.id)}", f"b {short(b.id)}"
    metrics = [m for m in report.metrics if show_all or m.a != m.b]
    if metrics:
        t = table("metric", col_a, col_b, "delta", numeric=(col_a, col_b, "delta"), title="metrics")
        for m in metrics:
            row(t, m.name, m.a, m.b, signed(m.delta))
        _block(con, t)
    for title, fields in (
        ("params", report.params),
        ("meta", report.meta),
        ("state values", report.values),
    ):
        _render_fields(con, title, fields, col_a, col_b, show_all)
    td = report.tensors
    if td.unavailable:
        con.print(Text(f"tensors: not compared: {td.unavailable}"))
        return
    con.print()
    con.print(
        Text(
            f"tensors: {len(td.changed)} changed, {len(td.added)} added, "
            f"{len(td.removed)} removed, {td.unchanged} unchanged"
        )
    )
    if td.changed:
        t = table(
            "changed",
            "dtype",
            "shape",
            "bytes changed",
            "rel L2",
            "max abs",
            numeric=("bytes changed", "rel L2", "max abs"),
        )
        for ch in td.changed:
            row(t, ch.path, ch.dtype, ch.shape, ch.bytes_changed, ch.rel_l2, ch.max_abs)
        _block(con, t)
    for title, paths in (("added", td.added), ("removed", td.removed)):
        if paths:
            t = table(title)
            for path in paths:
                row(t, path)
            _block(con, t)


VOLATILE = ("run.",)


def _render_fields(
    con: Console,
    title: str,
    fields: list[FieldChange],
    col_a: str,
    col_b: str,
    show_all: bool,
) -> None:
    # run.* (start time, elapsed seconds) differs between any two commits: noise unless --all.
    shown = [f for f in fields if show_all or not (f.same or f.key.startswith(VOLATILE))]
    if not shown:
        return
    t = table(title, col_a, col_b, title=None if show_all else f"{title} (differing)")
    for f in shown:
        row(t, f.key, _clip(f.a), _clip(f.b))
    _block(con, t)


def render_du(con: Console, report: DuReport) -> None:
    """Print a :class:`DuReport` (``ledger du``).

    Example:
        >>> render_du(console(), lg.du())  # doctest: +SKIP
    """
    t = table("measure", "value", numeric=("value",))
    t.show_header = False
    for key, value in (
        ("commits", str(report.commits)),
        ("logical", human_bytes(report.logical_bytes)),
        ("unique", human_bytes(report.unique_bytes)),
        ("stored", human_bytes(report.stored_bytes)),
        ("chunks stored", human_bytes(report.chunk_stored_bytes)),
        ("dedup ratio", f"{report.dedup_ratio:.2f}x"),
        ("compression ratio", f"{report.compression_ratio:.2f}x"),
    ):
        row(t, key, value)
    con.print(t)
    if report.branches:
        cols = ("branch", "commits", "logical", "unique", "exclusive")
        bt = table(*cols, numeric=cols[1:])
        for u in report.branches:
            row(
                bt,
                u.branch,
                u.commits,
                human_bytes(u.logical_bytes),
                human_bytes(u.unique_bytes),
                human_bytes(u.exclusive_bytes),
            )
        _block(con, bt)
