"""The revision grammar: text such as ``exp:step:<=1000~1`` to a tree and back.

This module owns parsing and formatting revisions (docs/revisions.md) and the
syntax errors' messages. It is pure: no refs, no store, no clock. What a tree
names is ``ledger.history.revisions``' business.

Grammar::

    rev      = base suffix*                  suffix = "~" [digits] | "^"
    base     = [scope ":"] selector | [name] "@{" when "}" | name
    scope    = rev without a selector        (a branch, tag, id, name@{when}, ...)
    selector = "step:" ["<="] digits | "epoch:" digits | "best:" metric [":min" | ":max"]
    when     = date [time] [offset] | N unit[s] "ago" | "now" | "yesterday"

``format_rev(parse_rev(text))`` is the canonical spelling of ``text``, and
``parse_rev(format_rev(tree)) == tree`` for every tree.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

import msgspec

from ledger.errors import RevisionSyntaxError

KEYWORDS = ("step", "epoch", "best")
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
_UNIT_ALIASES = {
    "s": "second",
    "sec": "second",
    "min": "minute",
    "h": "hour",
    "hr": "hour",
    "d": "day",
    "w": "week",
    **{u: u for u in UNITS},
}
_SUFFIX_RE = re.compile(r"(~\d*|\^)$")
_SELECTOR_RE = re.compile(r"(?:^|:)(step|epoch|best):")
_RELATIVE_RE = re.compile(r"^(\d+)\s*([a-z]+?)s?\s+ago$")
_NAME_BAD = re.compile(r"[:{}\s]|@\{")


class Relative(msgspec.Struct, frozen=True, tag="relative"):
    """``N unit ago``: ``amount`` units before the moment of resolving."""

    amount: int
    unit: str  # a key of UNITS


class Absolute(msgspec.Struct, frozen=True, tag="absolute"):
    """A moment; naive (no offset) means the local time zone, as in git."""

    moment: dt.datetime


When = Relative | Absolute


class Name(msgspec.Struct, frozen=True, tag="name"):
    """``HEAD``, ``@``, a branch, tag, remote-tracking branch, ``refs/...`` or id prefix."""

    name: str


class At(msgspec.Struct, frozen=True, tag="at"):
    """``name@{when}``: the ref as the event log had it then (``name`` None: the current branch)."""

    name: str | None
    when: When


class Step(msgspec.Struct, frozen=True, tag="step"):
    """``step:N`` (exactly N) or ``step:<=N`` (the greatest step at or before N)."""

    step: int
    at_most: bool = False


class Epoch(msgspec.Struct, frozen=True, tag="epoch"):
    """``epoch:N``: the newest commit of epoch N."""

    epoch: int


class Best(msgspec.Struct, frozen=True, tag="best"):
    """``best:metric[:min|:max]``: the retained commit with the best value of ``metric``."""

    metric: str
    mode: Literal["min", "max"] = "min"


Selector = Step | Epoch | Best


class Select(msgspec.Struct, frozen=True, tag="select"):
    """``[scope:]selector``: search the first-parent history of ``scope`` (None: HEAD)."""

    scope: Rev | None
    selector: Selector


class Rev(msgspec.Struct, frozen=True):
    """A parsed revision: a base, then first-parent steps back (``~2~1`` is ``(2, 1)``).

    Example:
        >>> parse_rev("main~2")
        Rev(base=Name(name='main'), back=(2,))
    """

    base: Name | At | Select
    back: tuple[int, ...] = ()


def parse_rev(text: str) -> Rev:
    """Parse a revision (surrounding whitespace ignored).

    Raises:
        RevisionSyntaxError: the text is no revision; the message says which part is wrong.

    Example:
        >>> parse_rev("exp:best:val_acc:max").base.selector
        Best(metric='val_acc', mode='max')
    """
    stripped = text.strip()
    if not stripped:
        raise RevisionSyntaxError("the revision is empty; give a branch, tag, id or step:N")
    return _parse(stripped, text)


def _parse(text: str, whole: str) -> Rev:
    back: list[int] = []
    base = text
    while (m := _SUFFIX_RE.search(base)) is not None:
        token = m.group(1)
        back.append(1 if token in ("^", "~") else int(token[1:]))
        base = base[: m.start()]
    back.reverse()
    if not base:
        raise _bad(whole, "it has ~/^ but nothing before them")
    return Rev(base=_parse_base(base, whole), back=tuple(back))


def _selector_start(text: str) -> re.Match[str] | None:
    """The ``step:``/``epoch:``/``best:`` (outside ``@{...}``) that starts the selector.

    The rightmost one whose body is well formed, so that a scope named like a
    keyword works: ``best:step:10`` is step 10 on branch ``best`` (the branch
    the adapters' ``on_best=`` keeps), not a metric named ``step:10``.
    """
    masked = re.sub(r"@\{[^}]*\}", lambda m: "#" * len(m.group(0)), text)
    found = list(re.finditer(r"(?=((?:^|:)(step|epoch|best):))", masked))
    for m in reversed(found[1:]):
        body = text[m.start() + len(m.group(1)) :]
        if _body_ok(m.group(2), body):
            return _SELECTOR_RE.match(text, m.start())
    return _SELECTOR_RE.match(text, found[0].start()) if found else None


def _body_ok(kind: str, body: str) -> bool:
    if kind == "best":
        head, sep, tail = body.rpartition(":")
        return bool(head if sep and tail in ("min", "max") else body)
    digits = body[2:] if kind == "step" and body.startswith("<=") else body
    return digits.isascii() and digits.isdigit()


def _parse_base(text: str, whole: str) -> Name | At | Select:
    m = _selector_start(text)
    if m is not None:
        scope_text = text[: m.start()]
        scope = None
        if m.group(0).startswith(":"):
            if not scope_text:
                raise _bad(whole, "nothing comes before ':'")
            scope = _parse(scope_text, whole)
            if isinstance(scope.base, Select):
                raise _bad(whole, "it has two selectors; give one")
        return Select(scope=scope, selector=_parse_selector(m.group(1), text[m.end() :], whole))
    if "@{" in text:
        name, _, rest = text.partition("@{")
        if not rest.endswith("}"):
            raise _bad(whole, "'@{' has no closing '}'")
        _check_name(name, whole) if name else None
        return At(name=name or None, when=parse_when(rest[:-1], whole))
    _check_name(text, whole)
    return Name(text)


def _check_name(name: str, whole: str) -> None:
    if _NAME_BAD.search(name):
        if ":" in name:
            raise _bad(whole, f"{name!r} has ':' but no selector; use step:N, epoch:N or best:M")
        raise _bad(whole, f"{name!r} is not a ref name (no spaces, braces or ':')")


def _parse_selector(kind: str, body: str, whole: str) -> Selector:
    if kind == "step":
        at_most = body.startswith("<=")
        digits = body[2:] if at_most else body
        return Step(step=_number(digits, "step", whole), at_most=at_most)
    if kind == "epoch":
        return Epoch(epoch=_number(body, "epoch", whole))
    metric, mode = body, "min"
    head, sep, tail = body.rpartition(":")
    if sep and tail in ("min", "max"):
        metric, mode = head, tail
    if not metric:
        raise _bad(whole, "best: needs a metric name, e.g. best:val_loss or best:val_acc:max")
    return Best(metric=metric, mode="max" if mode == "max" else "min")


def _number(digits: str, kind: str, whole: str) -> int:
    if not digits.isdigit() or not digits.isascii():
        example = "step:1000 or step:<=1000" if kind == "step" else "epoch:3"
        raise _bad(whole, f"{kind}: takes a whole number, e.g. {example}")
    return int(digits)


def parse_when(text: str, whole: str | None = None) -> When:
    """Parse the inside of ``@{...}``: a date and time, or ``N units ago``.

    Example:
        >>> parse_when("2 hours ago")
        Relative(amount=2, unit='hour')
    """
    low = " ".join(text.lower().split())
    if low == "now":
        return Relative(0, "second")
    if low == "yesterday":
        return Relative(1, "day")
    m = _RELATIVE_RE.match(low)
    if m is not None:
        unit = _UNIT_ALIASES.get(m.group(2))
        if unit is None:
            raise _bad(whole or text, f"unknown unit {m.group(2)!r}; use {', '.join(UNITS)}")
        return Relative(int(m.group(1)), unit)
    iso = low.upper().replace(" UTC", "Z").replace("UTC", "Z")
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise _bad(
            whole or text,
            f"{text!r} is no time; use e.g. 2026-11-30 12:00, 2026-11-30T12:00+01:00 or 2 hours ago",
        ) from None
    return Absolute(moment)


def format_when(when: When) -> str:
    """The canonical text of a time (``parse_when`` reads it back).

    Example:
        >>> format_when(Relative(1, "day"))
        '1 day ago'
    """
    if isinstance(when, Relative):
        return f"{when.amount} {when.unit}{'' if when.amount == 1 else 's'} ago"
    return when.moment.isoformat(sep=" ")


def format_rev(rev: Rev) -> str:
    """The canonical text of a parsed revision.

    Example:
        >>> format_rev(parse_rev("exp:step:<=1000^^"))
        'exp:step:<=1000~1~1'
    """
    return _format_base(rev.base) + "".join(f"~{n}" for n in rev.back)


def _format_base(base: Name | At | Select) -> str:
    if isinstance(base, Name):
        return base.name
    if isinstance(base, At):
        return f"{base.name or ''}@{{{format_when(base.when)}}}"
    scope = "" if base.scope is None else format_rev(base.scope) + ":"
    return scope + format_selector(base.selector)


def format_selector(sel: Selector) -> str:
    """``step:<=1000``, ``epoch:3``, ``best:val_acc:max`` (``:min`` only where needed).

    Example:
        >>> format_selector(Best("val_loss"))
        'best:val_loss'
    """
    if isinstance(sel, Step):
        return f"step:{'<=' if sel.at_most else ''}{sel.step}"
    if isinstance(sel, Epoch):
        return f"epoch:{sel.epoch}"
    needs_mode = sel.mode == "max" or sel.metric.rpartition(":")[2] in ("min", "max")
    return f"best:{sel.metric}" + (f":{sel.mode}" if needs_mode else "")


def _bad(whole: str, why: str) -> RevisionSyntaxError:
    return RevisionSyntaxError(f"revision {whole.strip()!r} is not valid: {why}", revision=whole)
