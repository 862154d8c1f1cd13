"""``ledger import PATH``: other tools' checkpoints into the ledger, one commit each.

This module owns the command line of the import: its options, and printing
the :class:`~ledger.interop.imports.ImportReport` (a table of checkpoints and
the bytes before and after, or the report as JSON). The import itself is
``ledger.interop.imports.import_path``; errors are ``LedgerError`` subclasses
that the command group prints with their hints.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec
from rich.console import Console

from ledger.cli._common import (
    emit,
    global_options,
    human_bytes,
    open_ledger,
    short,
    table,
)
from ledger.cli._common import row as add_row
from ledger.cli.bars import bar

if TYPE_CHECKING:  # the importers load torch and safetensors; --help must not
    from ledger.interop.imports import ImportReport


def _render(report: ImportReport, out: Console) -> None:
    t = table("checkpoint", "format", "step", "commit", "source", "stored", numeric=("step",))
    for c in report.checkpoints:
        stored = c.skipped or human_bytes(c.stored_bytes)
        add_row(t, c.name, c.format, c.step, short(c.commit), human_bytes(c.source_bytes), stored)
    out.print(t)
    made = len(report.commits)
    ratio = f" ({report.stored_bytes / report.source_bytes:.0%})" if report.source_bytes else ""
    out.print(
        f"imported {made} checkpoint{'s' if made != 1 else ''} onto "
        f"{'new ' if report.created_branch else ''}branch {report.branch}: "
        f"{human_bytes(report.source_bytes)} of checkpoints stored as "
        f"{human_bytes(report.stored_bytes)}{ratio}"
    )
    not_carried = sorted({n for c in report.checkpoints for n in c.not_carried})
    for note in not_carried:
        out.print(f"not carried: {note}")


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path, exists=False))
@click.option("--branch", metavar="B", help="Append onto branch B (created when missing).")
@click.option(
    "--onto", metavar="REV", help="Parent of the first imported commit (default: a root commit)."
)
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="MODULE.TYPE",
    help="Let torch.load(weights_only=True) build this type (repeat); only for files you trust.",
)
@global_options
def import_command(
    path: Path, branch: str | None, onto: str | None, allow: tuple[str, ...]
) -> None:
    """Import the checkpoint(s) at PATH, one commit per checkpoint in step order.

    PATH is a torch.save file (.pt/.pth/.bin), safetensors (single, or a
    *.index.json of shards), a Trainer checkpoint-N directory, a Lightning
    .ckpt, an Accelerate save_state directory, a torch.distributed.checkpoint
    directory, or a directory of such checkpoints (a Trainer output_dir, a
    Lightning checkpoints/). Without --branch the commits go on a new branch
    named after the directory. Nothing in the files is executed; checkpoints
    already imported (the same files) are skipped.
    """
    lg = open_ledger()
    with bar(f"importing {path}") as tick:
        report = lg.import_checkpoints(path, branch=branch, onto=onto, allow=allow, progress=tick)
    doc = msgspec.to_builtins(report)
    doc["commits"] = report.commits
    emit(doc, lambda out: _render(report, out))
