"""``ledger init``, ``branch``, ``tag`` and ``checkout``: creating a ledger and moving refs.

This module owns the argument rules of the ref commands (which flag combinations
mean list, create, delete, rename) and their confirmations. Every ref change
goes through ``Ledger.branch/delete_branch/rename_branch/tag/switch``; writing a
commit out as safetensors is ``ledger.cli.export``'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.text import Text

from ledger.cli._common import (
    DEFAULT_DIR_NAME,
    aligned,
    confirm,
    emit,
    fmt_step,
    global_options,
    open_ledger,
    options,
    progress,
    short,
)
from ledger.cli.bars import bar

if TYPE_CHECKING:  # loaded by the command that runs: `ledger --help` loads no ledger
    from ledger import Ledger


@click.command("init")
@click.argument("directory", required=False, type=click.Path(path_type=Path, file_okay=False))
@global_options
def init_command(directory: Path | None) -> None:
    """Create a ledger (default: --dir, else ./.ledger)."""
    given = options().dir
    if directory is not None and given is not None and directory != given:
        raise click.UsageError(f"two directories given: {directory} and --dir {given}")
    path = directory or given or Path(DEFAULT_DIR_NAME)
    existed = (path / "LEDGER").is_file()
    from ledger.api import Ledger

    Ledger.open(path, create=True).close()
    where = os.path.abspath(path)
    verb = "ledger already exists in" if existed else "initialized an empty ledger in"
    confirm({"path": where, "created": not existed}, f"{verb} {where}")


@click.command("branch")
@click.argument("names", nargs=-1, metavar="[NAME [REV]]")
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME (refused if unmerged).")
@click.option("-D", "force_delete", is_flag=True, help="Delete branch NAME even if unmerged.")
@click.option("-m", "--move", is_flag=True, help="Rename branch OLD to NEW.")
@global_options
def branch_command(names: tuple[str, ...], delete: bool, force_delete: bool, move: bool) -> None:
    """List, create, delete or rename branches.

    No NAME: list (* marks HEAD's branch). NAME [REV]: create at REV (default
    HEAD). -d NAME / -D NAME: delete (-D even if unmerged). -m OLD NEW: rename.
    """
    if sum((delete or force_delete, move)) > 1:
        raise click.UsageError("-d/-D and -m cannot be combined")
    lg = open_ledger()
    if delete or force_delete:
        if len(names) != 1:
            raise click.UsageError("branch -d/-D takes exactly one NAME")
        tip = lg.delete_branch(names[0], force=force_delete)
        confirm(
            {"deleted": names[0], "commit": tip},
            f"deleted branch {names[0]} (was {short(tip)})",
        )
    elif move:
        if len(names) != 2:
            raise click.UsageError("branch -m takes OLD and NEW")
        lg.rename_branch(*names)
        confirm({"renamed": names[0], "to": names[1]}, f"renamed branch {names[0]} to {names[1]}")
    elif names:
        if len(names) > 2:
            raise click.UsageError("branch takes NAME and an optional REV")
        commit = lg.branch(names[0], at=names[1] if len(names) == 2 else "HEAD")
        confirm(
            {"branch": names[0], "commit": commit.id},
            f"created branch {names[0]} at {short(commit.id)}",
        )
    else:
        current = lg.current_branch
        items = [
            {"name": n, "commit": cid, "current": n == current} for n, cid in lg.branches().items()
        ]
        emit({"branches": items, "current": current}, lambda con: _list_refs(con, lg, items))


@click.command("tag")
@click.argument("name", required=False)
@click.argument("rev", default="HEAD")
@global_options
def tag_command(name: str | None, rev: str) -> None:
    """List tags, or tag REV (default HEAD) as NAME.

    Tags never move.
    """
    lg = open_ledger()
    if name is None:
        items = [{"name": n, "commit": cid} for n, cid in lg.tags().items()]
        emit({"tags": items}, lambda con: _list_refs(con, lg, items))
        return
    commit = lg.tag(name, at=rev)
    confirm({"tag": name, "commit": commit.id}, f"tagged {short(commit.id)} as {name}")


def _mark(item: Mapping[str, object]) -> str:
    if "current" not in item:
        return ""
    return "* " if item["current"] else "  "


def _list_refs(con: Console, lg: Ledger, items: Sequence[Mapping[str, object]]) -> None:
    lines = []
    for item in items:
        c = lg.get(str(item["commit"]))
        lines.append(
            [
                _mark(item) + str(item["name"]),
                short(c.id),
                fmt_step(c.step),
                c.message or "",
            ]
        )
    for line in aligned(lines):
        con.print(Text(line), soft_wrap=True)


@click.command("checkout")
@click.argument("rev")
@click.option("-b", "new_branch", metavar="NEW", help="Create branch NEW at REV and switch to it.")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write REV as safetensors files + metadata.json into this directory; HEAD stays.",
)
@click.option("--force", is_flag=True, help="With --out: write into a non-empty directory.")
@global_options
def checkout_command(rev: str, new_branch: str | None, out: Path | None, force: bool) -> None:
    """Move HEAD to REV, or export REV with --out.

    A branch name attaches HEAD to it; any other revision detaches HEAD there.
    -b NEW forks branch NEW at REV first. --out DIR leaves HEAD alone and writes
    <key>.safetensors files and metadata.json (see docs/cli.md).
    """
    if out is not None and new_branch is not None:
        raise click.UsageError("--out does not move HEAD, so it cannot be combined with -b")
    if force and out is None:
        raise click.UsageError("--force only applies to --out")
    lg = open_ledger()
    if out is not None:
        from ledger.interop.export import write_safetensors_dir  # torch: only with --out
        from ledger.interop.space import guarded_output

        exported = lg.get(rev)
        what = f"checkout of {short(exported.id)}"
        with guarded_output(out, exported.stats.logical_bytes, what):
            with progress(f"reading {short(exported.id)}"):
                state = lg.checkout(exported.id, mmap=True)  # only read, to be written out
            with bar(f"writing {short(exported.id)}") as tick:
                written = write_safetensors_dir(state, exported, out, force=force, progress=tick)
        files = ", ".join(written.files)
        confirm(written, f"wrote {short(exported.id)} to {out}: {files} and metadata.json")
        return
    if new_branch is not None:
        lg.branch(new_branch, at=rev)
        target = new_branch
    else:
        target = rev
    commit = lg.switch(target)
    branch = lg.current_branch
    cid = commit.id if commit is not None else None
    if branch is not None:
        verb = "switched to a new branch" if new_branch else "switched to branch"
        message = f"{verb} {branch} at {short(cid)}"
    else:
        message = f"HEAD is now detached at {short(cid)}"
    confirm({"branch": branch, "commit": cid}, message)
