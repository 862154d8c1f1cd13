"""S3 remotes through the real s3fs client against moto's S3 server on 127.0.0.1.

Proves the S3 backend's compare-and-swap (conditional PutObject), incremental
pushes, bit-exact clone and pull, lazy restore with range reads, tampering
detection, and that AWS keys never reach the ledger directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from servers.s3 import AWS_KEY_ID, AWS_SECRET, s3_bucket, s3_endpoint
from servers.training import fine_tune_last, model, new_ledger, same, secrets_in, state

from ledger import Ledger
from ledger.errors import RemoteConflictError, RemoteCorruptionError
from ledger.remotes.fs import FsspecRemote

__all__ = ["s3_bucket", "s3_endpoint"]  # fixtures used by this module


def test_conditional_writes_make_put_if_a_compare_and_swap(s3_bucket: str) -> None:
    r = FsspecRemote(f"s3://{s3_bucket}/cas")
    assert r.atomic
    r.put_if("refs.json", b"one", None)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"other", None)  # If-None-Match: * on an existing key
    data, v1 = r.get_versioned("refs.json")
    assert data == b"one"
    r.put_if("refs.json", b"two", v1)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"three", v1)  # If-Match on a stale ETag
    assert r.get("refs.json") == b"two"


def test_push_fine_tune_clone_and_pull_round_trip(s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/runs/bert"
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1)
    lg.remote_add("origin", url)
    first = lg.push()
    assert first.chunks_sent > 0
    assert lg.push().chunks_sent == 0
    with Ledger.clone(url, tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        fine_tune_last(net)
        lg.commit(state(net), step=2)
        r = lg.push()
        assert r.chunks_sent <= 2 and r.bytes_sent < first.bytes_sent / 3
        assert copy.pull().fast_forward
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        assert copy.verify(full=True).ok


def test_two_pushers_the_stale_one_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/shared"
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1)
    lg.remote_add("origin", url)
    lg.push()
    with Ledger.clone(url, tmp_path / "b") as other:
        lg.commit(state(net), step=2, message="a")
        lg.push()
        other.commit(state(net), step=2, message="b")
        with pytest.raises(RemoteConflictError, match="fetch first"):
            other.push()
    with Ledger.clone(url, tmp_path / "c") as check:
        assert check.head.message == "a"  # type: ignore[union-attr]


def test_lazy_checkout_and_tampering_over_s3(s3_bucket: str, tmp_path: Path) -> None:
    import fsspec

    url = f"s3://{s3_bucket}/lazy"
    lg = new_ledger(tmp_path / "a")
    lg.commit(state(model()), step=1)
    lg.remote_add("origin", url)
    lg.push()
    mine = new_ledger(tmp_path / "b")
    assert same(mine.checkout(f"{url}@main"), lg.checkout("main"))
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    packs = sorted(fs.find(f"{s3_bucket}/lazy/packs"), key=lambda p: fs.size(p))
    data = bytearray(fs.cat_file(packs[-1]))
    data[len(data) // 2] ^= 1
    fs.pipe_file(packs[-1], bytes(data))
    with pytest.raises(RemoteCorruptionError, match="hash check"):
        Ledger.clone(url, tmp_path / "c")


def test_aws_keys_never_reach_the_ledger(s3_bucket: str, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/secret"
    lg = new_ledger(tmp_path / "a")
    lg.commit(state(model()), step=1)
    lg.remote_add("origin", url)
    lg.push()
    lg.commit(state(model()), step=2)  # metadata captured with the keys in the environment
    lg.push()
    Ledger.clone(url, tmp_path / "b").close()
    assert secrets_in(tmp_path, AWS_KEY_ID, AWS_SECRET) == []
