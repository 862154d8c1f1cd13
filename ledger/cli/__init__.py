"""The ``ledger`` command (thin: parse with click, call ``ledger.api.Ledger``, print with rich).

Example:
    >>> from ledger.cli import main
    >>> main(["--dir", "ckpt", "log", "--graph"])  # doctest: +SKIP
"""

from ledger.cli.app import COMMAND_MODULES, cli, main

__all__ = ["COMMAND_MODULES", "cli", "main"]
