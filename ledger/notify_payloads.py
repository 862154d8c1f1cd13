"""The JSON body each kind of webhook receives for an :class:`~ledger.notify.Event`.

This module owns the payload shapes and their limits, as the services
document them: Slack incoming webhooks take ``{"text": ...}`` (the
notification and fallback text) plus optional Block Kit ``blocks`` (a
``section`` text is at most 3000 characters); Discord webhooks take
``{"content": ...}`` (at most 2000 characters) plus ``embeds`` (title <= 256,
description <= 4096, <= 25 fields of name <= 256 and value <= 1024); the
generic kind gets the documented ``training-ledger.notification/1`` schema
(docs/notifications.md). It builds dictionaries only; it never sends.
"""

from __future__ import annotations

import math
from typing import Any

from ledger.notify import Event

SCHEMA = "training-ledger.notification/1"
SLACK_SECTION_MAX = 3000
DISCORD_CONTENT_MAX = 2000
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELDS_MAX = 25
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_EMBED_TOTAL_MAX = 6000
_METRICS_SHOWN = 8

_TITLES = {
    "commit": "committed",
    "best": "new best",
    "commit-failed": "commit FAILED",
    "push": "pushed",
    "push-failed": "push FAILED",
    "gc": "gc done",
    "test": "test notification",
}
#: Discord embed colours (green for good news, red for failures, grey otherwise).
_COLOURS = {"best": 0x2EB67D, "commit-failed": 0xE01E5A, "push-failed": 0xE01E5A}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such a metric is sent as null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def headline(event: Event) -> str:
    """One line saying what happened, e.g. ``ckpt main@1a2b3c4d5e6f step 100: committed``.

    Example:
        >>> headline(Event(event="gc", ledger="/r/ckpt"))
        'ckpt: gc done'
    """
    where = event.ledger.rstrip("/").rsplit("/", 1)[-1]
    if event.branch:
        where += f" {event.branch}"
    if event.commit:
        where += f"@{event.commit[:12]}"
    if event.step is not None:
        where += f" step {event.step}"
    return f"{where}: {_TITLES.get(event.event, event.event)}"


def details(event: Event) -> list[tuple[str, str]]:
    """(name, value) lines under the headline: what the event is about, then metrics.

    Example:
        >>> details(Event(event="commit", ledger="x", metrics={"loss": 0.25}))
        [('loss', '0.25')]
    """
    out: list[tuple[str, str]] = []
    d = event.detail
    if event.event == "best":
        prev = "none" if d.get("previous") is None else _num(d["previous"])
        out.append((f"{d.get('metric')} ({d.get('mode')})", f"{_num(d.get('value'))} (was {prev})"))
    elif event.event in ("commit-failed", "push-failed"):
        out.append(("error", f"{d.get('type')}: {d.get('error')}"))
    elif event.event == "push":
        out.append(
            ("remote", f"{d.get('remote')}: {d.get('commits')} commits, {d.get('bytes')} bytes")
        )
    elif event.event == "gc":
        out.append(("gc", f"{d.get('expired')} expired, {d.get('bytes_freed')} bytes freed"))
    if event.epoch is not None:
        out.append(("epoch", str(event.epoch)))
    out += [(k, _num(v)) for k, v in list(event.metrics.items())[:_METRICS_SHOWN]]
    if event.message:
        out.append(("message", event.message))
    return out


def generic(event: Event) -> dict[str, Any]:
    """The ``training-ledger.notification/1`` document (docs/notifications.md).

    Example:
        >>> generic(Event(event="gc", ledger="/r/ckpt"))["schema"]
        'training-ledger.notification/1'
    """
    return {
        "schema": SCHEMA,
        "event": event.event,
        "ledger": event.ledger,
        "time": event.time.isoformat(),
        "branch": event.branch,
        "commit": event.commit,
        "step": event.step,
        "epoch": event.epoch,
        "metrics": {k: _finite(v) for k, v in event.metrics.items()},
        "message": event.message,
        "detail": dict(event.detail),
        "text": headline(event),
    }


def slack(event: Event) -> dict[str, Any]:
    """A Slack incoming-webhook body: ``text`` plus one ``section`` block in mrkdwn.

    Example:
        >>> sorted(slack(Event(event="gc", ledger="x")))
        ['blocks', 'text']
    """
    title = headline(event)
    lines = [f"*{title}*", *(f"• {k}: `{v}`" for k, v in details(event))]
    return {
        "text": title,
        "blocks": [
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": _clip("\n".join(lines), SLACK_SECTION_MAX)},
            }
        ],
    }


def discord(event: Event) -> dict[str, Any]:
    """A Discord webhook body: ``content`` (<= 2000 characters) plus one embed.

    Example:
        >>> len(discord(Event(event="gc", ledger="x", message="m" * 5000))["content"]) <= 2000
        True
    """
    title = headline(event)
    fields = [
        {
            "name": _clip(k, DISCORD_TITLE_MAX),
            "value": _clip(v, DISCORD_FIELD_VALUE_MAX),
            "inline": k != "message",
        }
        for k, v in details(event)[:DISCORD_FIELDS_MAX]
    ]
    embed: dict[str, Any] = {
        "title": _clip(title, DISCORD_TITLE_MAX),
        "description": _clip(event.ledger, DISCORD_DESCRIPTION_MAX),
        "color": _COLOURS.get(event.event, 0x808080),
        "fields": fields,
        "timestamp": event.time.isoformat(),
    }
    while fields and _embed_chars(embed) > DISCORD_EMBED_TOTAL_MAX:
        fields.pop()  # the message (last) goes first, then the last metrics
    return {"content": _clip(title, DISCORD_CONTENT_MAX), "embeds": [embed]}


def _embed_chars(embed: dict[str, Any]) -> int:
    """Characters Discord counts against an embed's 6000 (title, description, fields)."""
    return (
        len(embed["title"])
        + len(embed["description"])
        + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    )


BUILDERS = {"slack": slack, "discord": discord, "json": generic}


def payload(kind: str, event: Event) -> dict[str, Any]:
    """The body for a hook of ``kind``.

    Example:
        >>> payload("json", Event(event="commit", ledger="x"))["event"]
        'commit'
    """
    return BUILDERS[kind](event)
