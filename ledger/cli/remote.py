"""``ledger remote``, ``push``, ``fetch``, ``pull`` and ``clone``: the remote commands.

This module owns their arguments, the transfer progress bar (rich, on
stderr, only on a terminal and never with ``-q``) and their confirmations;
the work is ``Ledger.remote_add/remotes/push/fetch/pull/clone``
(docs/remotes.md). It must never read or write remote bytes itself.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from ledger.cli._common import (
    aligned,
    confirm,
    emit,
    global_options,
    human_bytes,
    open_ledger,
    short,
)
from ledger.cli.bars import bar_console

if TYPE_CHECKING:  # loaded by the command that runs: `ledger --help` loads no ledger
    from ledger.remotes.collect import RemoteGcReport
    from ledger.remotes.push import PushPlan


class _Bar:
    """A rich transfer bar fed by ``ledger.remotes.transfer.Progress`` calls."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.task: TaskID | None = None

    def start(self, total: int, description: str) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
        self.task = self.bar.add_task(description, total=total)

    def advance(self, done: int) -> None:
        if self.task is not None:
            self.bar.advance(self.task, done)


@contextlib.contextmanager
def _progress() -> Iterator[_Bar | None]:
    err = bar_console()
    if err is None:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        yield _Bar(bar)


@click.group("remote", invoke_without_command=True)
@global_options
@click.pass_context
def remote_command(ctx: click.Context) -> None:
    """List remotes, or add one with `ledger remote add NAME URL`.

    URLs: a path or file://..., s3://bucket/prefix (any fsspec URL), or
    hf://user/repo. Credentials stay in each client's own settings.
    """
    if ctx.invoked_subcommand is not None:
        return
    found = open_ledger().remote_settings()
    items = [{"name": n, **s} for n, s in found.items()]

    def render(con: Console) -> None:
        rows = [[n, s["url"], _credential(s)] for n, s in found.items()]
        for line in aligned(rows):
            con.print(line.rstrip(), soft_wrap=True, markup=False)

    emit({"remotes": items}, render)


def _credential(settings: dict[str, str]) -> str:
    if "hf_token_name" in settings:
        return f"(token {settings['hf_token_name']})"
    if "aws_profile" in settings:
        return f"(profile {settings['aws_profile']})"
    return ""


@remote_command.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--hf-token-name",
    metavar="TOKEN",
    help="Hub remotes: use the token `hf auth login` stored under this name (only the name is kept).",
)
@click.option(
    "--aws-profile",
    metavar="PROFILE",
    help="S3 remotes: use this AWS profile (only the name is kept).",
)
@global_options
def remote_add(name: str, url: str, hf_token_name: str | None, aws_profile: str | None) -> None:
    """Register remote NAME at URL."""
    open_ledger().remote_add(name, url, hf_token_name=hf_token_name, aws_profile=aws_profile)
    doc = {"name": name, "url": url, "hf_token_name": hf_token_name, "aws_profile": aws_profile}
    extra = _credential({k: v for k, v in doc.items() if v is not None})
    confirm(
        {k: v for k, v in doc.items() if v is not None},
        f"added remote {name} ({url}){' ' + extra if extra else ''}",
    )


@remote_command.command("gc")
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Report what would be expired and deleted.")
@global_options
def remote_gc(name: str | None, dry_run: bool) -> None:
    """Apply this ledger's retention on remote NAME and delete packs nothing needs."""
    confirm_remote_gc(open_ledger().gc_remote(name, dry_run=dry_run), dry_run)


def confirm_remote_gc(r: RemoteGcReport, dry_run: bool) -> None:
    """Print a remote gc's result (``ledger remote gc`` and ``ledger gc --remote``)."""
    verb = "would free" if dry_run else "freed"
    confirm(
        r,
        f"{r.remote}: {verb} {human_bytes(r.bytes_freed)} in {r.packs_deleted} packs, "
        f"expired {len(r.expired)} commits; {r.packs_kept} packs kept "
        f"({human_bytes(r.dead_bytes_kept)} of them unneeded)",
    )


@click.command("push")
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@click.option("--all", "all_branches", is_flag=True, help="Push every branch.")
@click.option("--tags", is_flag=True, help="Push every tag too.")
@click.option(
    "--export-weights",
    is_flag=True,
    help="(Hub) also upload the head's model in the hf layout under weights/.",
)
@click.option(
    "--public",
    is_flag=True,
    help="(Hub) create a missing repo public (default: private). Never changes an existing repo.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Change nothing; print the commits and objects that would be sent and the refs moved.",
)
@global_options
def push_command(
    remote: str | None,
    branch: str | None,
    all_branches: bool,
    tags: bool,
    export_weights: bool,
    public: bool,
    dry_run: bool,
) -> None:
    """Send BRANCH (default: HEAD's) to REMOTE (default: origin); only missing objects travel."""
    lg = open_ledger()
    if dry_run:
        _print_plan(lg.push(remote, branch, all=all_branches, tags=tags, dry_run=True))
        return
    with _progress() as bar:
        r = lg.push(
            remote,
            branch,
            all=all_branches,
            tags=tags,
            export_weights=export_weights,
            public=public,
            progress=bar,
        )
    if not r.updated and not r.bytes_sent:
        confirm(r, f"{r.remote} is up to date")
        return
    moved = ", ".join(f"{ref} -> {short(cid)}" for ref, cid in sorted(r.updated.items()))
    confirm(
        r,
        f"pushed to {r.remote}: {moved or 'expiry'}; {r.commits} commits, {r.chunks_sent} chunks, "
        f"{human_bytes(r.bytes_sent)} sent, {human_bytes(r.bytes_skipped)} already there",
    )


def _print_plan(plan: PushPlan) -> None:
    """A push plan: the refs that would move (from -> to), then counts and bytes."""

    def render(con: Console) -> None:
        if plan.up_to_date:
            con.print(f"{plan.remote} is up to date; a push would send nothing", markup=False)
            return
        rows = [
            [m.ref, f"{short(m.old) if m.old else '(new)'} -> {short(m.new)}"] for m in plan.refs
        ]
        for line in aligned(rows):
            con.print(line, soft_wrap=True, markup=False)
        chunks = sum(1 for o in plan.objects if o.kind == "chunk")
        con.print(
            f"would push to {plan.remote}: {len(plan.commits)} commits, {len(plan.objects)} "
            f"objects ({chunks} chunks), {human_bytes(plan.bytes)}; "
            f"{human_bytes(plan.bytes_skipped)} already there"
            + (f"; would expire {len(plan.expired)} commits there" if plan.expired else ""),
            markup=False,
        )

    emit(plan, render)


@click.command("fetch")
@click.argument("remote", required=False)
@global_options
def fetch_command(remote: str | None) -> None:
    """Bring REMOTE's commit records and branches (as REMOTE/BRANCH); chunks come on demand."""
    lg = open_ledger()
    with _progress() as bar:
        r = lg.fetch(remote, progress=bar)
    moved = ", ".join(f"{r.remote}/{b} -> {short(c)}" for b, c in sorted(r.updated.items()))
    confirm(
        r,
        f"fetched {r.remote}: {r.commits} new commits ({human_bytes(r.bytes_received)})"
        + (f"; {moved}" if moved else "; branches unchanged")
        + (f"; new tags {', '.join(r.tags)}" if r.tags else ""),
    )


@click.command("pull")
@click.argument("remote", required=False)
@click.argument("branch", required=False)
@global_options
def pull_command(remote: str | None, branch: str | None) -> None:
    """Fetch REMOTE, then fast-forward BRANCH (default: HEAD's) to it; never merges."""
    lg = open_ledger()
    with _progress() as bar:
        r = lg.pull(remote, branch, progress=bar)
    if r.fast_forward:
        message = (
            f"fast-forwarded {r.branch} {short(r.old)} -> {short(r.new)} "
            f"({human_bytes(r.bytes_received)} of state)"
        )
    else:
        message = f"{r.branch} is up to date with {r.fetch.remote}"
    confirm(r, message)


@click.command("clone")
@click.argument("url")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--branch", "-b", help="Branch to check out (default: the remote's head).")
@click.option("--depth", type=click.IntRange(min=1), help="Fetch only the newest N states.")
@global_options
def clone_command(url: str, directory: Path, branch: str | None, depth: int | None) -> None:
    """Make a new ledger in DIRECTORY from URL (remote origin)."""
    with _progress() as bar:
        from ledger.api import Ledger

        lg = Ledger.clone(url, directory, branch=branch, depth=depth, progress=bar)
    click.get_current_context().call_on_close(lg.close)
    head = lg.head
    where = os.path.abspath(directory)
    doc = {
        "path": where,
        "url": url,
        "branch": lg.current_branch,
        "commit": head.id if head else None,
    }
    confirm(doc, f"cloned {url} into {where}: {lg.current_branch} at {short(doc['commit'])}")
