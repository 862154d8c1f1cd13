"""Packs written with O_DIRECT (``ledger.objects.direct``): same bytes, errors surface, fallbacks.

What must hold:

* any sequence of writes gives the file exactly their concatenation, with
  ``O_DIRECT`` really set on the descriptor (hypothesis);
* a failed background write surfaces on the next write or on ``flush`` and
  is never lost; ``close`` after it still closes and keeps the buffers;
* a file system that refuses a direct write (EINVAL) gets the bytes plainly;
* a durable commit's pack bypasses the page cache, reads back bit-exact and
  verifies; ``LEDGER_DIRECT_IO=0`` writes through the cache instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ledger import Ledger
from ledger.objects import direct

pytestmark = pytest.mark.skipif(not direct.O_DIRECT, reason="O_DIRECT is Linux-only")
fcntl = pytest.importorskip("fcntl")

SMALL = 4 * direct.BLOCK  # per-buffer size in these tests: many buffers per file


@pytest.fixture(autouse=True)
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(direct, "BUFFER", SMALL)


@pytest.fixture(scope="module")
def pool() -> Any:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def open_direct(path: Path) -> Any:
    try:
        return open(path, "wb", buffering=0, opener=direct.direct_opener)
    except OSError as e:  # pragma: no cover - depends on the file system under tmp
        pytest.skip(f"the file system under {path.parent} refuses O_DIRECT: {e}")


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache (mincore on a mapping that touches nothing)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        vec = (ctypes.c_ubyte * pages)()
        try:
            assert libc.mincore(addr, size, vec) == 0
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in bytes(vec))


@given(sizes=st.lists(st.integers(0, 3 * SMALL), max_size=12), seed=st.integers(0, 255))
def test_any_sequence_of_writes_gives_their_concatenation(
    tmp_path: Path, pool: Any, sizes: list[int], seed: int
) -> None:
    path = tmp_path / f"f{seed}-{len(sizes)}"
    raw = open_direct(path)
    assert fcntl.fcntl(raw.fileno(), fcntl.F_GETFL) & direct.O_DIRECT
    f = direct.DirectFile(raw, pool, direct.Buffers())
    pieces = [bytes((seed + i + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    for piece in pieces:
        assert f.write(memoryview(piece)) == len(piece)
    f.flush()
    f.close()
    assert path.read_bytes() == b"".join(pieces)
    path.unlink()


class FailingFile:
    """An OS file whose ``fail``-th write raises ``error`` (while O_DIRECT is on, if ``direct_only``)."""

    def __init__(self, raw: Any, fail: int, error: int, direct_only: bool = False) -> None:
        self.raw, self.fail, self.error, self.direct_only = raw, fail, error, direct_only
        self.writes = 0

    def write(self, data: Any) -> int:
        self.writes += 1
        on = fcntl.fcntl(self.raw.fileno(), fcntl.F_GETFL) & direct.O_DIRECT
        if self.writes >= self.fail and (on or not self.direct_only):
            raise OSError(self.error, os.strerror(self.error))
        return int(self.raw.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


@pytest.mark.parametrize("fail", [1, 2, 3])
def test_a_failed_background_write_surfaces_on_the_next_call_and_close_still_closes(
    tmp_path: Path, pool: Any, fail: int
) -> None:
    raw = open_direct(tmp_path / "f")
    failing = FailingFile(raw, fail, errno.ENOSPC)
    buffers = direct.Buffers()
    f = direct.DirectFile(failing, pool, buffers)
    with pytest.raises(OSError) as info:
        for _ in range(8):
            f.write(b"x" * SMALL)  # each fills a buffer: sent while the next one fills
        f.flush()
    assert info.value.errno == errno.ENOSPC
    f.close()
    assert raw.closed
    assert len(buffers._free) == direct.DEPTH  # every buffer back for the next pack


def test_a_direct_write_the_file_system_refuses_is_written_plainly(
    tmp_path: Path, pool: Any
) -> None:
    path = tmp_path / "f"
    raw = open_direct(path)
    refusing = FailingFile(raw, 2, errno.EINVAL, direct_only=True)
    f = direct.DirectFile(refusing, pool, direct.Buffers())
    data = os.urandom(3 * SMALL + 123)
    f.write(data)
    f.flush()
    f.close()
    assert path.read_bytes() == data
    assert refusing.writes >= 4  # the refused write was tried again, plainly


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(300_000, generator=g), "b": torch.randn(77, generator=g)}


@pytest.mark.parametrize("setting", ["1", "0"])
def test_a_durable_commit_writes_its_pack_around_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str
) -> None:
    monkeypatch.setenv("LEDGER_DIRECT_IO", setting)
    with Ledger.open(tmp_path / "l", create=True, fsync=True, compress=False) as lg:
        c = lg.commit(state(), rng=False)
        (pack,) = (lg.root / "objects" / "packs").glob("*.pack")
        pages = (pack.stat().st_size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        cached = resident_pages(pack)
        if setting == "1":
            assert cached <= 2 * SMALL // mmap.PAGESIZE  # only the plain tail was cached
        else:
            assert cached == pages
        got = lg.checkout(c.id)
        assert all(torch.equal(got[k], v) for k, v in state().items())
        assert lg.verify(full=True).ok
