"""Remote reads are bounded: a record larger than its cap is refused unread, on every backend.

A tampered remote (a directory, S3 through moto's server, the test Hub)
serving an oversized ``refs.json``, index file or commit entry makes fetch
fail with a ``RemoteCorruptionError`` naming the remote object, after reading
at most the record's cap; the peak memory of the fetch (traced in a child, so
that the in-process test servers do not count, after a first fetch has loaded
the client) stays far below the size served. A damaged cache of remote data is read again from the remote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
import torch
from servers.hub import FakeHub, serve_hub
from servers.s3 import s3_bucket, s3_endpoint

from ledger import Ledger
from ledger.errors import RemoteCorruptionError
from ledger.remotes.config import cache_dir, open_remote
from ledger.remotes.layout import (
    MAX_INDEX_BYTES,
    MAX_REFS_BYTES,
    REFS_KEY,
    PackRecord,
    decode_index,
    decode_refs,
    encode_index,
    encode_refs,
    index_key,
)

__all__ = ["s3_bucket", "s3_endpoint"]  # fixtures used by this module

HUB_REPO = "user/bounded"
#: What a refused fetch may allocate: under half the refs cap (a full read takes > 80 MiB);
#: what it does allocate is the clients' own (s3fs opens a session per remote: ~13 MiB).
PEAK_LIMIT = 32 << 20

CHILD = textwrap.dedent(
    """
    import json, sys, tracemalloc
    from ledger import Ledger
    from ledger.errors import LedgerError

    def fetch(lg):
        try:
            lg.fetch("origin")
            return {"error": None}
        except LedgerError as e:
            return {"error": type(e).__name__, "message": str(e), "object": e.fields.get("object")}

    with Ledger.open(sys.argv[1]) as lg:
        fetch(lg)  # warm up: the client's imports and service models are not the read
        tracemalloc.start()
        out = fetch(lg)
        out["peak"] = tracemalloc.get_traced_memory()[1]
    print(json.dumps(out))
    """
)

#: A backend: (url, write raw bytes under a key as a tampered store would).
Backend = tuple[str, Callable[[str, bytes], None]]


@pytest.fixture(params=["dir", "s3", "hub"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    if request.param == "dir":
        root = tmp_path / "remote"

        def write_dir(key: str, data: bytes) -> None:
            (root / key).write_bytes(data)

        return str(root), write_dir
    if request.param == "s3":
        import boto3

        bucket = request.getfixturevalue("s3_bucket")

        def write_s3(key: str, data: bytes) -> None:
            boto3.client("s3").put_object(Bucket=bucket, Key=f"runs/{key}", Body=data)

        return f"s3://{bucket}/runs", write_s3
    hub: FakeHub = serve_hub(monkeypatch, tmp_path)
    request.addfinalizer(hub.stop)

    def write_hub(key: str, data: bytes) -> None:
        hub.set_file(HUB_REPO, f"ledger/{key}", data)

    return f"hf://{HUB_REPO}", write_hub


def _pushed(tmp_path: Path, url: str) -> tuple[Path, Path]:
    """A ledger pushed to ``url`` and a clone of it: (the ledger's folder, the clone's)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    with Ledger.open(src, create=True, fsync=False, chunk_size=4096) as lg:
        lg.commit({"w": torch.arange(4096, dtype=torch.float32)}, rng=False, step=1)
        lg.remote_add("origin", url)
        lg.push("origin")
    Ledger.clone(url, dst).close()
    return src, dst


def _fetch_in_child(ledger: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(ledger)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _refused(result: dict[str, object], key: str, url: str) -> None:
    assert result["error"] == "RemoteCorruptionError", result
    assert key in str(result["message"]) and url in str(result["message"])
    assert isinstance(result["peak"], int) and result["peak"] < PEAK_LIMIT, result


def test_every_backend_refuses_a_value_over_the_limit_it_is_given(backend: Backend) -> None:
    url, write = backend
    remote = open_remote(url)
    remote.put_if("seed", b"x", None)  # creates the bucket prefix / the Hub repo
    write("seed", b"y" * (4 << 20))
    with pytest.raises(RemoteCorruptionError, match="seed on remote") as e:
        remote.get("seed", 1 << 20)
    assert e.value.fields["object"] == "seed" and e.value.fields["cap"] == 1 << 20
    with pytest.raises(RemoteCorruptionError):
        remote.get_versioned("seed", 1 << 20)
    assert remote.get("seed", 4 << 20) == b"y" * (4 << 20)  # at the cap is fine


def test_an_oversized_refs_json_is_refused_after_reading_at_most_its_cap(
    backend: Backend, tmp_path: Path
) -> None:
    url, write = backend
    _, dst = _pushed(tmp_path, url)
    if url.startswith("/"):
        with open(Path(url) / REFS_KEY, "r+b") as f:
            f.truncate(1 << 30)  # a sparse 1 GiB refs.json: costs no disk
    else:
        write(REFS_KEY, b" " * (MAX_REFS_BYTES + (16 << 20)))
    _refused(_fetch_in_child(dst), REFS_KEY, url)


def _relist(root: Path, packs: list[PackRecord]) -> str:
    """Store an index file for ``packs`` on the directory remote ``root`` and list it alone."""
    data, name = encode_index(packs)
    (root / index_key(name)).write_bytes(data)
    refs = decode_refs((root / REFS_KEY).read_bytes(), str(root))
    (root / REFS_KEY).write_bytes(encode_refs(msgspec.structs.replace(refs, indexes=[name])))
    return name


def test_an_index_file_over_its_cap_is_refused_unread(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    _, dst = _pushed(tmp_path, str(root))
    refs = decode_refs((root / REFS_KEY).read_bytes(), str(root))
    name = "ab" * 32
    with open(root / index_key(name), "wb") as f:
        f.truncate(MAX_INDEX_BYTES + 1)  # sparse
    extended = msgspec.structs.replace(refs, indexes=[*refs.indexes, name])
    (root / REFS_KEY).write_bytes(encode_refs(extended))
    _refused(_fetch_in_child(dst), index_key(name), str(root))


def test_a_commit_entry_declared_past_its_cap_is_refused_before_any_range_read(
    tmp_path: Path,
) -> None:
    root = tmp_path / "remote"
    _, dst = _pushed(tmp_path, str(root))
    (index_name,) = decode_refs((root / REFS_KEY).read_bytes(), str(root)).indexes
    packs = decode_index((root / index_key(index_name)).read_bytes(), index_name, str(root))
    huge = 1 << 33
    bloated = []
    for pack in packs:
        entries = [
            msgspec.structs.replace(e, length=huge) if e.kind == "commit" else e
            for e in pack.entries
        ]
        bloated.append(PackRecord(name=pack.name, size=pack.size + huge, entries=entries))
    name = _relist(root, bloated)
    result = _fetch_in_child(dst)
    assert result["error"] == "RemoteCorruptionError", result
    assert name[:12] in str(result["message"]) and "invalid entry" in str(result["message"])
    assert isinstance(result["peak"], int) and result["peak"] < PEAK_LIMIT


def test_a_damaged_cache_of_remote_data_is_read_again_from_the_remote(tmp_path: Path) -> None:
    root = tmp_path / "remote"
    src, dst = _pushed(tmp_path, str(root))
    with Ledger.open(src, fsync=False) as lg:
        tip = lg.commit({"w": torch.ones(4096)}, rng=False, step=2)
        lg.push("origin")
    cache = cache_dir(dst, "origin")
    (cache / REFS_KEY).unlink()
    (cache / REFS_KEY).symlink_to("/dev/zero")  # endless: must be refused unread
    for idx in (cache / "index").iterdir():
        idx.unlink()
        idx.symlink_to("/dev/zero")
    with Ledger.open(dst, fsync=False) as lg:
        lg.fetch("origin")
        assert lg.resolve("origin/main") == tip.id
        assert lg.checkout("origin/main")["w"].equal(torch.ones(4096))
