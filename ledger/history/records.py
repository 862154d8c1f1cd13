"""Every record the ledger writes, defined once as a msgspec Struct.

This module owns the on-disk shapes of the config, the commit, the events and
the retention policies (see docs/format.md); the manifest's records (the
state's tree) live in ``ledger.manifest``, below both history and state.
Records are encoded as msgpack (config as JSON, so people can read it).
Decoders ignore fields they do not know, so a newer minor writer stays
readable; the ``format`` number is raised when an old reader could misread a
record. This module must never do I/O.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from typing import Any, Literal

import msgspec

from ledger.errors import PolicyError
from ledger.manifest import MANIFEST_TAGS

# 2: manifests may hold file nodes; 3: the ref view checks itself; 4: the merged pack
# index (docs/format.md)
FORMAT_VERSION = 4
LEDGER_KIND = "training-ledger"


class LedgerConfig(msgspec.Struct, kw_only=True):
    """``<ledger>/LEDGER``: identifies the directory and fixes its settings."""

    kind: str = LEDGER_KIND
    format: int = FORMAT_VERSION
    created: dt.datetime
    chunk_size: int
    # True: always try the codecs; False: store raw; "auto": compress only when the
    # measured disk is slower than the codec makes worthwhile (see objects/store.py).
    compress: bool | Literal["auto"] = "auto"
    gc_grace: float = 900.0


# -- commits -------------------------------------------------------------------


class CommitStats(msgspec.Struct):
    """What a commit cost: logical bytes given, new bytes and chunks written."""

    logical_bytes: int = 0
    bytes_written: int = 0
    chunks_total: int = 0
    chunks_written: int = 0
    # Chunks taken as unchanged without reading them (Ledger.open(trust_versions=True)).
    chunks_trusted: int = 0
    tensors: int = 0
    duration_s: float = 0.0


class CommitRecord(msgspec.Struct, tag="commit", kw_only=True):
    """The commit object; its id is the blake3 of its msgpack encoding."""

    format: int = FORMAT_VERSION
    manifest: str
    parents: list[str]
    time: dt.datetime
    branch: str | None = None
    step: int | None = None
    epoch: int | None = None
    message: str | None = None
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    stats: CommitStats = msgspec.field(default_factory=CommitStats)
    # 1 for a root, else 1 + the largest of the parents' (None: written before format 4)
    generation: int | None = None


_RECORD_ONLY = ("format", "generation")  # fields of the record that a Commit does not show


class Commit(msgspec.Struct, frozen=True, kw_only=True):
    """A commit as users see it: the record plus its id.

    Example:
        >>> c = lg.commit({"w": torch.zeros(2)}, step=1)  # doctest: +SKIP
        >>> len(c.id), c.step  # doctest: +SKIP
        (64, 1)
    """

    id: str
    manifest: str
    parents: list[str]
    time: dt.datetime
    branch: str | None = None
    step: int | None = None
    epoch: int | None = None
    message: str | None = None
    metrics: dict[str, float] = {}
    params: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    stats: CommitStats = msgspec.field(default_factory=CommitStats)

    @classmethod
    def from_record(cls, oid: str, rec: CommitRecord) -> Commit:
        """Attach an id to a decoded record."""
        fields = {f: getattr(rec, f) for f in rec.__struct_fields__ if f not in _RECORD_ONLY}
        return cls(id=oid, **fields)


# -- events --------------------------------------------------------------------


class RefUpdate(msgspec.Struct, tag="ref", kw_only=True):
    """A ref moved from ``old`` to ``new`` (None: absent). HEAD holds ``ref: <name>`` or an id."""

    ref: str
    old: str | None
    new: str | None
    time: dt.datetime
    reason: str = ""


# -- retention policies (stored in the log, so `ledger gc` from a shell applies them) --


class KeepLast(msgspec.Struct, tag="keep-last", frozen=True):
    """Keep the newest ``n`` commits of each branch.

    Example:
        >>> KeepLast(3)
        KeepLast(n=3)
    """

    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.n, int) or self.n < 1:
            raise PolicyError(f"KeepLast(n={self.n!r}): n must be a positive integer")


class KeepBest(msgspec.Struct, tag="keep-best", frozen=True):
    """Keep the ``k`` commits of each branch with the best value of ``metric``.

    Example:
        >>> KeepBest("val_loss", k=2, mode="min")
        KeepBest(metric='val_loss', k=2, mode='min')
    """

    metric: str
    k: int = 1
    mode: str = "min"

    def __post_init__(self) -> None:
        if self.mode not in ("min", "max"):
            raise PolicyError(f"KeepBest(mode={self.mode!r}): mode must be 'min' or 'max'")
        if not isinstance(self.k, int) or self.k < 1:
            raise PolicyError(f"KeepBest(k={self.k!r}): k must be a positive integer")


class KeepEvery(msgspec.Struct, tag="keep-every", frozen=True):
    """Keep every commit whose step is a multiple of ``steps``.

    Example:
        >>> KeepEvery(1000)
        KeepEvery(steps=1000)
    """

    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1:
            raise PolicyError(f"KeepEvery(steps={self.steps!r}): steps must be a positive integer")


class KeepWithin(msgspec.Struct, tag="keep-within", frozen=True):
    """Keep every commit newer than ``seconds`` (``KeepWithin("7d")`` also works).

    Example:
        >>> KeepWithin(3600.0)
        KeepWithin(seconds=3600.0)
    """

    seconds: float

    def __post_init__(self) -> None:
        msgspec.structs.force_setattr(self, "seconds", parse_duration(self.seconds))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: object) -> float:
    """Seconds from a number, a ``timedelta`` or text like ``"90s"``, ``"12h"``, ``"7d"``.

    Example:
        >>> parse_duration("7d"), parse_duration(30)
        (604800.0, 30.0)
    """
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip().lower()
        try:
            seconds = float(text[:-1]) * _UNITS[text[-1]] if text[-1] in _UNITS else float(text)
        except ValueError:
            seconds = -1.0
    else:
        seconds = -1.0
    if seconds < 0:
        raise PolicyError(f"duration {value!r} is not valid; use seconds or text like '12h', '7d'")
    return seconds


Policy = KeepLast | KeepBest | KeepEvery | KeepWithin
BUILTIN_POLICIES = (KeepLast, KeepBest, KeepEvery, KeepWithin)


class RetentionSet(msgspec.Struct, tag="retention", kw_only=True):
    """The built-in policies of one scope were replaced (scope "": the whole ledger)."""

    scope: str
    policies: list[Policy]
    time: dt.datetime


class Expire(msgspec.Struct, tag="expire", kw_only=True):
    """A commit's state stopped being kept; its record and metadata stay."""

    commit: str
    reason: str
    time: dt.datetime


class Expiry(msgspec.Struct, frozen=True):
    """Why and when a commit was expired."""

    reason: str
    time: dt.datetime


Event = RefUpdate | RetentionSet | Expire


class RefView(msgspec.Struct, tag="ref-view"):
    """``<ledger>/refs``: what replaying the event log up to ``offset`` gives (a cache).

    ``digest`` (format 3) is the blake3 of the log's first ``offset`` bytes
    followed by ``view_body(view)``; from format 4 (``window`` > 0) it covers
    only the last ``window`` bytes of that prefix, after the offset as a u64, so
    checking it costs the same at any history length. A view without one
    (format 2) or whose digest does not match is not trusted (readers replay
    the whole log).
    """

    offset: int
    refs: dict[str, str]
    retention: dict[str, list[Policy]] = {}
    expired: dict[str, Expiry] = {}
    digest: bytes = b""
    window: int = 0


def view_body(view: RefView) -> bytes:
    """The bytes of a view's content its digest covers (deterministic msgpack).

    Example:
        >>> view_body(RefView(offset=8, refs={"b": "2", "a": "1"}))[:1]
        b'\x93'
    """
    return _deterministic.encode((view.refs, view.retention, view.expired))


class _ViewParts(msgspec.Struct, tag="ref-view"):
    """A ref view's maps as their encoded bytes (to check its digest without re-encoding)."""

    offset: int
    refs: msgspec.Raw
    retention: msgspec.Raw = msgspec.Raw(b"\x80")
    expired: msgspec.Raw = msgspec.Raw(b"\x80")


def encode_view(view: RefView) -> bytes:
    """A ref view's file bytes, every map in key order: :func:`stored_view_body` of them is
    then its :func:`view_body` without encoding it again.

    Example:
        >>> v = RefView(offset=8, refs={"b": "2", "a": "1"})
        >>> stored_view_body(encode_view(v)) == view_body(v)
        True
    """
    return _deterministic.encode(view)


def stored_view_body(data: bytes) -> bytes | None:
    """The :func:`view_body` of the view in ``data`` as its bytes hold it (None: not a view).

    Equal to ``view_body`` of the decoded view when the file was written by
    :func:`encode_view`; any other encoding gives other bytes, which a digest check
    then refuses (so a caller falls back to encoding the decoded view).
    """
    try:
        parts = _view_parts_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return b"\x93" + bytes(parts.refs) + bytes(parts.retention) + bytes(parts.expired)


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime."""
    return dt.datetime.now(dt.timezone.utc)


_KNOWN_TAGS = MANIFEST_TAGS | {
    t.__struct_config__.tag
    for t in (
        CommitRecord,
        RefUpdate,
        RetentionSet,
        Expire,
        KeepLast,
        KeepBest,
        KeepEvery,
        KeepWithin,
    )
}


def unknown_tags(data: bytes) -> set[str]:
    """Record tags in msgpack ``data`` that this version does not know (a newer writer's).

    Example:
        >>> unknown_tags(msgpack_encoder.encode([{"type": "from-the-future"}]))
        {'from-the-future'}
    """
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            tag = value.get("type")
            if isinstance(tag, str) and tag not in _KNOWN_TAGS:
                found.add(tag)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    with contextlib.suppress(msgspec.DecodeError):
        walk(msgspec.msgpack.decode(data))
    return found


msgpack_encoder = msgspec.msgpack.Encoder()
_deterministic = msgspec.msgpack.Encoder(order="deterministic")
commit_decoder = msgspec.msgpack.Decoder(CommitRecord)
events_decoder = msgspec.msgpack.Decoder(list[Event])
refview_decoder = msgspec.msgpack.Decoder(RefView)
_view_parts_decoder = msgspec.msgpack.Decoder(_ViewParts)
config_decoder = msgspec.json.Decoder(LedgerConfig)
