"""The global options of every ``ledger`` command: ``--dir``, ``--json`` and ``-q``.

This module owns the :class:`Options` of one invocation and the decorator that
adds the options to the group and to every subcommand (accepted before or after
the subcommand). It imports only click, so ``ledger --help`` stays fast: the
rendering helpers live in ``ledger.cli._common``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

ENV_DIR = "LEDGER_DIR"
DEFAULT_DIR_NAME = ".ledger"

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    """The global options of one invocation, filled wherever they were given."""

    dir: Path | None = None
    json: bool = False
    quiet: bool = False


def _set_dir(ctx: click.Context, _param: click.Parameter, value: Path | None) -> None:
    if value is not None:
        ctx.ensure_object(Options).dir = value


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Options).json = True


def _set_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Options).quiet = True


def global_options(f: F) -> F:
    """Add ``--dir``, ``--json`` and ``-q`` to a command (the group and every subcommand).

    The values land in the invocation's :class:`Options` whichever side of the
    subcommand they were given on.

    Example:
        >>> @click.command()
        ... @global_options
        ... def hello() -> None: ...
    """
    decorators = (
        click.option(
            "--dir",
            type=click.Path(path_type=Path, file_okay=False),
            expose_value=False,
            callback=_set_dir,
            help=f"The ledger directory (default: ${ENV_DIR}, else the nearest {DEFAULT_DIR_NAME} upward).",
        ),
        click.option(
            "--json",
            is_flag=True,
            expose_value=False,
            callback=_set_json,
            help="Print exactly one JSON document on stdout (errors too).",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_set_quiet,
            help="No progress, warnings or confirmations; data and errors still print.",
        ),
    )
    for decorate in reversed(decorators):
        f = decorate(f)
    return f


def options() -> Options:
    """The current invocation's global options."""
    return click.get_current_context().ensure_object(Options)
