"""Getting data out for other tools: ``export``, ``export-log`` and ``plot``.

This module owns the ``export`` command (a commit in a format another tool
loads; the formats are ``ledger.interop.export``'s, which the Hub remote and
``checkout --out`` share), the three ``export-log`` formats and the metric
plot. It reads only what the ledger returns and never writes inside it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ledger.cli._common import (
    CommandError,
    confirm,
    global_options,
    human_bytes,
    open_ledger,
    progress,
    short,
    to_json,
    warn,
)
from ledger.cli.bars import bar
from ledger.interop.source import EXPORT_FORMATS

if TYPE_CHECKING:  # pyarrow and torch load when a command needs them, not for --help
    import pyarrow as pa

FORMATS = {"parquet": (".parquet", ".pq"), "csv": (".csv",), "jsonl": (".jsonl", ".ndjson")}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


# -- export ----------------------------------------------------------------------------


@click.command("export")
@click.argument("rev")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format", "fmt", required=True, type=click.Choice(EXPORT_FORMATS), help="What to write."
)
@click.option(
    "--max-shard-size",
    metavar="SIZE",
    help="hf: shard the weights above SIZE (e.g. 5GB, 500MB; default 5GB).",
)
@click.option("--key", metavar="KEY", help="torch, dcp, lightning: export only state[KEY].")
@click.option("--model-key", metavar="KEY", help="hf, peft: the model's key (default model).")
@click.option("--files-key", metavar="KEY", help="hf, peft: the files' key (default hf_files).")
@click.option("--adapter-name", metavar="NAME", help="peft: the adapter (default default).")
@click.option("--force", is_flag=True, help="Write into a non-empty OUT (or over a file).")
@global_options
def export_command(
    rev: str,
    out: Path,
    fmt: str,
    max_shard_size: str | None,
    key: str | None,
    model_key: str | None,
    files_key: str | None,
    adapter_name: str | None,
    force: bool,
) -> None:
    """Write commit REV to OUT as a folder or file another tool loads.

    Formats: hf (the save_pretrained folder: from_pretrained(OUT)), peft
    (PeftModel.from_pretrained(base, OUT)), torch (torch.load(OUT,
    weights_only=True)), lightning (a .ckpt), dcp (torch.distributed.checkpoint),
    safetensors (the checkout --out folder). See docs/interop.md.
    """
    given = {
        "max_shard_size": max_shard_size,
        "key": key,
        "model_key": model_key,
        "files_key": files_key,
        "adapter_name": adapter_name,
    }
    opts: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    lg = open_ledger()
    with bar(f"exporting {rev} as {fmt}") as tick:
        from ledger.interop.export import export_commit

        written = export_commit(lg, rev, fmt, out, force=force, progress=tick, **opts)
    n = len(written.files)
    confirm(
        written,
        f"wrote {short(written.commit)} as {fmt} to {out}: {n} file{'' if n == 1 else 's'}, "
        f"{human_bytes(written.bytes)}",
    )


# -- export-log --------------------------------------------------------------------


def _format_of(out: Path, given: str | None) -> str:
    if given is not None:
        return given
    for name, suffixes in FORMATS.items():
        if out.suffix.lower() in suffixes:
            return name
    raise click.UsageError(f"cannot tell the format of {out.name}; pass --format parquet|csv|jsonl")


def write_table(table: pa.Table, out: Path, fmt: str) -> None:
    """Write the commit table as parquet, csv (lists joined by ``;``) or JSON lines.

    Example:
        >>> write_table(lg.table(), Path("log.parquet"), "parquet")  # doctest: +SKIP
    """
    import pyarrow as pa

    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, out)
    elif fmt == "csv":
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv

        for i, field in enumerate(table.schema):
            if pa.types.is_list(field.type):
                joined = pc.binary_join(table.column(i), ";")
                table = table.set_column(i, field.name, joined)
        pcsv.write_csv(table, out)
    else:
        with out.open("wb") as f:
            for record in table.to_pylist():
                f.write(to_json(record).encode() + b"\n")


@click.command("export-log")
@click.argument("out", type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(sorted(FORMATS)),
    help="Output format (default: from OUT's suffix).",
)
@global_options
def export_log_command(out: Path, fmt: str | None) -> None:
    """Write the commit table to OUT (parquet, csv or jsonl).

    One row per commit: id, branch, parents, step, epoch, time, message,
    metrics.* and params.* columns.
    """
    fmt = _format_of(out, fmt)
    table = open_ledger().table()
    write_table(table, out, fmt)
    confirm(
        {"path": str(out), "format": fmt, "rows": table.num_rows, "columns": table.column_names},
        f"wrote {table.num_rows} commits to {out} ({fmt})",
    )


# -- plot --------------------------------------------------------------------------


def _series(lg: Any, branch: str, metric: str) -> tuple[list[int], list[float]]:
    points = sorted(
        (c.step, c.metrics[metric])
        for c in lg.log(branch)
        if c.step is not None and metric in c.metrics
    )
    return [s for s, _ in points], [v for _, v in points]


@click.command("plot")
@click.argument("metric")
@click.option("--branch", "branches", multiple=True, metavar="B", help="Plot branch B (repeat).")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Image file (default: METRIC.png).",
)
@global_options
def plot_command(metric: str, branches: tuple[str, ...], output: Path | None) -> None:
    """Plot METRIC against step, one line per branch.

    Each branch's line follows its first-parent history; default: all branches.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        raise CommandError(
            "`ledger plot` needs matplotlib: pip install 'training-ledger[plot]'"
        ) from None
    lg = open_ledger()
    names = list(branches) or list(lg.branches())
    series: dict[str, dict[str, list[Any]]] = {}
    with progress("reading history"):
        for name in names:
            steps, values = _series(lg, name, metric)
            if steps:
                series[name] = {"step": steps, "value": values}
            else:
                warn(f"branch {name} has no commit with a step and metric {metric!r}")
    if not series:
        raise CommandError(
            f"no commit on {', '.join(names) or 'any branch'} has metric {metric!r} and a step"
        )
    path = output or Path(_UNSAFE.sub("_", metric) + ".png")
    fig = Figure(figsize=(8, 5))
    ax = fig.subplots()
    for name, s in series.items():
        ax.plot(s["step"], s["value"], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(title="branch")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    confirm({"path": str(path), "metric": metric, "series": series}, f"wrote {path}")
