"""One conformance suite every remote backend runs: a directory, S3 (moto) and the Hub (fake).

Each case proves a guarantee of docs/remotes.md through the real client of
the backend (s3fs, huggingface_hub) against a local server: a round trip is
bit-exact and incremental, a stale push is refused, a tampered pack is
refused naming it, a lazy checkout reads only what the store lacks, a dry-run
push and a dry-run remote gc change nothing and name exactly what the real
operation then does, and (on the two servers) transient answers are retried
after the server's ``Retry-After`` while a refusal is not retried. S3 runs
through a proxy that answers opaque ETags, as a bucket with SSE-KMS does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from servers.hub import FakeHub, serve_hub
from servers.s3 import S3Proxy, s3_bucket, s3_endpoint, s3_proxy
from servers.training import chunks_of, fine_tune_last, model, new_ledger, same, state

from ledger import Ledger
from ledger.errors import RemoteConflictError, RemoteCorruptionError, RemoteError
from ledger.remotes.config import open_remote
from ledger.retention import KeepLast

__all__ = ["s3_bucket", "s3_endpoint", "s3_proxy"]  # fixtures used by this module

# huggingface_hub's own LFS upload passes bytes as `data=`, which its HTTP library deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@dataclass
class Backend:
    """A remote under test: its URL, how to flip a byte of a stored file, how to inject faults."""

    kind: str
    url: str
    corrupt: Callable[[str], None]
    fail: Callable[[int, int, float | None], None] | None = None
    served: Callable[[], int] | None = None

    def keys(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` as the backend lists them now."""
        return open_remote(self.url).unwrap().list(prefix)


def _flip(data: bytes) -> bytes:
    out = bytearray(data)
    out[len(out) // 2] ^= 0x01
    return bytes(out)


@pytest.fixture(params=["directory", "s3", "hub"])
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    """A fresh, empty remote of each kind."""
    if request.param == "directory":
        root = tmp_path / "remote"

        def corrupt_dir(key: str) -> None:
            path = root / key
            path.write_bytes(_flip(path.read_bytes()))

        yield Backend("directory", f"file://{root}", corrupt_dir)
    elif request.param == "s3":
        proxy: S3Proxy = request.getfixturevalue("s3_proxy")
        bucket: str = request.getfixturevalue("s3_bucket")
        url = f"s3://{bucket}/run"

        def corrupt_s3(key: str) -> None:
            fs = open_remote(url).unwrap()
            fs.put(key, _flip(fs.get(key)))

        yield Backend(
            "s3", url, corrupt_s3, lambda n, s, a: proxy.fail(n, s, a), lambda: proxy.served
        )
    else:
        hub: FakeHub = serve_hub(monkeypatch, tmp_path, lfs_threshold=1)
        repo = "user/run"

        def corrupt_hub(key: str) -> None:
            path = f"ledger/{key}"
            hub.set_file(repo, path, _flip(hub.file(repo, path)))

        yield Backend(
            "hub",
            f"hf://{repo}",
            corrupt_hub,
            lambda n, s, a: hub.state.fail(n, s, a),
            lambda: len(hub.state.requests),
        )
        hub.stop()


def _pushed(backend: Backend, tmp_path: Path) -> tuple[Ledger, torch.nn.Sequential]:
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1, metrics={"loss": 1.0})
    lg.remote_add("origin", backend.url)
    lg.push()
    return lg, net


def _largest_pack(backend: Backend) -> str:
    remote = open_remote(backend.url)
    remote.get_versioned("refs.json")  # the Hub reads at the commit it saw
    packs = backend.keys("packs/")
    return max(packs, key=lambda k: len(remote.get(k)))


def test_round_trip_is_bit_exact_and_incremental(backend: Backend, tmp_path: Path) -> None:
    lg = new_ledger(tmp_path / "a")
    net = model()
    lg.commit(state(net), step=1)
    lg.remote_add("origin", backend.url)
    first = lg.push()
    assert first.chunks_sent > 0 and first.commits == 1
    assert lg.push().bytes_sent == 0  # nothing new: nothing travels
    with Ledger.clone(backend.url, tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        fine_tune_last(net)
        lg.commit(state(net), step=2)
        second = lg.push()
        assert second.chunks_sent <= 2 and second.bytes_sent < first.bytes_sent / 3
        pulled = copy.pull()
        assert pulled.fast_forward and pulled.new == lg.head.id  # type: ignore[union-attr]
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))
        assert same(copy.checkout("HEAD~1"), lg.checkout("HEAD~1"))
        assert copy.verify(full=True).ok


def test_a_stale_push_is_refused_and_the_winner_stays(backend: Backend, tmp_path: Path) -> None:
    lg, net = _pushed(backend, tmp_path)
    with Ledger.clone(backend.url, tmp_path / "b") as other:
        lg.commit(state(net), step=2, message="first")
        lg.push()
        other.commit(state(net), step=2, message="second")
        with pytest.raises(RemoteConflictError, match="fetch first"):
            other.push()
    with Ledger.clone(backend.url, tmp_path / "c") as check:
        assert check.head.message == "first"  # type: ignore[union-attr]


def test_a_flipped_byte_in_a_remote_pack_is_refused_naming_it(
    backend: Backend, tmp_path: Path
) -> None:
    _pushed(backend, tmp_path)
    pack = _largest_pack(backend)
    backend.corrupt(pack)
    with pytest.raises(RemoteCorruptionError) as err:
        Ledger.clone(backend.url, tmp_path / "b")
    assert Path(pack).stem[:12] in str(err.value) and backend.url in str(err.value)
    assert not (tmp_path / "b").exists()  # a failed clone leaves nothing behind
    with new_ledger(tmp_path / "c") as fresh:
        with pytest.raises(RemoteCorruptionError):
            fresh.checkout(f"{backend.url}@main")
        assert fresh.verify(full=True).ok  # nothing unchecked entered the local store


def test_lazy_checkout_reads_only_the_missing_chunks(backend: Backend, tmp_path: Path) -> None:
    lg, net = _pushed(backend, tmp_path)
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    lg.push()
    with new_ledger(tmp_path / "b") as mine:
        mine.commit(state(model()), step=1)  # every chunk but the fine-tuned layer's
        have = set(mine.store.ids("chunk"))
        assert same(mine.checkout(f"{backend.url}@main"), lg.checkout("main"))
        assert set(mine.store.ids("chunk")) - have == chunks_of(lg, "main") - have
        assert same(mine.checkout(f"{backend.url}@main~1"), lg.checkout("main~1"))
        assert mine.get(f"{backend.url}@main").step == 2


def test_a_dry_run_push_changes_nothing_and_names_what_push_sends(
    backend: Backend, tmp_path: Path
) -> None:
    lg, net = _pushed(backend, tmp_path)
    fine_tune_last(net)
    lg.commit(state(net), step=2)
    remote = open_remote(backend.url)
    refs_before, _ = remote.get_versioned("refs.json")
    packs_before = set(backend.keys("packs/"))
    tracking_before = lg.resolve("origin/main")
    plan = lg.push(dry_run=True)
    assert remote.get_versioned("refs.json")[0] == refs_before
    assert set(backend.keys("packs/")) == packs_before
    assert lg.resolve("origin/main") == tracking_before
    assert plan.commits == [lg.head.id]  # type: ignore[union-attr]
    [move] = plan.refs
    assert (move.ref, move.old, move.new) == ("refs/heads/main", tracking_before, lg.head.id)  # type: ignore[union-attr]
    assert plan.bytes == sum(o.bytes for o in plan.objects) > 0
    result = lg.push()
    assert result.objects_sent == len(plan.objects)
    assert result.chunks_sent == sum(o.kind == "chunk" for o in plan.objects)
    assert result.updated == {"main": move.new}
    view_ids = _remote_object_ids(backend)
    assert {o.id for o in plan.objects} <= view_ids
    assert lg.push(dry_run=True).up_to_date


def _remote_object_ids(backend: Backend) -> set[str]:
    from ledger.remotes.transfer import load_view

    view = load_view(open_remote(backend.url), None)
    return {oid.hex() for oid in view.objects}


def test_a_dry_run_remote_gc_changes_nothing_and_names_what_gc_deletes(
    backend: Backend, tmp_path: Path
) -> None:
    lg = new_ledger(tmp_path / "a")
    lg.remote_add("origin", backend.url)
    net = model()
    for step in range(1, 4):
        fine_tune_last(net)
        lg.commit(state(net), step=step)
        lg.push()  # one data pack per push after the first: the fine-tuned layer
    lg.set_retention(KeepLast(1))
    packs_before = set(backend.keys("packs/"))
    plan = lg.gc_remote(dry_run=True)
    assert plan.dry_run and len(plan.expired) == 2 and plan.packs
    assert set(backend.keys("packs/")) == packs_before
    done = lg.gc_remote()
    assert not done.dry_run
    assert (done.expired, done.packs) == (plan.expired, plan.packs)
    assert set(backend.keys("packs/")) == packs_before - {f"packs/{p}.pack" for p in plan.packs}
    with Ledger.clone(backend.url, tmp_path / "b") as copy:
        assert same(copy.checkout("HEAD"), lg.checkout("HEAD"))


@pytest.mark.parametrize("status", [429, 503])
def test_a_transient_answer_is_retried_after_its_retry_after(
    backend: Backend, tmp_path: Path, status: int
) -> None:
    if backend.fail is None:
        pytest.skip("a directory has no server to answer 429/503")
    lg, _ = _pushed(backend, tmp_path)
    backend.fail(1, status, 1)
    started = time.monotonic()
    assert lg.fetch().remote == "origin"
    assert time.monotonic() - started >= 1.0  # waited what the server asked, then succeeded


@pytest.mark.parametrize("status", [403, 404])
def test_a_refusal_is_not_retried(backend: Backend, tmp_path: Path, status: int) -> None:
    if backend.fail is None or backend.served is None:
        pytest.skip("a directory has no server to refuse")
    lg, _ = _pushed(backend, tmp_path)
    backend.fail(3, status, None)
    served = backend.served()
    with pytest.raises(RemoteError):
        lg.fetch()
    assert backend.served() - served == 1  # one request, no retry
    backend.fail(0, status, None)
