"""The subcommand table of ``ledger.cli.app`` matches the commands it names.

``ledger --help`` prints the list of commands from :data:`COMMANDS` without
importing any command module (that is what keeps it fast), so the table's
one-line help must be exactly what each command's docstring says, and every
``*_command`` in a command module must be in the table (else it would never
be reachable).
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import click
import pytest

import ledger.cli
from ledger.cli.app import COMMANDS, cli

CLI_MODULES = sorted(
    m.name for m in pkgutil.iter_modules(ledger.cli.__path__) if not m.name.startswith("_")
)


def _declared() -> dict[str, tuple[str, click.Command]]:
    """Every top-level ``*_command`` found in the modules of ``ledger.cli``."""
    found: dict[str, tuple[str, click.Command]] = {}
    for name in CLI_MODULES:
        module = importlib.import_module(f"ledger.cli.{name}")
        for key, obj in vars(module).items():
            if key.endswith("_command") and isinstance(obj, click.Command):
                if obj.callback is not None and obj.callback.__module__ != module.__name__:
                    continue  # imported from elsewhere, not declared here
                found[obj.name or key] = (name, obj)
    return found


def test_every_declared_command_is_in_the_table_with_its_module() -> None:
    declared = _declared()
    assert {n: m for n, (m, _) in declared.items()} == {n: m for n, (m, _) in COMMANDS.items()}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_table_help_is_the_command_docstring_line(name: str) -> None:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None
    assert COMMANDS[name][1] == command.get_short_help_str(limit=1_000)


def test_help_lists_every_command_and_imports_none_of_their_modules() -> None:
    probe = (
        "import sys\n"
        "sys.argv = ['ledger', '--help']\n"
        "from ledger.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as e:\n    code = e.code\n"
        "mods = sorted(m for m in sys.modules if m.startswith('ledger.cli.') or m == 'rich')\n"
        "print('MODULES', ','.join(mods), 'CODE', code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.endswith("CODE 0"), proc.stdout
    modules = last.split()[1].split(",")
    assert modules == ["ledger.cli.app", "ledger.cli.options"]
    listed = proc.stdout.split("Commands:")[1]
    for name in COMMANDS:
        assert f"  {name} " in listed


def test_an_unknown_command_is_a_usage_error() -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(cli, ["lgo"])
    assert result.exit_code == 2
    assert "No such command 'lgo'" in result.output
