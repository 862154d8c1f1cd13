"""Getting data out for other tools: ``checkout --out`` files, ``export-log``, ``plot``.

This module owns the layout of a ``checkout --out`` directory (one
``<key>.safetensors`` per top-level key of the state that holds tensors, plus
``metadata.json``; see docs/cli.md), the three ``export-log`` formats, and the
metric plot. It reads only what ``Ledger.checkout/table/log`` return and never
writes inside the ledger.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import msgspec
import numpy as np
import pyarrow as pa
import torch

from ledger import Commit
from ledger.cli._common import (
    CommandError,
    confirm,
    global_options,
    open_ledger,
    progress,
    to_json,
    warn,
)
from ledger.state.rng import RNG_KEY

FORMATS = {"parquet": (".parquet", ".pq"), "csv": (".csv",), "jsonl": (".jsonl", ".ndjson")}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class OutDir(msgspec.Struct):
    """What ``checkout --out`` wrote: file name -> top-level key, and counts."""

    commit: str
    out: str
    files: dict[str, str]
    tensors: int
    values: int


def _holds_tensors(value: Any) -> bool:
    if isinstance(value, torch.Tensor | np.ndarray | torch.Generator):
        return True
    if isinstance(value, Mapping):
        return any(_holds_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_tensors(v) for v in value)
    return False


def _as_tensor(value: torch.Tensor | np.ndarray | torch.Generator) -> torch.Tensor:
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.detach().cpu()


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any, bool]]:
    """(path, leaf, is_tensor); a subtree without tensors is one leaf, kept whole."""
    if not _holds_tensors(value):
        yield path, value, False
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _leaves(v, f"{path}/{k}" if path else str(k))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            yield from _leaves(v, f"{path}/{i}" if path else str(i))
    else:
        yield path, value, True


def _readable(path: Path) -> None:
    """Give a written file the permissions the umask allows (safetensors makes them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def _file_name(key: str, taken: set[str]) -> str:
    stem = _UNSAFE.sub("_", key).lstrip(".") or "_"
    name, n = f"{stem}.safetensors", 2
    while name in taken or name == "metadata.json":
        name, n = f"{stem}-{n}.safetensors", n + 1
    return name


def write_safetensors_dir(
    state: Mapping[Any, Any], commit: Commit, out: Path, *, force: bool = False
) -> OutDir:
    """Write a checked-out state as safetensors files and ``metadata.json`` into ``out``.

    Each top-level key whose subtree holds tensors becomes ``<key>.safetensors``
    (tensor names are the ``/``-joined path below the key; a bare tensor is named
    after the key). Tensors are made contiguous; tensors sharing storage are
    cloned, which safetensors requires. ``__rng__`` is left out. Every non-tensor
    value goes into ``metadata.json`` under its full ``/`` path (a subtree without
    tensors kept whole), next to the commit's metadata.

    Raises:
        CommandError: ``out`` is not empty (and not ``force``), or safetensors
            refuses a tensor (the top-level key is named).

    Example:
        >>> write_safetensors_dir(lg.checkout("v1"), lg.get("v1"), Path("export"))  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    if out.exists() and any(out.iterdir()) and not force:
        raise CommandError(f"{out} is not empty; choose a new directory or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    values: dict[str, Any] = {}
    n_tensors = 0
    for key, sub in state.items():
        if key == RNG_KEY:
            continue
        tensors: dict[str, torch.Tensor] = {}
        seen: set[int] = set()
        for path, leaf, is_tensor in _leaves(sub, ""):
            full = f"{key}/{path}" if path else str(key)
            if not is_tensor:
                values[full] = leaf
                continue
            t = _as_tensor(leaf).contiguous()
            ptr = t.untyped_storage().data_ptr()
            if t.numel() and ptr in seen:
                t = t.clone()
            seen.add(t.untyped_storage().data_ptr())
            tensors[path or str(key)] = t
        if not tensors:
            continue
        name = _file_name(str(key), set(files))
        try:
            save_file(
                tensors,
                str(out / name),
                metadata={"format": "pt", "ledger.commit": commit.id, "ledger.key": str(key)},
            )
        except (ValueError, TypeError, RuntimeError) as e:
            raise CommandError(f"safetensors cannot store part of {key!r}: {e}") from e
        _readable(out / name)
        files[name] = str(key)
        n_tensors += len(tensors)
    doc = {"commit": commit, "files": files, "values": values}
    (out / "metadata.json").write_bytes(msgspec.json.format(to_json(doc).encode()) + b"\n")
    return OutDir(
        commit=commit.id, out=str(out), files=files, tensors=n_tensors, values=len(values)
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
