"""Remotes in a directory: push, fetch, pull, clone, lazy restore, CAS, tampering.

The directory backend is the real product code path (flock + rename). The
guarantees every backend shares (round trip, stale push, tampered pack, lazy
checkout, dry runs, retries) are tests/test_remote_conformance.py's; this file
proves the layout's other rules once, on a directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from servers.training import chunks_of, fine_tune_last, model, new_ledger, same, state

from ledger import Ledger
from ledger.errors import (
    CommitExpiredError,
    DivergedError,
    RemoteConflictError,
    RemoteCorruptionError,
    RemoteError,
    RemoteURLError,
)
from ledger.remotes.layout import decode_refs
from ledger.remotes.local import DirectoryRemote


@pytest.fixture
def pushed(tmp_path: Path) -> tuple[Ledger, Path, torch.nn.Sequential]:
    """A ledger with one commit pushed to a directory remote ``origin``."""
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1, metrics={"loss": 1.0})
    remote = tmp_path / "remote"
    lg.remote_add("origin", str(remote))
    lg.push("origin")
    return lg, remote, net


def test_second_push_of_an_unchanged_ledger_sends_nothing(pushed) -> None:
    lg, _, _ = pushed
    again = lg.push("origin")
    assert (again.commits, again.chunks_sent, again.bytes_sent, again.updated) == (0, 0, 0, {})


def test_a_last_layer_fine_tune_sends_about_that_layer(pushed) -> None:
    lg, _, net = pushed
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    r = lg.push("origin")
    layer = net[-1].weight.numel() * 4
    assert r.commits == 1
    assert 1 <= r.chunks_sent <= 2  # the weight chunk (+ the torch RNG state if it moved)
    assert layer * 0.8 <= r.bytes_sent <= layer * 1.5 + 40_000
    assert r.bytes_skipped >= 5 * layer * 0.8  # the five unchanged layers stayed


def test_clone_restores_bit_exactly(pushed, tmp_path: Path) -> None:
    lg, remote, _ = pushed
    with Ledger.clone(str(remote), tmp_path / "b") as copy:
        assert copy.branches() == lg.branches()
        assert copy.remotes() == {"origin": str(remote)}
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        assert copy.head is not None and copy.head.metrics == {"loss": 1.0}
        assert copy.verify(full=True).ok


def test_file_urls_work_like_paths(pushed, tmp_path: Path) -> None:
    lg, remote, _ = pushed
    with Ledger.clone(f"file://{remote}", tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))


def test_pull_fast_forwards_after_the_remote_advances(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    with Ledger.clone(str(remote), tmp_path / "b") as copy:
        fine_tune_last(net)
        lg.commit(state(net), step=2)
        lg.commit(state(net), step=3)
        lg.push()
        r = copy.pull()
        assert r.fast_forward and r.new == lg.head.id  # type: ignore[union-attr]
        assert copy.head.step == 3  # type: ignore[union-attr]
        assert same(copy.checkout("HEAD~1"), lg.checkout("HEAD~1"))
        assert copy.verify(full=True).ok
        assert not copy.pull().fast_forward  # up to date


def test_pull_refuses_a_diverged_branch(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    with Ledger.clone(str(remote), tmp_path / "b") as copy:
        lg.commit(state(net), step=2)
        lg.push()
        copy.commit(state(net), step=20)
        with pytest.raises(DivergedError, match="diverged") as info:
            copy.pull()
        assert copy.head.step == 20  # type: ignore[union-attr]
        assert info.value.branch == "main" and info.value.remote == "origin"
        assert info.value.ours == copy.head.id  # type: ignore[union-attr]
        assert info.value.theirs == lg.head.id  # type: ignore[union-attr]


def test_a_stale_push_is_refused_and_nothing_is_lost(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    with Ledger.clone(str(remote), tmp_path / "b") as other:
        lg.commit(state(net), step=2, message="first pusher")
        lg.push()
        fine_tune_last(net)
        other.commit(state(net), step=2, message="second pusher")
        with pytest.raises(RemoteConflictError, match="fetch first"):
            other.push()
        with Ledger.clone(str(remote), tmp_path / "c") as check:
            assert check.head.message == "first pusher"  # type: ignore[union-attr]
        other.fetch()
        with pytest.raises(DivergedError):
            other.push()  # knows the remote tip now, but would rewind it
        other.branch("second", at="main")
        other.push(branch="second")
        with Ledger.clone(str(remote), tmp_path / "d", branch="second") as check:
            assert check.head.message == "second pusher"  # type: ignore[union-attr]
            assert check.get("origin/main").message == "first pusher"


def test_put_if_with_a_stale_version_is_refused(tmp_path: Path) -> None:
    r = DirectoryRemote(tmp_path / "r")
    r.put_if("refs.json", b"one", None)
    _, v1 = r.get_versioned("refs.json")
    r.put_if("refs.json", b"two", v1)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"three", v1)
    with pytest.raises(RemoteConflictError):
        r.put_if("refs.json", b"three", None)
    assert r.get("refs.json") == b"two"


def test_fetch_makes_remote_branches_resolvable(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    other = new_ledger(tmp_path / "b")
    other.remote_add("origin", str(remote))
    r = other.fetch("origin")
    assert r.commits == 1 and r.updated == {"main": lg.head.id}  # type: ignore[union-attr]
    assert other.resolve("origin/main") == lg.head.id  # type: ignore[union-attr]
    assert not other.store.ids("chunk")  # records and manifests only
    other.switch("origin/main")  # `ledger checkout origin/main`
    assert same(other.checkout("HEAD"), lg.checkout("HEAD"))  # chunks come on demand
    other.commit(state(net), branch="origin/main", step=9)  # a local branch of that name wins
    assert other.get("origin/main").step == 9
    assert other.get("refs/remotes/origin/main").step == 1
    assert other.gc(grace=0).objects_kept > 0
    assert other.get("refs/remotes/origin/main").step == 1  # gc keeps fetched history


def test_depth_1_clone_has_only_the_heads_chunks(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    for step in (2, 3):
        fine_tune_last(net)
        lg.commit(state(net), step=step)
    lg.push()
    with Ledger.clone(str(remote), tmp_path / "b", depth=1) as copy:
        head_chunks = chunks_of(lg, "HEAD")
        assert set(copy.store.ids("chunk")) == head_chunks
        assert [c.step for c in copy.log()] == [3, 2, 1]  # every record
        check = copy.verify()
        assert check.ok and any("only on a remote" in n for n in check.notes)
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        before = set(copy.store.ids("chunk"))
        old = copy.checkout("HEAD~2")  # lazily: only the chunks HEAD~2 has and HEAD lacks
        fetched = set(copy.store.ids("chunk")) - before
        assert fetched == chunks_of(lg, "HEAD~2") - head_chunks
        assert same(old, lg.checkout("HEAD~2"))
        copy.gc(grace=0)
        assert copy.verify().ok


def test_a_tampered_index_or_refs_file_is_refused(pushed, tmp_path: Path) -> None:
    _, remote, _ = pushed
    index = next((remote / "index").iterdir())
    index.write_bytes(index.read_bytes() + b"\0")
    with pytest.raises(RemoteCorruptionError, match="does not match its name"):
        Ledger.clone(str(remote), tmp_path / "b")
    refs = (remote / "refs.json").read_bytes()
    with pytest.raises(RemoteCorruptionError, match="invalid branch"):
        decode_refs(refs.replace(b'"main": "', b'"../etc": "', 1), "test")
    (remote / "refs.json").write_bytes(b"{not json")
    with pytest.raises(RemoteCorruptionError):
        Ledger.clone(str(remote), tmp_path / "c")


def test_expired_commits_push_their_record_but_no_state(tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "a")
    net = model()
    first = lg.commit(state(net), step=1)
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    lg.expire(first.id, reason="licence withdrawn")
    lg.remote_add("origin", str(tmp_path / "remote"))
    r = lg.push()
    assert r.commits == 2
    with Ledger.clone(str(tmp_path / "remote"), tmp_path / "b") as copy:
        assert [c.step for c in copy.log()] == [2, 1]
        with pytest.raises(CommitExpiredError, match="licence withdrawn"):
            copy.checkout(first.id)
        assert copy.verify(full=True).ok


def test_urls_with_credentials_are_refused(lg: Ledger) -> None:
    for url in ("s3://key:secret@bucket/x", "https://u:p@host/x", "s3://b/x?X-Amz-Signature=abc"):
        with pytest.raises(RemoteURLError):
            lg.remote_add("origin", url)
    with pytest.raises(RemoteError, match="not valid"):
        lg.remote_add("a/b", "/tmp/x")
    assert lg.remotes() == {}


def test_pushing_to_an_unknown_remote_says_how_to_add_it(lg: Ledger) -> None:
    lg.commit({"w": torch.ones(3)})
    with pytest.raises(RemoteError, match="ledger remote add"):
        lg.push("nope")


def test_tags_and_all_branches_push(pushed, tmp_path: Path) -> None:
    lg, remote, net = pushed
    lg.tag("v1")
    lg.commit(state(net), branch="exp", step=5)
    lg.push(all=True, tags=True)
    with Ledger.clone(str(remote), tmp_path / "b") as copy:
        assert copy.tags() == lg.tags()
        assert copy.resolve("origin/exp") == lg.resolve("exp")


def test_remote_gc_applies_retention_and_deletes_unneeded_packs(tmp_path: Path) -> None:
    from ledger.retention import KeepLast

    lg = new_ledger(tmp_path / "a")
    lg.remote_add("origin", str(tmp_path / "remote"))
    net = model()
    for step in range(1, 5):
        fine_tune_last(net)
        lg.commit(state(net), step=step)
        lg.push()  # one data pack per push: the fine-tuned layer
    lg.set_retention(KeepLast(2))
    dry = lg.gc_remote("origin", dry_run=True)
    assert len(dry.expired) == 2 and dry.packs_deleted >= 1
    assert len(list((tmp_path / "remote" / "packs").iterdir())) == 8
    r = lg.gc_remote("origin")
    assert r.expired == dry.expired and r.bytes_freed == dry.bytes_freed
    assert len(list((tmp_path / "remote" / "packs").iterdir())) == 8 - r.packs_deleted
    assert len(list((tmp_path / "remote" / "index").iterdir())) == 1
    with Ledger.clone(str(tmp_path / "remote"), tmp_path / "b") as copy:
        assert [c.step for c in copy.log()] == [4, 3, 2, 1]  # history stays
        assert same(copy.checkout("HEAD~1"), lg.checkout("HEAD~1"))
        with pytest.raises(CommitExpiredError):
            copy.checkout("HEAD~3")
        assert copy.verify(full=True).ok
    assert lg.gc_remote("origin").packs_deleted == 0


def test_a_push_that_loses_the_race_leaves_the_remote_intact_and_resumes(
    pushed, tmp_path: Path
) -> None:
    import fcntl
    import os
    import threading

    lg, remote, net = pushed
    refs = remote / "refs.json"
    original = refs.read_bytes()
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    errors: list[BaseException] = []
    fd = os.open(remote / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # the push uploads its packs, then waits for the lock
    worker = threading.Thread(target=lambda: _capture(errors, lg.push))
    worker.start()
    packs_before = set((remote / "packs").iterdir())
    for _ in range(200):
        if len(set((remote / "packs").iterdir())) > len(packs_before) + 1:
            break
        worker.join(0.05)
    refs.write_bytes(original + b" ")  # another writer moved the refs meanwhile
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
    worker.join()
    assert errors and isinstance(errors[0], RemoteConflictError)
    assert refs.read_bytes() == original + b" "  # the loser changed nothing
    refs.write_bytes(original)
    r = lg.push()  # the rerun finds its packs there and sends none of them again
    assert r.commits == 1 and r.bytes_sent < 5_000
    with Ledger.clone(str(remote), tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))


def _capture(errors: list[BaseException], fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except BaseException as e:
        errors.append(e)
