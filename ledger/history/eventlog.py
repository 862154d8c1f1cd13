"""The append-only event log: the source of truth for refs and HEAD.

This module owns the log's framing (see docs/format.md, "Event log"): a file
header, then frames of ``b"LGEV"``, u32 payload length, u32 crc32 of the
payload, and the payload: a msgpack array of the events of one append (one
frame per append, so an append is atomic). A frame that is incomplete or fails its checksum at
the end of the file is a *torn tail* (a crash mid-append): readers ignore it
and the next writer cuts it off before appending. A damaged frame followed by
valid frames is corruption, never silently skipped: readers refuse it, and
only ``verify --repair`` moves it aside (``excise_damaged``), saying so. This module must never
interpret events; refs.py does.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import msgspec

from ledger.errors import CorruptionError, FormatVersionError, PolicyError
from ledger.history.records import Event, events_decoder, msgpack_encoder, unknown_tags
from ledger.objects.durable import atomic_write, disk_errors, fsync_dir
from ledger.objects.hashing import new_hasher
from ledger.objects.safepath import open_nofollow

LOG_HEADER = b"LGEVLOG1"
FRAME_MAGIC = b"LGEV"
FRAME = struct.Struct("<4sII")
MAX_EVENT_BYTES = 1 << 24


ASIDE_SUFFIX = ".aside"


class LogRead(msgspec.Struct):
    """Events read from an offset, where the valid part ends, and torn bytes after it."""

    events: list[Event]
    end: int
    torn_bytes: int


class Tail(msgspec.Struct):
    """A damaged tail: where it starts, its bytes, and what can be said of them.

    ``complete`` is True when the bytes start with a frame header whose length
    fits the file (a full-length frame whose checksum fails, not a short write).
    ``events`` are what the payload decodes to despite the checksum, if it does:
    untrusted hints, never replayed.
    """

    offset: int
    data: bytes
    complete: bool
    events: list[Event]
    source: str  # "events.log" or the side file's name


def describe_tail(offset: int, data: bytes, source: str) -> Tail:
    """What a damaged tail's bytes say (see :class:`Tail`).

    Example:
        >>> describe_tail(8, b"LGEV", "events.log").complete
        False
    """
    complete = False
    events: list[Event] = []
    if len(data) >= FRAME.size:
        magic, length, _ = FRAME.unpack_from(data, 0)
        complete = magic == FRAME_MAGIC and FRAME.size + length <= len(data)
        if complete:
            with contextlib.suppress(msgspec.DecodeError, PolicyError, RecursionError):
                events = events_decoder.decode(data[FRAME.size : FRAME.size + length])
    return Tail(offset=offset, data=data, complete=complete, events=events, source=source)


def _frame_at(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The payload of a valid frame at ``pos`` and the offset after it, or None."""
    if pos + FRAME.size > len(data):
        return None
    magic, length, crc = FRAME.unpack_from(data, pos)
    start = pos + FRAME.size
    if magic != FRAME_MAGIC or length > MAX_EVENT_BYTES or start + length > len(data):
        return None
    payload = data[start : start + length]
    if zlib.crc32(payload) != crc:
        return None
    return payload, start + length


def _next_frame(data: bytes, cur: int) -> int | None:
    """Where the first intact frame after byte ``cur`` starts, or None."""
    probe = data.find(FRAME_MAGIC, cur + 1)
    while probe != -1:
        if _frame_at(data, probe) is not None:
            return probe
        probe = data.find(FRAME_MAGIC, probe + 1)
    return None


class EventLog:
    """The file ``<ledger>/events.log``.

    Example:
        >>> import tempfile
        >>> log = EventLog(Path(tempfile.mkdtemp()) / "events.log", fsync=False)
        >>> log.create()
        >>> log.read_from(0).events
        []
    """

    def __init__(self, path: Path, *, fsync: bool) -> None:
        self.path = path
        self.fsync = fsync
        # The hash of the prefix the last digest covered, to extend rather than redo:
        # (file identity, prefix length, hasher state, the prefix's last bytes).
        self._prefix: tuple[tuple[int, int], int, Any, bytes] | None = None
        self._prefix_lock = threading.Lock()

    def create(self) -> None:
        """Write an empty log (header only)."""
        with disk_errors(str(self.path)), open(self.path, "xb") as f:
            f.write(LOG_HEADER)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        if self.fsync:
            fsync_dir(self.path.parent)

    def read_from(self, offset: int) -> LogRead:
        """Decode every complete event from ``offset`` (0 means the start of the log).

        Raises:
            CorruptionError: the header is wrong, or a damaged frame has valid
                frames after it (a flipped byte, not a torn tail).
        """
        with open(self.path, "rb") as f:
            head = f.read(len(LOG_HEADER))
            if head != LOG_HEADER:
                raise CorruptionError(
                    f"{self.path} is not an event log (bad header); if it is this ledger's "
                    "log with a damaged header, `ledger verify --repair` rewrites the header",
                    path=str(self.path),
                )
            pos = max(offset, len(LOG_HEADER))
            f.seek(pos)
            data = f.read()
        events: list[Event] = []
        cur = 0
        while cur < len(data):
            frame = _frame_at(data, cur)
            if frame is None:
                self._check_torn(data, cur, pos)
                return LogRead(events=events, end=pos + cur, torn_bytes=len(data) - cur)
            payload, nxt = frame
            events.extend(self._decode(payload, pos + cur))
            cur = nxt
        return LogRead(events=events, end=pos + cur, torn_bytes=0)

    def prefix_digest(self, offset: int, body: bytes) -> bytes | None:
        """The blake3 of the log's first ``offset`` bytes then ``body`` (None: the log is shorter).

        What a ref view's ``digest`` must equal for the view to be trusted (refs.py).
        The log only grows, so the hash of the prefix a previous call covered is
        extended by the bytes appended since (once the same file still holds the
        same last bytes there): each read of the refs costs what was appended, not
        the whole history.
        """
        with self._prefix_lock, open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            ident = (st.st_dev, st.st_ino)
            hasher, start, tail = new_hasher(), 0, b""
            cached = self._prefix
            if cached is not None and cached[0] == ident and cached[1] <= offset <= st.st_size:
                f.seek(cached[1] - len(cached[3]))
                if f.read(len(cached[3])) == cached[3]:
                    hasher, start, tail = cached[2].copy(), cached[1], cached[3]
            f.seek(start)
            more = f.read(offset - start)
            if offset < len(LOG_HEADER) or start + len(more) != offset:
                return None
            hasher.update(more)
            self._prefix = (ident, offset, hasher.copy(), (tail + more)[-64:])
        hasher.update(body)
        return bytes(hasher.digest())

    def window_digest(self, offset: int, window: int, body: bytes) -> bytes | None:
        """The blake3 of ``offset`` (u64), the last ``window`` bytes of the log's first
        ``offset`` bytes, then ``body`` (None: the log is shorter than ``offset``).

        What a format-4 ref view's ``digest`` must equal: it ties the view to the
        frames just before its offset (a view of another log, or of an offset moved,
        does not match) at a cost independent of the log's length.
        """
        start = max(0, offset - window)
        with open(self.path, "rb") as f:
            f.seek(start)
            tail = f.read(offset - start)
        if offset < len(LOG_HEADER) or start + len(tail) != offset:
            return None
        hasher = new_hasher()
        hasher.update(offset.to_bytes(8, "little") + tail)
        hasher.update(body)
        return bytes(hasher.digest())

    def _decode(self, payload: bytes, at: int) -> list[Event]:
        """The events of an intact frame at byte ``at``; anything else is a LedgerError."""
        # An intact frame is still untrusted bytes: a policy that fails its own check
        # (PolicyError from __post_init__) or nesting deeper than the interpreter can
        # recurse is corruption of this file, like any other undecodable payload.
        try:
            return events_decoder.decode(payload)
        except (msgspec.DecodeError, PolicyError, RecursionError) as e:
            error = e
        try:
            newer = unknown_tags(payload)
        except RecursionError:
            newer = set()
        if newer:
            raise FormatVersionError(
                f"{self.path} holds events of kinds {sorted(newer)} written by a newer "
                "training-ledger; upgrade: pip install -U training-ledger"
            ) from error
        raise CorruptionError(
            f"{self.path}: event at byte {at} cannot be decoded ({error})"
        ) from error

    def _check_torn(self, data: bytes, cur: int, base: int) -> None:
        if _next_frame(data, cur) is not None:
            raise CorruptionError(
                f"{self.path}: the event at byte {base + cur} is damaged but later events "
                "are intact; `ledger verify --repair` sets the damaged frame aside and keeps "
                "every intact one (or restore the log from a copy)",
                path=str(self.path),
            )

    def append(self, events: list[Event], valid_end: int) -> int:
        """Cut anything after ``valid_end`` (a torn tail), append ``events``, make them durable.

        The caller holds the ledger's write lock and has read the log up to
        ``valid_end``. Returns the new end offset.
        """
        # One frame per append: the events of one write stand or fall together, so a
        # power loss can tear only the last frame, never leave a later one intact.
        payload = msgpack_encoder.encode(events)
        blob = FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload
        with disk_errors(str(self.path)):
            fd = open_nofollow(self.path, os.O_RDWR, doing="appending to")
            try:
                self._cut(fd, valid_end)
                try:
                    written = os.pwrite(fd, blob, valid_end)
                    if written != len(blob):
                        # A regular file is written short only when the disk or quota fills.
                        raise OSError(errno.ENOSPC, "short write to the event log")
                    if self.fsync:
                        os.fsync(fd)
                except BaseException:
                    # Take the events back: a failed append must not move a ref for readers.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, valid_end)
                    raise
            finally:
                os.close(fd)
        return valid_end + len(blob)

    def truncate(self, valid_end: int) -> Path | None:
        """Set a damaged tail aside and cut it (the caller holds the write lock, read to ``valid_end``).

        Returns the side file that now holds the tail, or None when there was none.
        """
        with disk_errors(str(self.path)):
            fd = open_nofollow(self.path, os.O_RDWR, doing="truncating")
            try:
                side = self._cut(fd, valid_end)
                if side is not None and self.fsync:
                    os.fsync(fd)
                return side
            finally:
                os.close(fd)

    def _cut(self, fd: int, valid_end: int) -> Path | None:
        """Copy the bytes after ``valid_end`` to a side file (durably), then cut them off.

        Returns the side file, or None when there was nothing to cut. The side
        file is fsync'd before the cut, so a crash in between leaves the tail in both places.
        """
        size = os.fstat(fd).st_size
        if size <= valid_end:
            return None
        tail = os.pread(fd, size - valid_end, valid_end)
        side = self.set_aside(valid_end, tail)
        os.ftruncate(fd, valid_end)
        return side

    def excise_damaged(self) -> list[tuple[int, Path]]:
        """Set aside every damaged frame that intact frames follow, then rewrite the log
        without them (the caller holds the write lock). Returns (offset, side file) of each.

        The damaged bytes go to side files first (durably, as for a torn tail), then the
        log is replaced atomically by its header and every intact frame, in order: no
        byte of the old log is lost, and a crash in between leaves the old log whole. A
        torn last frame is left where it is (the next writer sets it aside).
        """
        with disk_errors(str(self.path)):
            fd = open_nofollow(self.path, os.O_RDONLY, doing="repairing")
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
            finally:
                os.close(fd)
        kept, damaged = [LOG_HEADER], []
        if not data.startswith(LOG_HEADER):
            # A damaged header before frames that are intact: the file is a log (ours).
            if _frame_at(data, len(LOG_HEADER)) is None:
                raise CorruptionError(f"{self.path} is not an event log (bad header)")
            damaged.append((0, data[: len(LOG_HEADER)]))
        cur = len(LOG_HEADER)
        while cur < len(data):
            frame = _frame_at(data, cur)
            if frame is not None:
                kept.append(data[cur : frame[1]])
                cur = frame[1]
                continue
            nxt = _next_frame(data, cur)
            if nxt is None:
                kept.append(data[cur:])  # a torn tail: readers ignore it, a writer cuts it
                break
            damaged.append((cur, data[cur:nxt]))
            cur = nxt
        sides = [(offset, self.set_aside(offset, bad)) for offset, bad in damaged]
        if sides:
            tmp = self.path.parent / "objects" / "tmp"
            atomic_write(
                self.path, b"".join(kept), fsync=self.fsync, tmp_dir=tmp if tmp.is_dir() else None
            )
        return sides

    def retire_aside(self, tail: Tail) -> None:
        """Mark a set-aside tail as dealt with (``.aside`` becomes ``.aside.kept``; nothing is deleted)."""
        side = self.path.with_name(tail.source)
        if tail.source.endswith(ASIDE_SUFFIX) and side != self.path:
            with disk_errors(str(side)):
                os.replace(side, side.with_name(side.name + ".kept"))

    def set_aside(self, offset: int, data: bytes) -> Path:
        """Keep ``data`` (a damaged tail that started at ``offset``) in a new side file.

        A side file that already holds these bytes is reused, so a crash between
        setting aside and cutting does not multiply copies.
        """
        for n in itertools.count():
            name = f"{self.path.name}.{offset}{f'.{n}' if n else ''}{ASIDE_SUFFIX}"
            side = self.path.with_name(name)
            if side.with_name(name + ".kept").exists():
                continue  # an older tail at this offset, already dealt with
            try:
                if side.read_bytes() == data:
                    return side
                continue
            except FileNotFoundError:
                pass
            tmp = self.path.parent / "objects" / "tmp"
            atomic_write(side, data, fsync=self.fsync, tmp_dir=tmp if tmp.is_dir() else None)
            return side
        raise AssertionError("unreachable")  # pragma: no cover

    def aside_tails(self) -> list[Tail]:
        """Every damaged tail a writer set aside, oldest offset first."""
        tails = []
        prefix = self.path.name + "."
        for side in sorted(self.path.parent.glob(f"{self.path.name}.*{ASIDE_SUFFIX}")):
            offset = side.name[len(prefix) :].split(".")[0]
            if not offset.isdigit() or side.is_symlink() or not side.is_file():
                continue
            with disk_errors(str(side)):
                data = side.read_bytes()
            tails.append(describe_tail(int(offset), data, side.name))
        return sorted(tails, key=lambda t: (t.offset, t.source))

    def tail(self, valid_end: int) -> Tail | None:
        """The damaged tail after ``valid_end`` (what ``read_from`` ignored), or None."""
        with disk_errors(str(self.path)), open(self.path, "rb") as f:
            f.seek(valid_end)
            data = f.read()
        return describe_tail(valid_end, data, self.path.name) if data else None
