"""The parsers of untrusted bytes: the event log and a pack's index (design invariants 2 and 5).

Whatever bytes lie in ``events.log`` or in a pack file, reading them gives a
valid parse whose entries are within bounds, or a ``LedgerError`` whose
message names the file; never another exception and never a hang (every
example runs under a deadline). Mutations of valid files pin the exact
outcome: a truncated or torn event log is read up to its last complete frame
(and the next writer cuts the rest off); a flipped byte is corruption, or (in
the last frame) a torn tail; any damage outside a pack's blob area is
corruption.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger.errors import CorruptionError, LedgerError
from ledger.history.eventlog import FRAME, FRAME_MAGIC, LOG_HEADER, EventLog, LogRead
from ledger.history.records import Event, Expire, KeepLast, RefUpdate, RetentionSet
from ledger.history.refs import RefStore
from ledger.objects.codecs import CODEC_NAMES
from ledger.objects.hashing import HASH_BYTES, hash_bytes
from ledger.objects.packs import (
    FOOTER,
    FOOTER_MAGIC,
    HEADER,
    KINDS,
    PACK_MAGIC,
    PACK_VERSION,
    IndexEntry,
    PackIndex,
    encode_pack_tail,
    entry_is_valid,
    read_pack_index,
)

# A hang is an example that outlives this (generous: the machine is shared).
parsers = settings(
    deadline=dt.timedelta(seconds=5),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

UTC = dt.UTC
times = st.datetimes(
    min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(2200, 1, 1), timezones=st.just(UTC)
)
names = st.text(max_size=40)
ids = st.none() | st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
events: st.SearchStrategy[Event] = st.one_of(
    st.builds(RefUpdate, ref=names, old=ids, new=ids, time=times, reason=names),
    st.builds(
        RetentionSet,
        scope=names,
        policies=st.lists(st.builds(KeepLast, st.integers(1, 2**40)), max_size=3),
        time=times,
    ),
    st.builds(Expire, commit=names, reason=names, time=times),
)
appends = st.lists(st.lists(events, min_size=1, max_size=3), min_size=1, max_size=5)
# msgpack values of any shape, and records that carry a known tag with arbitrary fields.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | times
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
tags = st.sampled_from(
    ["ref", "retention", "expire", "keep-last", "keep-best", "keep-every", "keep-within", "x"]
)
records = st.recursive(
    st.fixed_dictionaries({"type": tags}, optional={k: values for k in ("ref", "n", "time")}),
    lambda inner: st.fixed_dictionaries(
        {"type": tags},
        optional={"policies": st.lists(inner, max_size=3), "scope": values, "time": times},
    ),
    max_leaves=6,
)


def frame(payload: bytes) -> bytes:
    """One frame of the documented layout around ``payload`` (checksum correct)."""
    return FRAME.pack(FRAME_MAGIC, len(payload), zlib.crc32(payload)) + payload


def flipped(data: bytes, mask: int) -> Iterator[tuple[int, bytes]]:
    """``data`` with one byte changed, for every offset, by ``mask`` and by its lowest bit."""
    for at in range(len(data)):
        for m in {mask, 1}:
            damaged = bytearray(data)
            damaged[at] ^= m
            yield at, bytes(damaged)


def written_log(path: Path, batches: list[list[Event]]) -> list[int]:
    """Write a log with the real writer, one append per batch; the frame boundaries."""
    path.unlink(missing_ok=True)  # examples share the test's tmp_path
    log = EventLog(path, fsync=False)
    log.create()
    bounds = [len(LOG_HEADER)]
    for batch in batches:
        bounds.append(log.append(batch, bounds[-1]))
    return bounds


def read_log(path: Path) -> LogRead | LedgerError:
    """What a reader gets from ``path``: the parse (checked for bounds) or the LedgerError."""
    try:
        read = EventLog(path, fsync=False).read_from(0)
    except LedgerError as e:
        assert str(path) in str(e), e
        return e
    size = path.stat().st_size
    assert len(LOG_HEADER) <= read.end <= size
    assert read.torn_bytes == size - read.end
    assert all(isinstance(ev, RefUpdate | RetentionSet | Expire) for ev in read.events)
    return read


def refs_of(root: Path) -> dict[str, str] | LedgerError:
    """The refs a RefStore replays from ``root/events.log``, or the LedgerError it raises."""
    try:
        return RefStore(root, fsync=False).snapshot()
    except LedgerError as e:
        return e


# -- the event log: arbitrary bytes ------------------------------------------------------------


@parsers
@given(data=st.binary(max_size=600), headed=st.booleans())
def test_any_bytes_as_an_event_log_read_or_raise_naming_the_log(
    tmp_path: Path, data: bytes, headed: bool
) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(LOG_HEADER + data if headed else data)
    got = read_log(path)
    if not (headed or data.startswith(LOG_HEADER)):
        assert isinstance(got, CorruptionError)
    assert isinstance(refs_of(tmp_path), dict | LedgerError)


@parsers
@given(
    payloads=st.lists(
        st.binary(max_size=80)
        | values.map(msgspec.msgpack.encode)
        | st.lists(records, max_size=3).map(msgspec.msgpack.encode),
        min_size=1,
        max_size=4,
    )
)
@example(payloads=[b"\x91" * 5000 + b"\xc0"])  # nested deeper than the interpreter recurses
@example(payloads=[msgspec.msgpack.encode([{"type": "keep-last", "n": 0}])])
@example(
    payloads=[
        msgspec.msgpack.encode(
            [{"type": "retention", "scope": "", "policies": [{"type": "keep-last", "n": 0}]}]
        )
    ]
)
def test_any_payload_in_intact_frames_decodes_or_raises_naming_the_log(
    tmp_path: Path, payloads: list[bytes]
) -> None:
    path = tmp_path / "events.log"
    path.write_bytes(LOG_HEADER + b"".join(frame(p) for p in payloads))
    got = read_log(path)
    if isinstance(got, LogRead):
        assert got.torn_bytes == 0, "intact frames are never a torn tail"
    assert isinstance(refs_of(tmp_path), dict | LedgerError)


# -- the event log: valid logs, mutated ---------------------------------------------------------


@parsers
@given(batches=appends, more=st.lists(events, min_size=1, max_size=2))
def test_a_log_cut_at_any_offset_reads_its_complete_frames_and_the_writer_cuts_the_rest(
    tmp_path: Path, batches: list[list[Event]], more: list[Event]
) -> None:
    path = tmp_path / "events.log"
    bounds = written_log(path, batches)
    whole = path.read_bytes()
    for cut in range(len(whole) + 1):
        path.write_bytes(whole[:cut])
        got = read_log(path)
        if cut < len(LOG_HEADER):
            assert isinstance(got, CorruptionError), cut
            continue
        assert isinstance(got, LogRead), (cut, got)
        complete = sum(1 for b in bounds[1:] if b <= cut)
        assert got.events == [ev for batch in batches[:complete] for ev in batch], cut
        assert got.end == bounds[complete]
        # The next writer sets the torn tail aside, cuts it and appends after the last
        # complete frame; the tail's bytes are kept in a side file, never lost.
        EventLog(path, fsync=False).append(more, got.end)
        after = read_log(path)
        assert isinstance(after, LogRead) and after.torn_bytes == 0
        assert after.events == got.events + more
        assert path.read_bytes()[: got.end] == whole[: got.end]
        sides = sorted(tmp_path.glob("events.log.*.aside"))
        assert [p.read_bytes() for p in sides] == ([whole[got.end : cut]] if cut > got.end else [])
        for side in sides:  # each cut starts afresh (else one offset piles up side files)
            side.unlink()


@parsers
@given(batches=appends, mask=st.integers(1, 255))
def test_a_flipped_byte_is_corruption_or_a_torn_last_frame(
    tmp_path: Path, batches: list[list[Event]], mask: int
) -> None:
    path = tmp_path / "events.log"
    bounds = written_log(path, batches)
    whole = path.read_bytes()
    for at, flip in flipped(whole, mask):
        path.write_bytes(flip)
        got = read_log(path)
        if at >= bounds[-2]:
            # Damage in the last frame cannot be told from a crash mid-append.
            assert isinstance(got, LogRead), (at, got)
            assert got.events == [ev for batch in batches[:-1] for ev in batch]
            assert (got.end, got.torn_bytes) == (bounds[-2], bounds[-1] - bounds[-2])
        else:
            assert isinstance(got, CorruptionError), (at, got)
        assert isinstance(refs_of(tmp_path), dict | LedgerError)


@parsers
@given(batches=appends, garbage=st.binary(min_size=1, max_size=200))
def test_garbage_after_a_log_is_a_torn_tail(
    tmp_path: Path, batches: list[list[Event]], garbage: bytes
) -> None:
    path = tmp_path / "events.log"
    bounds = written_log(path, batches)
    with open(path, "ab") as f:
        f.write(garbage)
    got = read_log(path)
    assert isinstance(got, LogRead), got
    assert got.events == [ev for batch in batches for ev in batch]
    assert (got.end, got.torn_bytes) == (bounds[-1], len(garbage))


@parsers
@given(
    batches=appends,
    length=st.integers(0, 2**32 - 1),
    rest=st.binary(max_size=64),
    middle=st.booleans(),
)
def test_a_huge_declared_length_is_a_torn_tail_at_the_end_and_corruption_before_a_frame(
    tmp_path: Path, batches: list[list[Event]], length: int, rest: bytes, middle: bool
) -> None:
    path = tmp_path / "events.log"
    bounds = written_log(path, batches)
    valid = path.read_bytes()
    length = max(length, len(rest) + 1)  # declares more than the file holds after it
    bad = FRAME.pack(FRAME_MAGIC, length, zlib.crc32(rest)) + rest.replace(FRAME_MAGIC, b"")
    after = frame(msgspec.msgpack.encode([])) if middle else b""
    path.write_bytes(valid + bad + after)
    got = read_log(path)
    if middle:
        assert isinstance(got, CorruptionError), got
    else:
        assert isinstance(got, LogRead), got
        assert (got.end, got.torn_bytes) == (bounds[-1], len(bad))


# -- pack index ----------------------------------------------------------------------------------


def write_pack(folder: Path, blobs: list[bytes]) -> tuple[Path, list[IndexEntry], int]:
    """A pack of ``blobs`` in the documented layout: its path, entries and index offset."""
    body = HEADER.pack(PACK_MAGIC, PACK_VERSION)
    entries = []
    for blob in blobs:
        entries.append(IndexEntry(hash_bytes(blob), "blob", "raw", len(body), len(blob), len(blob)))
        body += blob
    tail, name = encode_pack_tail(entries, len(body))
    path = folder / f"{name}.pack"
    path.write_bytes(body + tail)
    return path, entries, len(body)


def read_index(path: Path) -> list[IndexEntry] | CorruptionError:
    """The entries of the pack at ``path`` (checked for bounds) or the CorruptionError naming it."""
    try:
        entries = read_pack_index(path)
    except CorruptionError as e:
        assert path.name in str(e), e
        return e
    offset, _, _, _ = FOOTER.unpack(path.read_bytes()[-FOOTER.size :])
    for e in entries:
        assert len(e.id) == HASH_BYTES and e.kind in KINDS and e.codec in CODEC_NAMES
        assert HEADER.size <= e.offset and e.length >= 0 and e.offset + e.length <= offset
    return entries


blob_lists = st.lists(st.binary(max_size=40), max_size=5)
u64 = st.integers(-(2**63), 2**64 - 1)
any_entries = st.builds(
    IndexEntry,
    id=st.binary(min_size=HASH_BYTES - 1, max_size=HASH_BYTES + 1),
    kind=st.sampled_from(KINDS) | st.text(max_size=8),
    codec=st.sampled_from(sorted(CODEC_NAMES)) | st.text(max_size=8),
    offset=st.integers(-1, 200) | u64,
    length=st.integers(-1, 200) | u64,
    raw_length=st.integers(-1, 200) | u64,
)


@parsers
@given(data=st.binary(max_size=400))
def test_any_bytes_as_a_pack_are_refused_naming_the_pack(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / f"{hash_bytes(data).hex()}.pack"
    path.write_bytes(data)
    assert isinstance(read_index(path), CorruptionError)


@parsers
@given(
    index=st.binary(max_size=200) | values.map(msgspec.msgpack.encode),
    blobs=st.binary(max_size=64),
    version=st.integers(0, 2**32 - 1),
)
def test_any_index_under_a_matching_footer_and_name_parses_or_is_refused(
    tmp_path: Path, index: bytes, blobs: bytes, version: int
) -> None:
    body = HEADER.pack(PACK_MAGIC, version) + blobs
    digest = hash_bytes(index)
    path = tmp_path / f"{digest.hex()}.pack"
    path.write_bytes(body + index + FOOTER.pack(len(body), len(index), digest, FOOTER_MAGIC))
    got = read_index(path)
    if version != PACK_VERSION:
        assert isinstance(got, CorruptionError)


@parsers
@given(entries=st.lists(any_entries, max_size=4), blobs=st.binary(max_size=64))
def test_an_index_of_any_entries_is_read_whole_only_when_every_entry_is_in_bounds(
    tmp_path: Path, entries: list[IndexEntry], blobs: bytes
) -> None:
    body = HEADER.pack(PACK_MAGIC, PACK_VERSION) + blobs
    tail, name = encode_pack_tail(entries, len(body))
    path = tmp_path / f"{name}.pack"
    path.write_bytes(body + tail)
    got = read_index(path)
    if all(entry_is_valid(e, len(body)) for e in entries):
        assert got == entries
    else:
        assert isinstance(got, CorruptionError)


@parsers
@given(entry=any_entries, blobs_end=u64)
def test_entry_is_valid_only_for_an_entry_inside_the_blob_area(
    entry: IndexEntry, blobs_end: int
) -> None:
    if entry_is_valid(entry, blobs_end):
        assert len(entry.id) == HASH_BYTES and entry.kind in KINDS
        assert HEADER.size <= entry.offset <= entry.offset + entry.length <= blobs_end


@parsers
@given(blobs=blob_lists)
def test_a_pack_cut_at_any_offset_is_refused(tmp_path: Path, blobs: list[bytes]) -> None:
    path, _, _ = write_pack(tmp_path, blobs)
    whole = path.read_bytes()
    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        assert isinstance(read_index(path), CorruptionError), cut


@parsers
@given(blobs=blob_lists, mask=st.integers(1, 255))
def test_a_flipped_byte_outside_the_blobs_is_refused(
    tmp_path: Path, blobs: list[bytes], mask: int
) -> None:
    path, entries, blobs_end = write_pack(tmp_path, blobs)
    for at, flip in flipped(path.read_bytes(), mask):
        path.write_bytes(flip)
        got = read_index(path)
        if HEADER.size <= at < blobs_end:
            # Blob bytes are checked against their hash when read, not by the index.
            assert got == entries
        else:
            assert isinstance(got, CorruptionError), (at, got)


@parsers
@given(blobs=blob_lists, garbage=st.binary(min_size=1, max_size=100))
def test_garbage_after_a_pack_is_refused(
    tmp_path: Path, blobs: list[bytes], garbage: bytes
) -> None:
    path, _, _ = write_pack(tmp_path, blobs)
    with open(path, "ab") as f:
        f.write(garbage)
    assert isinstance(read_index(path), CorruptionError)


@parsers
@given(blobs=blob_lists, offset=u64.filter(lambda n: n >= 0), length=u64.filter(lambda n: n >= 0))
def test_a_footer_declaring_huge_offsets_or_lengths_is_refused(
    tmp_path: Path, blobs: list[bytes], offset: int, length: int
) -> None:
    path, _, _ = write_pack(tmp_path, blobs)
    whole = path.read_bytes()
    true_offset, true_length, digest, magic = FOOTER.unpack(whole[-FOOTER.size :])
    path.write_bytes(whole[: -FOOTER.size] + FOOTER.pack(offset, length, digest, magic))
    got = read_index(path)
    if (offset, length) != (true_offset, true_length):
        assert isinstance(got, CorruptionError)


@pytest.mark.parametrize("declared", [2**32 - 1, 2**63, 2**64 - 1])
def test_a_pack_index_length_beyond_the_bound_is_refused_before_reading(
    tmp_path: Path, declared: int
) -> None:
    path, _, _ = write_pack(tmp_path, [b"abc"])
    whole = path.read_bytes()
    _, _, digest, magic = FOOTER.unpack(whole[-FOOTER.size :])
    path.write_bytes(whole[: -FOOTER.size] + FOOTER.pack(0, declared, digest, magic))
    with pytest.raises(CorruptionError, match=path.name):
        read_pack_index(path)


@pytest.mark.parametrize(("version", "index_format"), [(0, 0), (0, 1), (1, 0), (1, 2)])
def test_a_pack_of_a_format_that_never_existed_or_disagrees_with_its_index_is_refused(
    tmp_path: Path, version: int, index_format: int
) -> None:
    body = HEADER.pack(PACK_MAGIC, version) + b"abc"
    entry = IndexEntry(hash_bytes(b"abc"), "blob", "raw", HEADER.size, 3, 3)
    index = msgspec.msgpack.encode(PackIndex(format=index_format, entries=[entry]))
    digest = hash_bytes(index)
    path = tmp_path / f"{digest.hex()}.pack"
    path.write_bytes(body + index + FOOTER.pack(len(body), len(index), digest, FOOTER_MAGIC))
    with pytest.raises(CorruptionError, match=f"pack {path.name} .*format"):
        read_pack_index(path)
