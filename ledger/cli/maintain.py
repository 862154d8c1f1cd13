"""``ledger gc``, ``verify``, ``rm`` and ``retention``: keeping a ledger small and whole.

This module owns the arguments and the rendering of the maintenance commands;
the work is ``Ledger.gc/verify/expire/set_retention``. ``verify`` exits 3 when
it finds a problem (after printing its report), like every command that finds
corruption.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console

from ledger.cli._common import (
    CommandError,
    confirm,
    emit,
    global_options,
    human_bytes,
    open_ledger,
    short,
)
from ledger.cli.bars import bar
from ledger.cli.remote import confirm_remote_gc
from ledger.history.records import Policy
from ledger.history.retention import describe
from ledger.retention import KeepBest, KeepEvery, KeepLast, KeepWithin

if TYPE_CHECKING:  # gc loads the object store: `ledger --help` does not
    from ledger.history.gc import GcPlan

EXIT_CORRUPT = 3


@click.command("gc")
@click.option(
    "--dry-run", is_flag=True, help="Report what would be expired and freed; change nothing."
)
@click.option(
    "--grace",
    type=float,
    default=None,
    help="Seconds: never touch packs younger than this (default: the ledger's, 900).",
)
@click.option(
    "--remote",
    default=None,
    help="Apply retention on this remote instead (same as `ledger remote gc NAME`).",
)
@global_options
def gc_command(dry_run: bool, grace: float | None, remote: str | None) -> None:
    """Expire what retention drops, then free every object nothing needs.

    Example: ledger gc --dry-run
    """
    lg = open_ledger()
    if remote is not None:
        confirm_remote_gc(lg.gc_remote(remote, dry_run=dry_run), dry_run)
        return
    with bar("collecting garbage") as tick:
        report = lg.gc(dry_run=dry_run, grace=grace, progress=tick)

    def render(con: Console) -> None:
        if dry_run and report.plan is not None:
            _print_plan(con, report.plan)
        verb = "would free" if dry_run else "freed"
        con.print(
            f"{verb} {human_bytes(report.bytes_freed)} in {report.objects_freed} objects "
            f"({report.packs_deleted} packs deleted, {report.packs_rewritten} rewritten; "
            f"{report.skipped_young_packs} younger than the grace period left alone)"
        )
        if report.plan is not None and report.plan.temp_skipped:
            names = ", ".join(report.plan.temp_skipped[:3])
            con.print(
                f"left alone in objects/tmp (not files the ledger made; never followed): {names}"
            )
        if report.expired and not dry_run:
            con.print(
                f"expired {len(report.expired)} commits: " + " ".join(map(short, report.expired))
            )

    emit(report, render)


def _print_plan(con: Console, plan: GcPlan) -> None:
    """The plan of a dry run: each commit to expire and why, each pack and file to sweep."""
    con.print("gc plan (dry run: nothing was changed)")
    for cid, why in plan.expire.items():
        con.print(f"  expire {short(cid)}: {why}")
    for sweep in plan.delete:
        con.print(f"  delete pack {short(sweep.name)} ({human_bytes(sweep.size)}, all dead)")
    for sweep in plan.rewrite:
        con.print(
            f"  rewrite pack {short(sweep.name)} ({human_bytes(sweep.size)}): "
            f"drop {sweep.dead} objects, copy {len(sweep.copy)} live"
        )
    if plan.temp_files:
        con.print(f"  delete {len(plan.temp_files)} temporary files (crash leftovers)")
    if not (plan.expire or plan.delete or plan.rewrite or plan.temp_files):
        con.print("  nothing to do")


@click.command("verify")
@click.option("--full", is_flag=True, help="Also read and re-hash every chunk.")
@click.option(
    "--repair",
    is_flag=True,
    help="Set a torn log tail aside, restore refs it lost from the commits, rebuild the ref view.",
)
@click.option(
    "--from",
    "from_remote",
    metavar="REMOTE",
    default=None,
    help="With --repair: refetch missing or damaged objects from this remote (implies --full).",
)
@global_options
def verify_command(full: bool, repair: bool, from_remote: str | None) -> int:
    """Check refs, commits and objects; exit 3 with a report on any fault.

    Example: ledger verify --full; ledger verify --repair --from origin
    """
    if from_remote is not None and not repair:
        raise CommandError("--from REMOTE refetches damaged objects: use it with --repair")
    full = full or from_remote is not None
    lg = open_ledger()
    with bar("verifying") as tick:
        report = lg.verify(full=full, repair=repair, from_remote=from_remote, progress=tick)

    def render(con: Console) -> None:
        for line in report.repaired:
            con.print(f"repaired: {line}")
        for line in report.notes:
            con.print(f"note: {line}")
        for line in report.problems:
            con.print(f"problem: {line}", style="red")
        if report.repairable:
            con.print("hint: `ledger verify --repair` restores lost refs and rebuilds the ref view")
        if report.damaged and not from_remote:
            con.print(
                f"hint: {len(report.damaged)} object(s) are missing or damaged; "
                "`ledger verify --repair --from REMOTE` refetches them from a remote that has them"
            )
        checked = f"{report.commits_checked} commits, {report.chunks_checked} chunks"
        if full:
            checked += f", {human_bytes(report.bytes_checked)} re-hashed"
        con.print(f"{'ok' if report.ok else 'FAILED'}: {checked}, {len(report.problems)} problems")

    emit(report, render)
    return 0 if report.ok else EXIT_CORRUPT


@click.command("rm")
@click.argument("rev")
@click.option("--reason", default="expired by hand (ledger rm)", help="Recorded in the event log.")
@global_options
def rm_command(rev: str, reason: str) -> None:
    """Drop one commit's state on purpose; its history stays (freed at the next gc).

    Example: ledger rm main~3 --reason "data licence withdrawn" && ledger gc --grace 0
    """
    lg = open_ledger()
    cid = lg.expire(rev, reason=reason)
    confirm(
        {"expired": cid, "reason": reason},
        f"expired {short(cid)}: its state goes at the next `ledger gc`",
    )


def _parse_best(spec: str) -> KeepBest:
    parts = spec.split(":")
    if not 1 <= len(parts) <= 3 or not parts[0]:
        raise CommandError(f"--keep-best {spec!r}: use METRIC[:K[:min|max]], e.g. val_loss:2:min")
    usage = f"--keep-best {spec!r}: use METRIC[:K[:min|max]], e.g. val_loss:2:min"
    k_text = parts[1] if len(parts) > 1 and parts[1] else "1"
    if not (k_text.isdigit() and int(k_text) >= 1):
        raise CommandError(f"{usage} (K, how many to keep, is a whole number >= 1, not {k_text!r})")
    mode = parts[2] if len(parts) > 2 else "min"
    if mode not in ("min", "max"):
        raise CommandError(f"{usage} (the mode is min or max, not {mode!r})")
    return KeepBest(parts[0], k=int(k_text), mode=mode)


@click.command("retention")
@click.option(
    "--branch",
    default=None,
    help="The branch whose own policies to show or set (default: ledger-wide).",
)
@click.option(
    "--keep-last", type=int, default=None, help="Keep the newest N commits of each branch."
)
@click.option(
    "--keep-best", multiple=True, help="METRIC[:K[:min|max]]: keep the K best commits by METRIC."
)
@click.option(
    "--keep-every", type=int, default=None, help="Keep commits whose step is a multiple of S."
)
@click.option(
    "--keep-within", default=None, help="Keep commits newer than a duration (e.g. 12h, 7d)."
)
@click.option("--clear", is_flag=True, help="Remove the policies of this scope (keep everything).")
@global_options
def retention_command(
    branch: str | None,
    keep_last: int | None,
    keep_best: tuple[str, ...],
    keep_every: int | None,
    keep_within: str | None,
    clear: bool,
) -> None:
    """Show or replace the retention policies (stored in the ledger; `ledger gc` applies them).

    Example: ledger retention --keep-last 3 --keep-best val_loss:2:min
    """
    lg = open_ledger()
    policies: list[Policy] = []
    if keep_last is not None:
        policies.append(KeepLast(keep_last))
    policies += [_parse_best(spec) for spec in keep_best]
    if keep_every is not None:
        policies.append(KeepEvery(keep_every))
    if keep_within is not None:
        policies.append(KeepWithin(keep_within))  # type: ignore[arg-type]  # parsed from text
    if policies or clear:
        lg.set_retention(*policies, branch=branch)
    current = lg.refs.state().retention
    doc = {scope or "*": [describe(p) for p in pols] for scope, pols in current.items()}

    def render(con: Console) -> None:
        if not doc:
            con.print("no retention policies: every commit keeps its state")
        for scope, names in doc.items():
            where = "all branches" if scope == "*" else f"branch {scope}"
            con.print(f"{where}: " + ", ".join(names))

    emit({"retention": doc}, render)
