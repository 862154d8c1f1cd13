"""Open descriptors stay bounded: a ledger of many packs works under a low ``ulimit -n``.

The ledger is built directly: one real commit, then a chain of commit records
each written to its own pack by the store's writer (fsync off), plus 10,000
one-blob packs. Every command then runs in a child process whose descriptor
limit is 256. A pack the process may not read is set aside, named by verify,
and the rest keeps working (under root, checked in a child without the
capabilities that bypass file modes, ``capsh --drop``).
"""

from __future__ import annotations

import datetime as dt
import os
import resource
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import Ledger
from ledger.history.records import CommitRecord, msgpack_encoder
from ledger.objects.handles import PackHandles

LIMIT = 256
CHAIN = 300  # commits, each in its own pack: more packs than LIMIT descriptors


def _write_chain(lg: Ledger, n: int) -> str:
    """Commit records on top of HEAD, one pack each; main moved to the last. Its id."""
    first = lg.get("HEAD")
    prev = first.id
    for i in range(n):
        rec = CommitRecord(
            manifest=first.manifest,
            parents=[prev],
            time=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i),
            branch="main",
            step=i + 1,
        )
        w = lg.store.writer(None, compress=False)
        prev = w.put("commit", msgpack_encoder.encode(rec))
        w.finish()
    lg.refs.update({"refs/heads/main": (first.id, prev)}, "test chain")
    return prev


def _many_packs(root: Path, blob_packs: int) -> Path:
    with Ledger.open(root, create=True, fsync=False) as lg:
        lg.commit({"w": [1, 2, 3]}, rng=False, step=0)
        _write_chain(lg, CHAIN)
        for i in range(blob_packs):
            w = lg.store.writer(None, compress=False)
            w.put("blob", b"blob %d" % i)
            w.finish()
    assert len(list((root / "objects" / "packs").glob("*.pack"))) > blob_packs + CHAIN
    return root


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, LIMIT))


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``args`` run by Python in a child limited to LIMIT open descriptors."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        preexec_fn=_limited,
        timeout=300,
    )


API_SCRIPT = """
import sys
from ledger import Ledger
with Ledger.open(sys.argv[1]) as lg:
    commits = list(lg.log())
    assert len(commits) == {n} + 1, len(commits)
    assert lg.checkout("main~{half}") == {{"w": [1, 2, 3]}}
    lg.commit({{"w": [4]}}, rng=False, step=10_000)
    report = lg.verify()
    assert report.ok, report
    lg.gc()
    assert len(list(lg.log())) == {n} + 2
print("ok")
"""


def _every_command_works(root: Path) -> None:
    cli = ["-m", "ledger.cli", "--dir", root]
    for args in (["log", "-n", "5"], ["log"], ["show", "main~3"], ["branch"], ["du"], ["verify"]):
        done = _run(*cli, *args)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
    done = _run("-c", API_SCRIPT.format(n=CHAIN, half=CHAIN // 2), root)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_every_command_works_with_more_packs_than_descriptors(tmp_path: Path) -> None:
    _every_command_works(_many_packs(tmp_path / "lg", blob_packs=700))


@pytest.mark.slow
def test_every_command_works_on_ten_thousand_packs(tmp_path: Path) -> None:
    _every_command_works(_many_packs(tmp_path / "lg", blob_packs=10_000))


def test_the_cache_keeps_at_most_its_capacity_open_and_never_closes_a_descriptor_in_use(
    tmp_path: Path,
) -> None:
    paths = []
    for i in range(5):
        p = tmp_path / f"{i}.pack"
        p.write_bytes(bytes([i]) * 8)
        paths.append(p)
    handles = PackHandles(capacity=2)
    with handles.get(paths[0]) as held:
        for p in paths[1:]:
            with handles.get(p) as fd:
                assert os.pread(fd, 1, 0) == p.read_bytes()[:1]
            assert handles.open_count() <= 2
        # paths[0] was evicted long ago, yet its descriptor is still ours
        assert os.pread(held, 1, 0) == b"\0"
    handles.invalidate(paths[4])
    handles.close_all()
    assert handles.open_count() == 0
    with pytest.raises(OSError):
        os.fstat(held)  # closed by the last reader once evicted


# Checks, in a child, that a pack it may not read is set aside and the rest works.
UNREADABLE_CHILD = """
import sys
from ledger import Ledger
from ledger.errors import LedgerError
root, stem, kept, lost = sys.argv[1:]
with Ledger.open(root) as lg:
    assert stem in lg.store.damaged, lg.store.damaged
    assert "permission denied" in lg.store.damaged[stem], lg.store.damaged
    assert lg.checkout(kept) == {"a": [1]}
    report = lg.verify()
    assert not report.ok
    assert any(stem[:12] in p for p in report.problems), report.problems
    try:
        lg.checkout(lost)
        raise SystemExit("the commit in the unreadable pack was checked out")
    except LedgerError as e:
        assert lost[:12] in str(e), e
print("CHECKED")
"""
#: The capabilities that let root read a file whatever its mode.
BYPASS = "cap_dac_override,cap_dac_read_search,cap_fowner"


def test_an_unreadable_pack_is_set_aside_named_by_verify_and_the_rest_works(
    tmp_path: Path,
) -> None:
    root = tmp_path / "lg"
    with Ledger.open(root, create=True, fsync=False) as lg:
        kept = lg.commit({"a": [1]}, rng=False, step=1)
        before = {p.name for p in (root / "objects" / "packs").iterdir()}
        lost = lg.commit({"b": [2]}, rng=False, step=2)
        (pack,) = {p for p in (root / "objects" / "packs").iterdir() if p.name not in before}
    cmd = [sys.executable, "-c", UNREADABLE_CHILD, str(root), pack.stem, kept.id, lost.id]
    if os.geteuid() == 0:  # chmod 000 does not stop root: the child runs without those rights
        if shutil.which("capsh") is None:
            pytest.skip("running as root without capsh: permissions cannot be made to bind")
        cmd = ["capsh", f"--drop={BYPASS}", "--", "-c", shlex.join(cmd)]
    pack.chmod(0)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    finally:
        pack.chmod(0o644)
    assert done.returncode == 0 and "CHECKED" in done.stdout, done.stderr
