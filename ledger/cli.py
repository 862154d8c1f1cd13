"""The ``ledger`` command (thin: parse, call the API, print)."""

from __future__ import annotations


def main() -> None:
    """Entry point of the ``ledger`` command."""
    raise SystemExit("ledger: the command line is not built yet")
