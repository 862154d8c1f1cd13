"""Refs and HEAD: a view of the event log, moved only by compare-and-swap.

This module owns the ledger's write lock, ref-name rules, and the one way to
move a ref: :meth:`RefStore.update` with the values the caller expects the
refs to hold. Under the lock it replays new events, checks every expectation,
appends the events durably, then rewrites the ref view (``<ledger>/refs``), a
cache that can always be rebuilt from the log. It must never write a ref
without an event.

Ref names: ``HEAD``, ``refs/heads/<branch>``, ``refs/tags/<tag>``,
``refs/remotes/<remote>/<branch>`` (remote-tracking, moved by fetch and push).
HEAD holds ``ref: refs/heads/<branch>`` (attached) or a commit id (detached).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec

from ledger.errors import (
    CorruptionError,
    DiskFullError,
    LockTimeoutError,
    RecordTooLargeError,
    RefConflictError,
    RefNameError,
)
from ledger.history.eventlog import EventLog
from ledger.history.records import (
    Event,
    Expire,
    Expiry,
    RefUpdate,
    RefView,
    RetentionSet,
    encode_view,
    refview_decoder,
    stored_view_body,
    utcnow,
    view_body,
)
from ledger.objects.durable import MAX_REF_VIEW_BYTES, atomic_write, read_bounded
from ledger.objects.safepath import open_nofollow

HEAD = "HEAD"
BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"
REMOTE_PREFIX = "refs/remotes/"  # refs/remotes/<remote>/<branch>: set by fetch and push
SYMREF_PREFIX = "ref: "
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def check_ref_name(name: str, what: str) -> str:
    """Validate a branch or tag name (git's rules, simplified) and return it.

    Example:
        >>> check_ref_name("exp/lr-3e-4", "branch")
        'exp/lr-3e-4'
    """
    bad = (
        not _NAME_RE.match(name)
        or ".." in name
        or "//" in name
        or name.endswith(("/", ".", ".lock"))
        or name == HEAD
        or len(name) > 200
    )
    if bad:
        raise RefNameError(
            f"{what} name {name!r} is not valid: use letters, digits and . _ / -, "
            "start with a letter or digit, no '..', not 'HEAD'",
            name=name,
        )
    return name


class WriteLock:
    """An exclusive inter-process lock on ``<ledger>/lock`` (flock), re-entrant per process."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.path = path
        self.timeout = timeout
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Hold the lock for the block, waiting up to ``timeout`` seconds."""
        with self._thread_lock:
            if self._depth == 0:
                self._acquire()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._release()

    def _acquire(self) -> None:
        self._fd = _open_locked(
            self.path,
            shared=False,
            deadline=time.monotonic() + self.timeout,
            busy=f"another process has held {self.path} for over {self.timeout:.0f}s; "
            "if no ledger process is running, retry",
        )

    def _release(self) -> None:
        if self._fd is not None:
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class GcLock:
    """``<ledger>/gc.lock``: commits hold it shared, gc exclusively (see gc.py).

    A turnstile, ``<ledger>/gc.intent``, keeps a stream of commits from
    starving gc: gc takes the turnstile exclusively before it waits for the
    lock, and a commit passes the turnstile (shared, released at once) before
    it takes the lock shared. Once gc is waiting, new commits queue behind it;
    the commits already inside finish, then gc runs. A shared hold must not be
    nested in another shared hold of the same lock (it would wait behind a
    queued gc that waits for the outer hold).

    Example:
        >>> import tempfile
        >>> lock = GcLock(Path(tempfile.mkdtemp()) / "gc.lock")
        >>> with lock.hold(shared=True):
        ...     pass
    """

    def __init__(self, path: Path, timeout: float = 3600.0) -> None:
        self.path = path
        self.intent = path.with_name("gc.intent")
        self.timeout = timeout

    @contextlib.contextmanager
    def hold(self, *, shared: bool) -> Iterator[None]:
        """Hold the lock shared (commits) or exclusive (gc) for the block."""
        deadline = time.monotonic() + self.timeout
        who = "a gc" if shared else "a commit"
        busy = f"{who} has held {self.path} for over {self.timeout:.0f}s; retry when it finishes"
        turnstile = _open_locked(
            self.intent, shared=shared, deadline=deadline, busy=busy, lock=self.path
        )
        try:
            fd = _open_locked(self.path, shared=shared, deadline=deadline, busy=busy)
        except BaseException:
            os.close(turnstile)
            raise
        if shared:
            os.close(turnstile)  # passed: let a waiting gc in behind us
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the flock
            if not shared:
                os.close(turnstile)


def _open_locked(
    path: Path, *, shared: bool, deadline: float, busy: str, lock: Path | None = None
) -> int:
    """Open ``path`` and flock it, polling until ``deadline``; the descriptor holds the lock.

    ``lock`` is the lock an error names (default ``path``: a turnstile names its lock).

    Raises:
        LockTimeoutError: still held by another process at ``deadline`` (``busy`` says so).
    """
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, 0o644, doing="locking")
    if fcntl is None:  # pragma: no cover - Windows: best effort, single writer
        return fd
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise LockTimeoutError(busy, path=str(lock or path)) from None
            time.sleep(0.005)


def _decode_view(data: bytes) -> RefView | None:
    try:
        return refview_decoder.decode(data)
    except msgspec.DecodeError:
        return None


def _copy(view: RefView) -> RefView:
    return RefView(
        offset=view.offset,
        refs=dict(view.refs),
        retention=dict(view.retention),
        expired=dict(view.expired),
    )


# The log bytes before its offset that a ref view's digest covers (format 4): a few
# dozen frames, so a view of another log or of a moved offset never matches.
VIEW_WINDOW = 64 << 10


class RefStore:
    """The refs of one ledger, read from the view + log and moved by CAS."""

    def __init__(self, root: Path, *, fsync: bool) -> None:
        self.log = EventLog(root / "events.log", fsync=fsync)
        self.view_path = root / "refs"
        self.tmp_dir = root / "objects" / "tmp"
        self.lock = WriteLock(root / "lock")
        self.torn_bytes = 0
        # how the last read found the view: ok, missing, unchecked (no digest: an
        # older writer's), mismatch (decodes but disagrees with the log)
        self.view_status = "missing"
        self.view_offset = 0
        # (the view's and the log's stat, the state they gave): reused while neither changed
        self._cached: tuple[tuple[int, ...], RefView] | None = None

    def create(self) -> None:
        """A new log whose first event attaches HEAD to the unborn branch ``main``."""
        self.log.create()
        self.update({HEAD: (None, SYMREF_PREFIX + BRANCH_PREFIX + "main")}, "init")

    def _read_view(self) -> RefView:
        """The view if it proves it was built from this log's prefix, else an empty one.

        A view that decodes but whose digest does not match (a swapped id, a
        shifted byte, a view of another log, an old view with no digest) is
        replaced by a replay of the whole log, in memory: readers never write.
        """
        self.view_status = "missing"
        data = self._view_bytes()
        view = None if data is None else _decode_view(data)
        if view is None or data is None:
            return RefView(offset=0, refs={})
        self.view_status = "unchecked" if not view.digest else "mismatch"
        self.view_offset = view.offset

        def matches(body: bytes | None) -> bool:
            if body is None or not view.digest:
                return False
            if view.window:  # format 4: the frames just before the offset
                return view.digest == self.log.window_digest(view.offset, view.window, body)
            return view.digest == self.log.prefix_digest(view.offset, body)  # format 3

        # the body as stored first (a view this writer wrote: no re-encoding of every ref),
        # then as encoded again (a view written in another key order)
        if matches(stored_view_body(data)) or matches(view_body(view)):
            self.view_status = "ok"
            return view
        return RefView(offset=0, refs={})

    def _view_bytes(self) -> bytes | None:
        try:
            return read_bounded(self.view_path, MAX_REF_VIEW_BYTES)
        except (FileNotFoundError, RecordTooLargeError):
            return None

    def unverified_view(self) -> RefView | None:
        """The ref view as stored, its digest unchecked (None: absent or undecodable).

        Evidence only (what refs looked like when it was written), never read as refs.
        """
        data = self._view_bytes()
        return None if data is None else _decode_view(data)

    def _current(self) -> RefView:
        """The refs as of now: the view checked and the log after it applied, or the state
        the last call found while neither file changed since (every move appends to the
        log, so its size tells; reading and checking 1,000 refs costs ~0.8 ms)."""
        key = self._files_key()
        cached = self._cached
        if key is not None and cached is not None and cached[0] == key:
            return _copy(cached[1])
        state = self._read_current()
        if key is not None:
            self._cached = (key, _copy(state))
        return state

    def _files_key(self) -> tuple[int, ...] | None:
        try:
            log, view = os.stat(self.log.path), os.stat(self.view_path)
        except FileNotFoundError:
            return None
        return (
            log.st_ino,
            log.st_size,
            log.st_mtime_ns,
            view.st_ino,
            view.st_size,
            view.st_mtime_ns,
        )

    def _read_current(self) -> RefView:
        view = self._read_view()
        try:
            read = self.log.read_from(view.offset)
        except CorruptionError:
            if view.offset == 0:
                raise
            # A view whose offset is not a frame boundary of this log is a damaged
            # cache: rebuild from the whole log, which alone decides what is corrupt.
            view = RefView(offset=0, refs={})
            read = self.log.read_from(0)
        if view.offset == 0:
            view = RefView(offset=0, refs={})
        state = _copy(view)
        for event in read.events:
            apply_event(state, event)
        self.torn_bytes = read.torn_bytes
        state.offset = read.end
        return state

    def state(self) -> RefView:
        """Refs, retention policies and expired commits, as of now."""
        return self._current()

    def snapshot(self) -> dict[str, str]:
        """Every ref's current value."""
        return self._current().refs

    def replay_state(self) -> RefView:
        """The state obtained by replaying the whole log, ignoring the view."""
        state = RefView(offset=0, refs={})
        read = self.log.read_from(0)
        for event in read.events:
            apply_event(state, event)
        state.offset = read.end
        return state

    def replay(self) -> dict[str, str]:
        """The refs obtained by replaying the whole log, ignoring the view."""
        return self.replay_state().refs

    def update(
        self,
        changes: dict[str, tuple[str | None, str | None]],
        reason: str,
        extra: list[Event] | None = None,
        reasons: dict[str, str] | None = None,
    ) -> None:
        """Move refs atomically: ``{ref: (expected_old, new)}``; None means absent.

        ``extra`` events (retention, expiry) are appended in the same write;
        ``reasons`` gives some refs' events their own note instead of ``reason``.

        Raises:
            RefConflictError: a ref does not hold its expected value (another
                writer moved it); nothing is changed.
        """
        with self.lock.hold():
            state = self._current()
            for ref, (old, _) in changes.items():
                if state.refs.get(ref) != old:
                    raise RefConflictError(
                        f"{_describe(ref)} moved to {_short(state.refs.get(ref))} while this "
                        f"writer expected {_short(old)}; re-read and retry (nothing was changed)",
                        ref=ref,
                        expected=old,
                        actual=state.refs.get(ref),
                    )
            now = utcnow()
            events: list[Event] = [
                RefUpdate(
                    ref=ref, old=old, new=new, time=now, reason=(reasons or {}).get(ref, reason)
                )
                for ref, (old, new) in changes.items()
            ]
            events.extend(extra or [])
            if not events:
                return
            end = self.log.append(events, state.offset)
            for event in events:
                apply_event(state, event)
            state.offset = end
            # The events are durable: the update has happened. The view is only a
            # cache (readers replay the log past a stale one), so failing to rewrite
            # it (e.g. a full disk) must not report the update as failed.
            with contextlib.suppress(OSError, DiskFullError):
                written = self.write_view(state)
                # under the lock the files are as this writer left them: the next read
                # (the next commit's) needs no decode and check of every ref
                key = self._files_key() if written else None
                if key is not None:
                    self._cached = (key, _copy(state))
                    self.torn_bytes, self.view_status, self.view_offset = 0, "ok", state.offset

    def write_view(self, state: RefView) -> bool:
        """Rewrite the ref view (a cache: not fsync'd, rebuilt from the log if damaged);
        False when it was not written.

        The caller holds the write lock and ``state`` is the replay up to
        ``state.offset``; the view is stamped with the digest of that log prefix.
        """
        digest = self.log.window_digest(state.offset, VIEW_WINDOW, view_body(state))
        if digest is None:
            return False  # the log is shorter than the state claims: write no view that lies
        view = msgspec.structs.replace(state, digest=digest, window=VIEW_WINDOW)
        atomic_write(self.view_path, encode_view(view), fsync=False, tmp_dir=self.tmp_dir)
        return True


def apply_event(state: RefView, event: Event) -> None:
    """Apply one event to a replayed state."""
    if isinstance(event, RefUpdate):
        if event.new is None:
            state.refs.pop(event.ref, None)
        else:
            state.refs[event.ref] = event.new
    elif isinstance(event, RetentionSet):
        if event.policies:
            state.retention[event.scope] = list(event.policies)
        else:
            state.retention.pop(event.scope, None)
    elif isinstance(event, Expire):
        state.expired.setdefault(event.commit, Expiry(reason=event.reason, time=event.time))


def _short(value: str | None) -> str:
    if value is None:
        return "nothing"
    if value.startswith(SYMREF_PREFIX):
        return value[len(SYMREF_PREFIX) :]
    return value[:12]


def _describe(ref: str) -> str:
    if ref.startswith(BRANCH_PREFIX):
        return f"branch {ref[len(BRANCH_PREFIX) :]!r}"
    if ref.startswith(TAG_PREFIX):
        return f"tag {ref[len(TAG_PREFIX) :]!r}"
    return ref
