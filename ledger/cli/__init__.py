"""The ``ledger`` command (thin: parse with click, call ``ledger.api.Ledger``, print with rich).

Example:
    >>> from ledger.cli import main
    >>> main(["--dir", "ckpt", "log", "--graph"])  # doctest: +SKIP
"""

from ledger.cli.app import COMMANDS, cli, main

__all__ = ["COMMANDS", "cli", "main"]
