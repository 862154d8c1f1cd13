"""What every ``ledger`` subcommand shares: global options, discovery, output, formatting.

This module owns the rules that find the ledger directory and the two output
channels (stdout: one rich rendering or exactly one JSON
document; stderr: progress and warnings). It must never hold a command's logic
and never read or write ledger bytes itself: that is ``ledger.api``'s job. The
global options (``--dir``, ``--json``, ``-q``) live in ``ledger.cli.options`` and
are re-exported here.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ledger.cli.options import (  # noqa: F401  (re-exported: commands import them from here)
    DEFAULT_DIR_NAME,
    ENV_DIR,
    Options,
    global_options,
    options,
)
from ledger.errors import LedgerError, NotALedgerError

if TYPE_CHECKING:  # opened by the command that needs it: `ledger --help` loads no ledger
    from ledger.api import Ledger

SHORT = 12


class CommandError(LedgerError):
    """A command's own check failed (unknown metric, output directory not empty ...)."""


# -- finding and opening the ledger --------------------------------------------


def find_ledger(explicit: Path | None, env: Mapping[str, str], cwd: Path) -> Path:
    """The ledger directory a command works on.

    Order: ``--dir``, then ``$LEDGER_DIR``, then the nearest ``.ledger``
    directory in ``cwd`` or one of its parents.

    Raises:
        NotALedgerError: none of the three names a directory.

    Example:
        >>> find_ledger(Path("ckpt"), {}, Path("/work"))
        PosixPath('ckpt')
    """
    if explicit is not None:
        return explicit
    if env.get(ENV_DIR):
        return Path(env[ENV_DIR])
    for folder in (cwd, *cwd.parents):
        candidate = folder / DEFAULT_DIR_NAME
        if candidate.is_dir():
            return candidate
    raise NotALedgerError(
        f"no ledger found (no --dir, no ${ENV_DIR}, no {DEFAULT_DIR_NAME} in {cwd} or above); "
        "run `ledger init` or pass --dir"
    )


def open_ledger() -> Ledger:
    """Open the discovered ledger for the current command; it closes when the command ends.

    Example:
        >>> lg = open_ledger()  # doctest: +SKIP
    """
    from ledger.api import Ledger

    ctx = click.get_current_context()
    path = find_ledger(options().dir, os.environ, Path.cwd())
    return ctx.with_resource(Ledger.open(path))


# -- output ----------------------------------------------------------------------


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    item = getattr(obj, "item", None)
    if callable(item):
        return item()
    raise NotImplementedError(f"cannot encode {type(obj).__name__} as JSON")


def to_json(doc: Any) -> str:
    """One JSON document (msgspec Structs, dicts, lists, datetimes, paths, numpy scalars).

    Example:
        >>> to_json({"a": 1})
        '{"a":1}'
    """
    return msgspec.json.encode(doc, enc_hook=_enc_hook).decode()


class _Console(Console):
    """rich's console, but a closed pipe is the reader's choice (``| head``), not an error."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError  # the CLI's entry point exits 0 and drops stdout


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (or stderr); 160 columns when not a terminal."""
    file = sys.stderr if stderr else sys.stdout
    return _Console(
        file=file,
        highlight=False,
        width=None if file.isatty() else 160,
        soft_wrap=False,
    )


def emit(doc: Any, render: Callable[[Console], None]) -> None:
    """Print a command's result: ``doc`` as JSON under ``--json``, else ``render(console)``.

    Example:
        >>> emit({"n": 1}, lambda c: c.print("n = 1"))  # doctest: +SKIP
    """
    if options().json:
        click.echo(to_json(doc))
    else:
        render(console())


def confirm(doc: Any, message: str) -> None:
    """Print a write command's result: ``doc`` under ``--json``, else ``message`` unless ``-q``."""
    opts = options()
    if opts.json:
        click.echo(to_json(doc))
    elif not opts.quiet:
        click.echo(message)


def warn(message: str) -> None:
    """A warning on stderr (silenced by ``-q``)."""
    if not options().quiet:
        click.echo(f"warning: {message}", err=True)


@contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner on stderr while slow work runs (only on a terminal, never with ``-q``)."""
    err = console(stderr=True)
    show = err.is_terminal and not options().quiet
    with err.status(message) if show else nullcontext():
        yield


def table(*columns: str, numeric: tuple[str, ...] = (), title: str | None = None) -> Table:
    """A borderless rich table with these headers; ``numeric`` columns are right-aligned.

    Example:
        >>> t = table("branch", "commits", numeric=("commits",))
    """
    t = Table(
        box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False
    )
    for name in columns:
        t.add_column(name, justify="right" if name in numeric else "left")
    return t


def aligned(rows: list[list[str]], sep: str = "  ") -> list[str]:
    """Plain-text rows with every column but the last padded to its widest cell.

    Example:
        >>> aligned([["*", "main", "step 4"], ["", "exp", "step 10"]])
        ['*  main  step 4', '   exp   step 10']
    """
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return [
        sep.join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
        for r in rows
    ]


def row(t: Table, *cells: Any) -> None:
    """Add a row of plain text cells (never parsed as rich markup)."""
    t.add_row(*(c if isinstance(c, Text) else Text(fmt(c)) for c in cells))


# -- formatting ------------------------------------------------------------------


def short(commit_id: str | None) -> str:
    """A commit id cut to 12 hex digits.

    Example:
        >>> short("0123456789abcdef")
        '0123456789ab'
    """
    return commit_id[:SHORT] if commit_id else "-"


def fmt(value: Any) -> str:
    """A value as a short cell: floats to 4 significant digits, None as ``-``.

    Example:
        >>> fmt(0.123456), fmt(None), fmt([1, 2])
        ('0.1235', '-', '[1,2]')
    """
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.1f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"
    if isinstance(value, int | str):
        return str(value)
    return to_json(value)


def fmt_step(step: int | None) -> str:
    """``step N``, or nothing when the commit has no step.

    Example:
        >>> fmt_step(300), fmt_step(None)
        ('step 300', '')
    """
    return "" if step is None else f"step {step}"


def signed(value: float | None) -> str:
    """A delta with its sign, e.g. ``+0.25``.

    Example:
        >>> signed(-0.25), signed(None)
        ('-0.25', '-')
    """
    return "-" if value is None else f"{value:+.4g}"


def human_bytes(n: int) -> str:
    """Bytes in binary units.

    Example:
        >>> human_bytes(512), human_bytes(1536), human_bytes(5 << 30)
        ('512 B', '1.5 KiB', '5.0 GiB')
    """
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def age(when: dt.datetime, now: dt.datetime | None = None) -> str:
    """How long ago ``when`` was, e.g. ``3m ago``.

    Example:
        >>> t = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
        >>> age(t, t + dt.timedelta(minutes=3)), age(t, t + dt.timedelta(days=400))
        ('3m ago', '1y ago')
    """
    now = now or dt.datetime.now(dt.timezone.utc)
    secs = max(0, int((now - when).total_seconds()))
    for limit, div, unit in (
        (60, 1, "s"),
        (3600, 60, "m"),
        (86400, 3600, "h"),
        (30 * 86400, 86400, "d"),
        (365 * 86400, 30 * 86400, "mo"),
    ):
        if secs < limit:
            return f"{secs // div}{unit} ago"
    return f"{secs // (365 * 86400)}y ago"
