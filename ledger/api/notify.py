"""Notifications on the facade: ``notify_add/remove/hooks/test`` and the events the API raises.

This module owns when an event is raised (a commit written, a new best, a
commit that failed while writing, a push done or failed, a gc done) and what
it carries; the config file is ``ledger.notify``'s, the payloads
``ledger.notify_payloads``'s and the delivery ``ledger.notify_delivery``'s.
Raising an event never raises and never waits: a broken config or hook is
logged on ``ledger.notify`` and training goes on (docs/notifications.md).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator
from typing import Any

from ledger.api.core import LedgerCore
from ledger.errors import NotifyError
from ledger.history.records import CommitRecord, KeepBest
from ledger.notify import (
    Event,
    Hook,
    NotifyConfig,
    listeners,
    make_hook,
    parse_metric,
    read_config,
    write_config,
)
from ledger.notify_delivery import Delivery, Notifier

log = logging.getLogger("ledger.notify")


class Notifying(LedgerCore):
    """Webhook notifications (Slack, Discord, generic JSON) of this ledger's events."""

    _notifier_instance: Notifier | None = None
    #: (metric, mode) -> (commit id, best value up to and including that commit)
    _best_seen: dict[tuple[str, str], tuple[str, float]] | None = None

    @property
    def notifier(self) -> Notifier:
        """This instance's delivery thread and queue (made on first use)."""
        if self._notifier_instance is None:
            self._notifier_instance = Notifier()
        return self._notifier_instance

    def notify_options(
        self,
        *,
        queue_size: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
    ) -> None:
        """Tune delivery for this process: queue length, per-request timeout (s), retries, backoff (s).

        Example:
            >>> lg.notify_options(timeout=2.0, retries=5)  # doctest: +SKIP
        """
        old = self.notifier
        if queue_size is not None:
            old.close(0.0)
            self._notifier_instance = Notifier(queue_size, old.timeout, old.retries, old.backoff)
        n = self.notifier
        n.timeout = n.timeout if timeout is None else timeout
        n.retries = n.retries if retries is None else retries
        n.backoff = n.backoff if backoff is None else backoff

    def notify_add(
        self,
        name: str,
        url: str,
        *,
        kind: str | None = None,
        on: Iterable[str] | None = None,
        metric: str | None = None,
        replace: bool = False,
    ) -> Hook:
        """Add webhook ``name``: POST to ``url`` on the events ``on``.

        Args:
            name: the hook's name (letters, digits, ``._-``).
            url: the incoming-webhook URL (a secret: kept in ``notify.json``, never pushed).
            kind: ``slack``, ``discord`` or ``json`` (default: guessed from the host).
            on: events among ``commit``, ``best``, ``commit-failed``, ``push``,
                ``push-failed``, ``gc`` (default: best and the failures).
            metric: ``NAME`` or ``NAME:max`` deciding ``best`` (default: the branch's KeepBest).
            replace: overwrite an existing hook of that name.

        Raises:
            NotifyError: a bad name, URL, kind or event, or the name is taken.

        Example:
            >>> lg.notify_add("team", "https://hooks.slack.com/services/T/B/x", on=["best"])  # doctest: +SKIP
        """
        hook = make_hook(name, url, kind, list(on) if on is not None else None, metric)
        with self._lock:
            self._check_open()
            config = read_config(self.root)
            if name in config.hooks and not replace:
                raise NotifyError(
                    f"hook {name!r} exists; remove it first or pass replace=True", hook=name
                )
            write_config(self.root, NotifyConfig(hooks={**config.hooks, name: hook}))
        log.info("notification hook %r added (%s, on %s)", name, hook.kind, ",".join(hook.on))
        return hook

    def notify_remove(self, name: str) -> None:
        """Remove webhook ``name``.

        Raises:
            NotifyError: there is no such hook.

        Example:
            >>> lg.notify_remove("team")  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            config = read_config(self.root)
            if name not in config.hooks:
                raise _no_hook(name, config)
            hooks = {k: v for k, v in config.hooks.items() if k != name}
            write_config(self.root, NotifyConfig(hooks=hooks))

    def notify_hooks(self) -> dict[str, Hook]:
        """Hook name -> :class:`~ledger.notify.Hook` (with its URL: treat it as a secret).

        Example:
            >>> sorted(lg.notify_hooks())  # doctest: +SKIP
            ['team']
        """
        self._check_open()
        return dict(read_config(self.root).hooks)

    def notify_test(self, name: str | None = None) -> list[Delivery]:
        """Send a ``test`` event to hook ``name`` (default: every hook) now, once; how each went.

        Raises:
            NotifyError: there is no such hook, or no hook at all.

        Example:
            >>> [d.ok for d in lg.notify_test()]  # doctest: +SKIP
            [True]
        """
        self._check_open()
        config = read_config(self.root)
        if name is not None and name not in config.hooks:
            raise _no_hook(name, config)
        if not config.hooks:
            raise NotifyError("this ledger has no notification hooks; add one with notify_add")
        hooks = config.hooks if name is None else {name: config.hooks[name]}
        head = self.head
        event = self._event(
            "test",
            commit=head.id if head else None,
            branch=self.current_branch,
            step=head.step if head else None,
            message="a test notification from training-ledger",
        )
        return [self.notifier.deliver(n, hook, event, retries=0) for n, hook in hooks.items()]

    def close(self) -> None:
        """Close the ledger; queued notifications get a short, bounded time to go out."""
        try:
            super().close()
        finally:
            if self._notifier_instance is not None:
                self._notifier_instance.close()

    # -- raising events (never raises, never waits) --------------------------------------

    def _event(self, event: str, **fields: Any) -> Event:
        return Event(event=event, ledger=str(self.root.resolve()), **fields)

    def _raise_event(self, event: str, **fields: Any) -> None:
        try:
            hooks = listeners(read_config(self.root), event)
            if hooks:
                self.notifier.send(hooks, self._event(event, **fields))
        except Exception as e:  # a notification must never fail the work it reports
            log.warning("notification %r not sent: %s", event, e)

    def _notify_commit(self, commit_id: str, record: CommitRecord) -> None:
        """Raise ``commit`` and, where a watched metric improved, ``best``."""
        fields: dict[str, Any] = {
            "commit": commit_id,
            "branch": record.branch,
            "step": record.step,
            "epoch": record.epoch,
            "metrics": dict(record.metrics),
            "message": record.message,
        }
        self._raise_event("commit", **fields)
        try:
            config = read_config(self.root)
            groups: dict[tuple[str, str], dict[str, Hook]] = {}
            for name, hook in listeners(config, "best").items():
                key = self._best_metric(hook, record.branch)
                if key is not None:
                    groups.setdefault(key, {})[name] = hook
            for (metric, mode), hooks in groups.items():
                previous = self._best_before(commit_id, record, metric, mode)
                value = record.metrics.get(metric)
                if value is None or not math.isfinite(value):
                    continue  # a NaN loss is no best
                if previous is None or (value < previous if mode == "min" else value > previous):
                    detail = {"metric": metric, "mode": mode, "value": value, "previous": previous}
                    self.notifier.send(hooks, self._event("best", detail=detail, **fields))
        except Exception as e:
            log.warning("notification 'best' not sent: %s", e)

    def _best_metric(self, hook: Hook, branch: str | None) -> tuple[str, str] | None:
        if hook.metric is not None:
            return parse_metric(hook.metric)
        for policy in self.retention(branch):
            if isinstance(policy, KeepBest):
                return policy.metric, policy.mode
        return None

    def _best_before(
        self, commit_id: str, record: CommitRecord, metric: str, mode: str
    ) -> float | None:
        """The best ``metric`` on the first-parent history before this commit (None: none had it)."""
        seen = self._best_seen if self._best_seen is not None else {}
        self._best_seen = seen
        parent = record.parents[0] if record.parents else None
        cached = seen.get((metric, mode))
        if cached is not None and cached[0] == parent:
            best: float | None = cached[1]
        else:
            best = None
            cid = parent
            while cid is not None:
                rec = self.record(cid)
                value = rec.metrics.get(metric)
                if value is not None and (
                    best is None or (value < best if mode == "min" else value > best)
                ):
                    best = value
                cid = rec.parents[0] if rec.parents else None
        value = record.metrics.get(metric)
        now = best
        if value is not None and (now is None or (value < now if mode == "min" else value > now)):
            now = value
        if now is not None:
            seen[(metric, mode)] = (commit_id, now)
        return best

    @contextlib.contextmanager
    def _reporting(
        self, event: str, detail: dict[str, Any] | None = None, **fields: Any
    ) -> Iterator[None]:
        """Raise ``event`` (a failure) with the error when the body raises; re-raise it."""
        try:
            yield
        except Exception as e:
            error = {**(detail or {}), "type": type(e).__name__, "error": str(e)}
            self._raise_event(event, detail=error, **fields)
            raise


def _no_hook(name: str, config: NotifyConfig) -> NotifyError:
    known = ", ".join(sorted(config.hooks)) or "none"
    return NotifyError(f"no notification hook named {name!r} (hooks: {known})", hook=name)
