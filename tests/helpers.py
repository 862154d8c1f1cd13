"""Helpers shared by the test modules (not a test module; tests/ is on ``sys.path`` under pytest).

``SCRIPTS`` is the folder of the child-process scripts; :func:`load_script`
imports one of them by path, for the helpers the tests share with it;
:func:`start` (or :func:`start_ready`, which waits for the child's
``ready`` line) and :func:`finish` run one as a child process; :func:`bits` is a
comparable image of a state, for bit-exact comparisons, and
:func:`tiny_state` and :func:`random_state` are small states, distinct per
argument.

The rest look at or damage a ledger directory the way a disk or a user would:
:func:`run_cli` runs the ``ledger`` command in-process; :func:`pack_ids`,
:func:`commit_in_new_pack`, :func:`object_ids`, :func:`tree_bytes` and
:func:`dir_bytes` observe the store; :func:`flip_byte`,
:func:`flip_stored_byte` and :func:`damage_chunks` corrupt it; :class:`FullFile`,
:func:`enospc` and :func:`fd_path` fake a full disk, and :func:`tiny_disk` mounts a real
small one.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from ledger import Ledger
from ledger.cli import cli
from ledger.objects.packs import read_pack_index

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def load_script(name: str) -> ModuleType:
    """``tests/scripts/<name>.py`` as a module (a fresh one on every call).

    ``SCRIPTS`` goes on ``sys.path`` first, as it does when a script runs, so the
    scripts can import each other by name.
    """
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start(
    script: Path, *args: str | int | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Run ``script`` with this interpreter; stdout and stderr go to one text pipe."""
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_ready(
    script: Path, *args: str | int | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """:func:`start` ``script`` and wait for its first line, ``ready``; fail with its output if another comes."""
    proc = start(script, *args, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != "ready\n":
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"{script.name} did not start: {line!r} {out[-3000:]}")
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """Wait for a child from :func:`start`; assert it exited 0 and return its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def bits(value: Any) -> Any:
    """A comparable image of a state: tensors and arrays as (dtype, shape, bytes), floats as bytes."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        return (
            "tensor",
            str(t.dtype),
            tuple(t.shape),
            t.reshape(-1).view(torch.uint8).numpy().tobytes(),
        )
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, dict):
        return {k: bits(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [bits(v) for v in value])
    return value


def tiny_state(i: int) -> dict[str, Any]:
    """A three-float state and a value, distinct per ``i``: cheap to commit many of."""
    return {"w": torch.full((3,), float(i)), "i": i}


def random_state(seed: int, n: int = 8192) -> dict[str, Any]:
    """Random tensors ``w`` (``n`` floats) and ``b`` and the value ``seed``; nothing shared across seeds."""
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(n, generator=g), "b": torch.randn(100, generator=g), "seed": seed}


# -- the command line -----------------------------------------------------------------------


def run_cli(*args: str | Path, env: Mapping[str, str | None] | None = None) -> Result:
    """Invoke ``ledger`` in-process; ``$LEDGER_DIR`` is unset unless ``env`` sets it."""
    merged: dict[str, str | None] = {"LEDGER_DIR": None, **(env or {})}
    return CliRunner(env=merged).invoke(cli, [str(a) for a in args], catch_exceptions=False)


# -- observing the store --------------------------------------------------------------------


def pack_ids(root: Path) -> set[str]:
    """The ids (file names without ``.pack``) of the packs in ``root/objects/packs``."""
    return {p.stem for p in (root / "objects" / "packs").glob("*.pack")}


def commit_in_new_pack(lg: Ledger, state: Any, **kw: Any) -> tuple[str, str]:
    """Commit ``state`` (no RNG); return the commit id and the id of the one pack it wrote."""
    before = pack_ids(lg.root)
    c = lg.commit(state, rng=False, **kw)
    (new,) = pack_ids(lg.root) - before
    return c.id, new


def object_ids(lg: Ledger) -> set[bytes]:
    """Every object id in the store, of any kind."""
    lg.store.sync()
    return {oid for kind in ("chunk", "manifest", "commit", "blob") for oid in lg.store.ids(kind)}


def tree_bytes(root: Path, *, skip: Collection[str] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), but those named in ``skip``."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def stored_byte_strings(root: Path) -> list[bytes]:
    """Every file of the ledger at ``root`` plus every object decoded (decompressed) by its store."""
    blobs = list(tree_bytes(root).values())
    with Ledger.open(root, fsync=False) as lg:
        for kind in ("chunk", "manifest", "commit", "blob"):
            blobs += [bytes(lg.store.read(oid, kind)) for oid in lg.store.ids(kind)]
    return blobs


def git_repo(repo: Path, origin: str) -> Path:
    """A git repository at ``repo`` with one commit and ``origin`` as its remote."""
    repo.mkdir()
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    (repo / "train.py").write_text("print('hi')\n")
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=repo, check=True)
    subprocess.run([*git, "remote", "add", "origin", origin], cwd=repo, check=True)
    return repo


def dir_bytes(root: Path) -> int:
    """Bytes of every file under ``root``."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# -- damaging it ------------------------------------------------------------------------------


def flip_byte(path: Path, offset: int, mask: int = 0xFF) -> None:
    """XOR the byte at ``offset`` of ``path`` with ``mask``, in place (a bit rot)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ mask]))


def flip_stored_byte(lg: Ledger, oid_hex: str, at: int | None = None, mask: int = 0xFF) -> None:
    """Flip the byte ``at`` of an object's stored bytes (default: the middle one) in its pack."""
    located = lg.store.locate(bytes.fromhex(oid_hex))
    assert located is not None, f"object {oid_hex[:12]} is not in the store"
    pack, entry = located
    flip_byte(
        lg.store.pack_path(pack), entry.offset + (entry.length // 2 if at is None else at), mask
    )


def damage_chunks(pack: Path) -> int:
    """Flip the first stored byte of every chunk in ``pack``; return how many."""
    chunks = [e for e in read_pack_index(pack) if e.kind == "chunk"]
    for e in chunks:
        flip_byte(pack, e.offset)
    return len(chunks)


def enospc() -> OSError:
    """The error a write to a full disk raises."""
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fd_path(fd: int) -> str:
    """The path an open file descriptor refers to."""
    return os.readlink(f"/proc/self/fd/{fd}")


class FullFile:
    """A file object whose ``write`` raises :func:`enospc` when ``full(data)`` says so."""

    def __init__(self, f: Any, full: Callable[[Any], bool]) -> None:
        self._f = f
        self._full = full

    def write(self, data: Any) -> int:
        if self._full(data):
            raise enospc()
        return int(self._f.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def __enter__(self) -> FullFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@contextmanager
def tiny_disk(size: str = "1m") -> Iterator[Path]:
    """A real tmpfs of ``size`` (mount's syntax) for the block; skips the test where this
    process may not mount one (it needs root)."""
    where = Path(tempfile.mkdtemp(prefix="ledger-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield where
    finally:
        import gc

        gc.collect()  # a writer's file object left by its failure holds the mount
        subprocess.run(["umount", "-l", str(where)], check=True)
        where.rmdir()
