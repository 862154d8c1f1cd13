"""The ``ledger`` command group: the subcommand registry, error reporting and exit codes.

This module owns turning every outcome into an exit code and one message:
0 ok, 1 user error or conflict (``LedgerError``, or the OS refusing a file),
2 usage (click's usage errors), 3 corruption found (``exit_code == 3``), 4 internal bug (the
only case that prints a traceback), 130 interrupted. Under ``--json`` the
error is also the one JSON document on stdout. Subcommands live in their own
modules and are listed in :data:`COMMANDS` with their one-line help, so that
``ledger --help`` imports none of them and a command imports only its own module
(a test keeps the table equal to the commands' real help). It must never hold a command.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import click

import ledger
from ledger.cli.options import Options, global_options
from ledger.errors import LedgerError, from_os_error

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_CORRUPT, EXIT_BUG, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130

#: Every subcommand: name -> (module under ``ledger.cli``, its one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("refs", "Create a ledger (default: --dir, else ./.ledger)."),
    "branch": ("refs", "List, create, delete or rename branches."),
    "tag": ("refs", "List tags, or tag REV (default HEAD) as NAME."),
    "checkout": ("refs", "Move HEAD to REV, or export REV with --out."),
    "log": ("log", "List commits, newest first (--graph draws branches)."),
    "status": ("status", "Show HEAD, the branch, its last commit, retention, space and remotes."),
    "show": ("report", "Show one commit's metadata and tensors."),
    "diff": ("report", "Compare two commits: metadata, then tensors."),
    "du": ("report", "Space used, dedup and compression ratios."),
    "export": ("export", "Write commit REV to OUT as a folder or file another tool loads."),
    "export-log": ("export", "Write the commit table to OUT (parquet, csv or jsonl)."),
    "plot": ("export", "Plot METRIC against step, one line per branch."),
    "gc": ("maintain", "Expire what retention drops, then free every object nothing needs."),
    "verify": ("maintain", "Check refs, commits and objects; exit 3 with a report on any fault."),
    "rm": (
        "maintain",
        "Drop one commit's state on purpose; its history stays (freed at the next gc).",
    ),
    "retention": (
        "maintain",
        "Show or replace the retention policies (stored in the ledger; `ledger gc` applies them).",
    ),
    "remote": ("remote", "List remotes, or add one with `ledger remote add NAME URL`."),
    "push": (
        "remote",
        "Send BRANCH (default: HEAD's) to REMOTE (default: origin); only missing objects travel.",
    ),
    "fetch": (
        "remote",
        "Bring REMOTE's commit records and branches (as REMOTE/BRANCH); chunks come on demand.",
    ),
    "pull": (
        "remote",
        "Fetch REMOTE, then fast-forward BRANCH (default: HEAD's) to it; never merges.",
    ),
    "clone": ("remote", "Make a new ledger in DIRECTORY from URL (remote origin)."),
    "import": (
        "imports",
        "Import the checkpoint(s) at PATH, one commit per checkpoint in step order.",
    ),
    "notify": (
        "notify",
        "Webhooks (Slack, Discord, JSON) told about commits, new bests, pushes, gc, failures.",
    ),
    "release": (
        "release",
        "Write commit REV as a plain save_pretrained model (and model card) onto a Hub branch.",
    ),
}


def command_module(name: str) -> ModuleType:
    """The module that holds subcommand ``name`` (imported on first use).

    Example:
        >>> command_module("log").__name__
        'ledger.cli.log'
    """
    return importlib.import_module(f"ledger.cli.{COMMANDS[name][0]}")


def _wants_json(args: Sequence[str]) -> bool:
    """Whether ``--json`` was asked for, read from the raw arguments (usage errors too)."""
    end = list(args).index("--") if "--" in args else len(args)
    return "--json" in args[:end]


def _report(
    opts: Options,
    kind: str,
    message: str,
    code: int,
    fields: dict[str, Any] | None = None,
    hint: str | None = None,
) -> int:
    """Print an error: the JSON document under ``--json`` (with the error's fields and the
    hint), else ``error: ...`` and ``hint: ...`` on stderr."""
    if opts.json:
        from ledger.cli._common import to_json  # only on the error path: rich stays unloaded

        doc: dict[str, Any] = {"type": kind, "message": message, "exit_code": code}
        if fields:
            doc["fields"] = fields
        if hint:
            doc["hint"] = hint
        click.echo(to_json({"error": doc}))
    else:
        click.echo(f"error: {message}", err=True)
        if hint:
            click.echo(f"hint: {hint}", err=True)
    return code


class LedgerGroup(click.Group):
    """A click group whose ``main`` maps every outcome to the documented exit codes.

    Subcommands are found in :data:`COMMANDS` and imported only when invoked;
    the group's help lists them from the table without importing any.
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, sorted (as click lists them)."""
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Subcommand ``cmd_name``, importing its module on first use."""
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module = command_module(cmd_name)
            found = [
                obj
                for key, obj in vars(module).items()
                if key.endswith("_command") and isinstance(obj, click.Command)
            ]
            for obj in found:
                if obj.name in COMMANDS and obj.name not in self.commands:
                    self.add_command(obj)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The ``Commands:`` section of ``--help``, from the table (nothing imported)."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max((len(n) for n in names), default=0)
        rows = []
        for name in names:
            # a bare Command carrying the table's text shortens it exactly as click would
            cmd = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            rows.append((name, cmd.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; exit (or return, if not ``standalone_mode``) with its code."""
        argv = list(sys.argv[1:] if args is None else args)
        opts = Options(json=_wants_json(argv))
        try:
            code = self._run(argv, prog_name or "ledger", complete_var, opts, extra)
        finally:
            _reset_verbosity()
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(
        self,
        argv: list[str],
        prog_name: str,
        complete_var: str | None,
        opts: Options,
        extra: dict[str, Any],
    ) -> int:
        try:
            rv = super().main(
                argv,
                prog_name=prog_name,
                complete_var=complete_var,
                standalone_mode=False,
                obj=opts,
                **extra,
            )
            return rv if isinstance(rv, int) else EXIT_OK
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help() if e.ctx else "")
            return EXIT_OK
        except click.ClickException as e:
            if not opts.json:
                e.show()
                return e.exit_code
            return _report(opts, type(e).__name__, e.format_message(), e.exit_code)
        except click.Abort:
            return _report(opts, "Interrupted", "interrupted", EXIT_INTERRUPTED)
        except LedgerError as e:
            code = int(getattr(e, "exit_code", EXIT_USER))
            from ledger.cli.hints import hint_for

            return _report(opts, type(e).__name__, str(e), code, e.fields, hint_for(e))
        except BrokenPipeError:  # `ledger log | head -1`: the reader has all it wanted
            _drop_stdout()
            return EXIT_OK
        except SystemExit:
            # click's own answer to a closed stdout (EPIPE), even outside standalone
            # mode: it wraps the streams and exits 1; a closed pipe is not an error here
            if type(sys.stdout).__name__ != "_PacifyFlushWrapper":
                raise
            _drop_stdout()
            return EXIT_OK
        except OSError as e:  # outside the API's guard: named the same way (errors.from_os_error)
            err = from_os_error(e)
            return _report(opts, type(err).__name__, str(err), EXIT_USER, err.fields)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            message = (
                f"internal error: {type(e).__name__}: {e}\n"
                "this is a bug in training-ledger; please report it with the traceback"
            )
            return _report(opts, type(e).__name__, message, EXIT_BUG)


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real stdout (a test runner's): nothing to flush
        pass


#: The stderr handler ``-v`` installed for this invocation (removed when it ends).
_log_handlers: list[logging.Handler] = []


def _set_verbosity(_ctx: click.Context, _param: click.Parameter, count: int) -> None:
    """``-v``: the library's INFO log on stderr; ``-vv``: DEBUG as well."""
    if not count:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("ledger")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if count > 1 else logging.INFO)
    _log_handlers.append(handler)


def _reset_verbosity() -> None:
    logger = logging.getLogger("ledger")
    while _log_handlers:
        logger.removeHandler(_log_handlers.pop())
    logger.setLevel(logging.NOTSET)


@click.group(cls=LedgerGroup, name="ledger", no_args_is_help=True)
@click.version_option(ledger.__version__, prog_name="ledger")
@click.option(
    "-v",
    "--verbose",
    count=True,
    expose_value=False,
    callback=_set_verbosity,
    help="Log what the library does on stderr (-v: INFO, -vv: DEBUG). Give before the subcommand.",
)
@global_options
def cli() -> None:
    """git for ML training state: commits, branches, diffs and exports of checkpoints.

    The ledger is found from --dir, then $LEDGER_DIR, then the nearest .ledger
    directory upward from here. --dir, --json and -q also work after the
    subcommand. Exit codes: 0 ok, 1 user error, 2 usage, 3 corruption, 4 bug.
    """


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``ledger`` console script; exits with the command's code.

    Example:
        >>> main(["--dir", "ckpt", "log", "-n", "3"])  # doctest: +SKIP
    """
    cli.main(argv, prog_name="ledger")
