"""``ledger notify``: add, list, test and remove the webhooks that hear a ledger's events.

This module owns the arguments and rendering of the notify commands; the
work is ``Ledger.notify_add/notify_hooks/notify_test/notify_remove``. A
webhook URL is a secret: nothing here prints one (``list`` shows the scheme
and host only, ``--json`` too). docs/notifications.md describes the events
and payloads.
"""

from __future__ import annotations

import click
from rich.console import Console

from ledger.cli._common import aligned, confirm, emit, global_options, open_ledger
from ledger.errors import NotifyError
from ledger.notify import EVENTS, KINDS, describe_url


def _events(value: str | None) -> list[str] | None:
    return None if value is None else [e.strip() for e in value.split(",") if e.strip()]


@click.group("notify", invoke_without_command=True)
@global_options
@click.pass_context
def notify_command(ctx: click.Context) -> None:
    """Webhooks (Slack, Discord, JSON) told about commits, new bests, pushes, gc, failures.

    Example: ledger notify add team https://hooks.slack.com/services/... --on best,commit-failed
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(notify_list)


@notify_command.command("add")
@click.argument("name")
@click.argument("url")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=None,
    help="Payload shape (default: from the URL's host; json otherwise).",
)
@click.option(
    "--on",
    "on",
    default=None,
    metavar="EVENTS",
    help=f"Comma-separated events: {','.join(EVENTS)} (default: best,commit-failed,push-failed).",
)
@click.option(
    "--metric",
    default=None,
    metavar="NAME[:max]",
    help="What `best` means for this hook (default: the branch's KeepBest policy).",
)
@click.option("--replace", is_flag=True, help="Overwrite a hook of the same name.")
@global_options
def notify_add(
    name: str, url: str, kind: str | None, on: str | None, metric: str | None, replace: bool
) -> None:
    """Add webhook NAME posting to URL (kept in the ledger's local notify.json, never pushed)."""
    hook = open_ledger().notify_add(
        name, url, kind=kind, on=_events(on), metric=metric, replace=replace
    )
    doc = {"name": name, "kind": hook.kind, "on": hook.on, "metric": hook.metric}
    confirm(doc, f"added hook {name} ({hook.kind}, on {','.join(hook.on)})")


@notify_command.command("list")
@global_options
def notify_list() -> None:
    """List the hooks: name, kind, events, host (the rest of the URL is a secret)."""
    hooks = open_ledger().notify_hooks()
    items = [
        {
            "name": n,
            "kind": h.kind,
            "on": h.on,
            "metric": h.metric,
            "host": describe_url(h.url),
        }
        for n, h in hooks.items()
    ]

    def render(con: Console) -> None:
        rows = [
            [n, h.kind, ",".join(h.on), h.metric or "-", describe_url(h.url)]
            for n, h in hooks.items()
        ]
        for line in aligned(rows):
            con.print(line, markup=False)

    emit(items, render)


@notify_command.command("remove")
@click.argument("name")
@global_options
def notify_remove(name: str) -> None:
    """Remove hook NAME."""
    open_ledger().notify_remove(name)
    confirm({"removed": name}, f"removed hook {name}")


@notify_command.command("test")
@click.argument("name", required=False)
@global_options
def notify_test(name: str | None) -> None:
    """Send a test notification to hook NAME (default: every hook) and wait for the answers."""
    results = open_ledger().notify_test(name)
    failed = [r for r in results if not r.ok]
    if failed:
        first = failed[0]
        raise NotifyError(
            f"hook {first.hook!r} did not accept the test notification: {first.error}"
            + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
            + "; check the URL with `ledger notify list` and the service's settings",
            hook=first.hook,
        )
    confirm(
        [{"hook": r.hook, "status": r.status} for r in results],
        "\n".join(f"{r.hook}: delivered (HTTP {r.status})" for r in results),
    )
