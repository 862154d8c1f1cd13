"""Notification hooks of one ledger: the local-only config file and the events they hear.

This module owns ``<ledger>/notify.json`` (msgspec ``NotifyConfig``: hook name
-> URL, kind, events, metric), the rules a hook must follow (an ``http(s)``
URL, a known kind and known events) and the :class:`Event` handed to the
delivery thread (``ledger.notify_delivery``) and the payload builders
(``ledger.notify_payloads``). Webhook URLs are secrets: the file is created
owner-only (0600), lives beside the object store, is never pushed, cloned or
written into a commit, and nothing logs a URL (only the hook's name and host).
See docs/notifications.md.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

from ledger.errors import NotifyError
from ledger.objects.durable import temp_path

NOTIFY_FILE = "notify.json"
KINDS = ("slack", "discord", "json")
#: Every event a hook can hear; ``commit-failed`` and ``push-failed`` carry the error.
EVENTS = ("commit", "best", "commit-failed", "push", "push-failed", "gc")
DEFAULT_EVENTS = ("best", "commit-failed", "push-failed")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Hook(msgspec.Struct, frozen=True, kw_only=True):
    """One webhook: where to send, in which shape, on which events.

    ``metric`` (``"val_loss"`` or ``"val_acc:max"``) chooses what ``best`` means
    for this hook; without it, the first ``KeepBest`` retention policy in force
    on the commit's branch decides.
    """

    url: str
    kind: str = "json"
    on: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_EVENTS))
    metric: str | None = None


class NotifyConfig(msgspec.Struct, tag="notify", kw_only=True):
    """``<ledger>/notify.json``: never pushed, never in a commit."""

    format: int = 1
    hooks: dict[str, Hook] = {}


_decoder = msgspec.json.Decoder(NotifyConfig)


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """Something that happened to a ledger, as every payload builder sees it.

    Example:
        >>> Event(event="commit", ledger="/runs/ckpt", branch="main", step=10).event
        'commit'
    """

    event: str
    ledger: str
    time: dt.datetime = msgspec.field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
    branch: str | None = None
    commit: str | None = None
    step: int | None = None
    epoch: int | None = None
    metrics: dict[str, float] = {}
    message: str | None = None
    #: ``best``: {"metric", "mode", "value", "previous"}; push: {"remote", "commits", "bytes"};
    #: gc: {"expired", "bytes_freed"}; failures: {"error", "type"}
    detail: dict[str, Any] = {}


def check_hook_name(name: str) -> str:
    """Validate a hook name (letters, digits, ``._-``).

    Example:
        >>> check_hook_name("team-slack")
        'team-slack'
    """
    if not _NAME_RE.match(name):
        raise NotifyError(
            f"hook name {name!r} is not valid: use letters, digits and . _ - (at most 64)",
            hook=name,
        )
    return name


def guess_kind(url: str) -> str:
    """The kind a webhook URL's host suggests: Slack, Discord, else generic JSON.

    Example:
        >>> guess_kind("https://hooks.slack.com/services/T0/B0/x")
        'slack'
    """
    host = (urlsplit(url).hostname or "").lower()
    if host == "hooks.slack.com":
        return "slack"
    if host in ("discord.com", "discordapp.com") or host.endswith(".discord.com"):
        return "discord"
    return "json"


def parse_metric(spec: str) -> tuple[str, str]:
    """``"val_loss"`` -> ("val_loss", "min"); ``"val_acc:max"`` -> ("val_acc", "max").

    Example:
        >>> parse_metric("val_acc:max")
        ('val_acc', 'max')
    """
    name, _, mode = spec.partition(":")
    mode = mode or "min"
    if not name or mode not in ("min", "max"):
        raise NotifyError(
            f"metric {spec!r} is not valid: write NAME or NAME:min or NAME:max (e.g. val_loss)"
        )
    return name, mode


def make_hook(
    name: str, url: str, kind: str | None, on: list[str] | None, metric: str | None
) -> Hook:
    """A checked :class:`Hook` (raises :class:`NotifyError` naming what is wrong).

    Example:
        >>> make_hook("ci", "http://127.0.0.1:9/x", None, ["commit"], None).kind
        'json'
    """
    check_hook_name(name)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise NotifyError(
            f"hook {name!r}: the URL must be http:// or https:// with a host (got scheme "
            f"{parts.scheme or 'none'!r}); paste the webhook URL the service gave you",
            hook=name,
        )
    kind = kind or guess_kind(url)
    if kind not in KINDS:
        raise NotifyError(f"hook {name!r}: kind {kind!r} is not one of {', '.join(KINDS)}")
    events = list(dict.fromkeys(on)) if on else list(DEFAULT_EVENTS)
    unknown = [e for e in events if e not in EVENTS]
    if unknown:
        raise NotifyError(
            f"hook {name!r}: unknown event {unknown[0]!r}; choose from {', '.join(EVENTS)}",
            hook=name,
        )
    if metric is not None:
        parse_metric(metric)
    return Hook(url=url, kind=kind, on=events, metric=metric)


def describe_url(url: str) -> str:
    """A webhook URL with its secret part hidden: scheme, host and port only.

    Example:
        >>> describe_url("https://hooks.slack.com/services/T0/B0/secret")
        'https://hooks.slack.com/…'
    """
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def read_config(root: Path) -> NotifyConfig:
    """The hooks of the ledger at ``root`` (none when the file is missing).

    Example:
        >>> read_config(Path("/nonexistent")).hooks
        {}
    """
    path = root / NOTIFY_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return NotifyConfig()
    except OSError as e:
        raise NotifyError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as e:
        raise NotifyError(
            f"{path} is not a valid notification config ({e}); fix it or remove it "
            "and add the hooks again"
        ) from None


def write_config(root: Path, config: NotifyConfig) -> None:
    """Replace ``<root>/notify.json`` atomically, readable by its owner only (0600).

    Example:
        >>> write_config(ledger_root, NotifyConfig())  # doctest: +SKIP
    """
    path = root / NOTIFY_FILE
    data = msgspec.json.format(msgspec.json.encode(config)) + b"\n"
    tmp = temp_path(root)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise NotifyError(f"cannot write {path}: {e.strerror}") from None


def listeners(config: NotifyConfig, event: str) -> dict[str, Hook]:
    """The hooks of ``config`` that hear ``event``.

    Example:
        >>> listeners(NotifyConfig(), "commit")
        {}
    """
    return {name: hook for name, hook in config.hooks.items() if event in hook.on}
