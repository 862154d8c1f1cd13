"""Remotes on a ledger: settings, remote-tracking refs, and the history walks sync needs.

This module owns ``Ledger.remote_add``/``remotes`` (through ``config``),
opening a configured remote with its cache folder, and moving the
remote-tracking refs ``refs/remotes/<remote>/<branch>`` (only through the
ledger's event log, by compare-and-swap). It must never touch a remote's
own refs: push does.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from ledger.errors import RemoteError
from ledger.history import graph
from ledger.history.refs import REMOTE_PREFIX
from ledger.remotes.base import Remote
from ledger.remotes.config import (
    RemoteEntry,
    cache_dir,
    check_credential_names,
    check_remote_name,
    load_config,
    open_remote,
    save_config,
)
from ledger.remotes.protocol import LocalLedger

# -- remote settings ----------------------------------------------------------------


def remote_add(
    lg: LocalLedger,
    name: str,
    url: str,
    hf_token_name: str | None = None,
    aws_profile: str | None = None,
) -> None:
    """Register remote ``name`` at ``url`` (validated, credential-free).

    ``hf_token_name`` / ``aws_profile`` name which of the client's credentials the
    remote uses; they must exist now, and only their names are stored.
    """
    check_remote_name(name)
    entry = check_credential_names(
        RemoteEntry(url=url, hf_token_name=hf_token_name, aws_profile=aws_profile)
    )
    open_remote(url, entry)  # refuses bad or credential-bearing URLs before anything is written
    with lg.refs.lock.hold():
        config = load_config(lg.root)
        if name in config.remotes:
            raise RemoteError(f"remote {name!r} already exists ({config.remotes[name].url})")
        remotes = {**config.remotes, name: entry}
        save_config(lg.root, msgspec.structs.replace(config, remotes=remotes), lg.store.tmp_dir)


def remotes(lg: LocalLedger) -> dict[str, str]:
    """Remote name -> URL."""
    return {name: e.url for name, e in sorted(load_config(lg.root).remotes.items())}


def remote_settings(lg: LocalLedger) -> dict[str, dict[str, str]]:
    """Remote name -> its settings as stored (URL and credential names, never a credential)."""
    return {
        name: msgspec.to_builtins(e) for name, e in sorted(load_config(lg.root).remotes.items())
    }


def open_named(lg: LocalLedger, name: str) -> tuple[Remote, Path]:
    """The backend of configured remote ``name`` and the folder caching what it last said."""
    config = load_config(lg.root)
    entry = config.remotes.get(name)
    if entry is None:
        known = ", ".join(sorted(config.remotes)) or "none"
        raise RemoteError(
            f"no remote named {name!r} (known: {known}); add it: ledger remote add {name} URL"
        )
    return open_remote(entry.url, entry), cache_dir(lg.root, name)


def default_remote(lg: LocalLedger) -> str:
    """``origin`` if configured, else the only remote."""
    names = sorted(load_config(lg.root).remotes)
    if "origin" in names or len(names) != 1:
        return "origin"
    return names[0]


# -- history helpers ----------------------------------------------------------------


def ancestors(lg: LocalLedger, tips: Iterable[str], stop: set[str] | None = None) -> list[str]:
    """Commits reachable from ``tips`` (all parents), oldest first, not walking into ``stop``."""
    return list(graph.ancestors(_parents_of(lg), tips, stop=stop or (), oldest_first=True))


def is_ancestor(lg: LocalLedger, old: str, new: str) -> bool:
    """Whether commit ``old`` is ``new`` or one of its ancestors (records must be local)."""
    return old in graph.ancestors(_parents_of(lg), [new])


def _parents_of(lg: LocalLedger) -> graph.ParentsOf:
    return lambda cid: lg.record(cid).parents


def known(lg: LocalLedger, cid: str) -> bool:
    """Whether this ledger stores the record of commit ``cid`` (never asks a remote)."""
    return lg.store.locate(bytes.fromhex(cid)) is not None


def track(lg: LocalLedger, name: str, tips: dict[str, str], reason: str) -> None:
    """Point ``refs/remotes/<name>/<branch>`` at ``tips`` (compare-and-swap on the local log)."""
    local = lg.refs.snapshot()
    prefix = f"{REMOTE_PREFIX}{name}/"
    changes: dict[str, tuple[str | None, str | None]] = {
        prefix + b: (local.get(prefix + b), cid)
        for b, cid in tips.items()
        if local.get(prefix + b) != cid
    }
    if changes:
        lg.refs.update(changes, reason)
