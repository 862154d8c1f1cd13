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
the same way, and a local ledger that pulled the commit restores it by path.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from helpers import SCRIPTS, load_script, start
from safetensors.torch import load_file
from servers.s3 import AWS_KEY_ID, AWS_SECRET, S3Proxy, s3_bucket, s3_endpoint

from ledger import Ledger
from ledger.errors import RemoteConflictError, RemoteError
from ledger.remotes import DirectCommit, open_remote
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


def _spans(proxy: S3Proxy) -> list[tuple[str, int, int]]:
    """A rank's range reads of packs: (pack name, first byte, last byte)."""
    spans: list[tuple[str, int, int]] = []
    for method, path, rng in proxy.log:
        if method == "GET" and "/packs/" in path and rng:
            start, end = rng.removeprefix("bytes=").split("-")
            name = unquote(path).rsplit("/", 1)[1].split(".")[0]
            spans.append((name, int(start), int(end)))
    return spans


def ranged_reads(proxy: S3Proxy, objects: dict[str, tuple[str, int, int]]) -> set[str]:
    """The objects a rank's range reads of packs covered (whole objects inside a read)."""
    return {
        oid
        for oid, (pack, off, length) in objects.items()
        for name, start, end in _spans(proxy)
        if name == pack and start <= off and off + length - 1 <= end
    }


def read_ends(proxy: S3Proxy, objects: dict[str, tuple[str, int, int]]) -> set[str]:
    """The objects each range read starts or ends with; fails on a read cutting an object."""
    ends: set[str] = set()
    for name, first_byte, last_byte in _spans(proxy):
        first = [o for o, (p, off, _) in objects.items() if p == name and off == first_byte]
        last = [o for o, (p, off, n) in objects.items() if p == name and off + n - 1 == last_byte]
        assert first and last, f"a read of {name[:12]} [{first_byte}, {last_byte}] cuts an object"
        ends.update(first + last)
    return ends


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
    job = Job(tmp_path, s3, "roundtrip", 2, proxies)  # commit, then restore into fresh objects
    job.ok()
    cid = job.commit(0)
    assert job.commit(1) == cid
    for rank in range(2):
        assert job.image(rank) == util.load_image(job.out / f"rank{rank}-saved")
    assert job.image(0) != job.image(1)
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
    with fetched(tmp_path, s3) as lg:  # a local ledger sees the commit after a fetch
        c = lg.get("origin/main")
        assert c.id == cid and c.step == 7 and c.metrics == {"loss": 0.5}
        assert lg.checkout("origin/main", paths=["world_size"])["world_size"] == 2
        tree = lg.manifest("origin/main")[1].root
    _, _, objects = remote_state(s3)
    own = [_chunks_of(tree, rank) for rank in range(2)]
    for rank, proxy in enumerate(proxies):  # the commit reads no pack: these are the restore's
        read = ranged_reads(proxy, objects) - _metadata(objects, own)
        assert read == own[rank], f"rank {rank} read other ranks' chunks"
        assert read_ends(proxy, objects)  # every read is of whole chunks
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


def _state_chunks(tree: object, rank: int) -> tuple[set[str], set[str]]:
    """(chunks of stored rank ``rank``'s sharded ``w``, of the rest of its state)."""
    w = _chunks_of(tree, rank, "state", "w")
    return w, _chunks_of(tree, rank, "state") - w


@pytest.mark.slow
def test_four_ranks_survive_a_rank_killed_mid_upload_and_reshard_onto_two(
    tmp_path: Path, s3: str, s3_endpoint: str
) -> None:
    proxies = proxies_for(s3_endpoint, 4)
    first = Job(tmp_path, s3, "commit", 4, proxies)
    first.ok()
    refs_before, branches, _ = remote_state(s3)
    assert branches == {"main": first.commit(0)}

    # rank 2 is killed (SIGKILL) while its first pack is being uploaded
    victim: list[int] = []

    def kill_on_pack_upload(method: str, path: str) -> None:
        if method == "PUT" and "/packs/" in path and victim:
            os.kill(victim.pop(), signal.SIGKILL)

    proxies[2].on_request = kill_on_pack_upload
    started = time.monotonic()
    stalled = Job(tmp_path, s3, "stall", 4, proxies)
    victim.append(stalled.procs[2].pid)  # long before it uploads: it imports torch first
    stalled.wait()
    proxies[2].on_request = None
    assert stalled.procs[2].returncode == -signal.SIGKILL
    assert time.monotonic() - started < 120
    for rank in (0, 1, 3):
        kind = (stalled.out / f"rank{rank}.error").read_text().split("\n", 1)[0]
        assert kind == "DistributedCommitError", rank
    assert remote_state(s3)[0] == refs_before  # the refs did not move
    with fetched(tmp_path, s3) as lg:  # the remote is consistent (verify is clean)
        assert lg.get("origin/main").id == first.commit(0)

    again = Job(tmp_path, s3, "commit-again", 4, proxies)  # restores, then commits
    again.ok()
    _, branches, objects = remote_state(s3)
    assert branches == {"main": again.commit(0)}  # restored from the tip: nothing kept aside
    with fetched(tmp_path, s3) as lg:
        assert lg.get("origin/main").parents == [first.commit(0)]
        assert lg.get("origin/main").step == 9
        tree = lg.manifest("origin/main")[1].root

    for proxy in proxies:
        proxy.log.clear()
    same = Job(tmp_path, s3, "restore", 4, proxies)
    same.ok()
    own = [_chunks_of(tree, rank) for rank in range(4)]
    for rank in range(4):
        assert same.image(rank) == again.image(rank)
        read = ranged_reads(proxies[rank], objects) - _metadata(objects, own)
        assert read == own[rank], f"rank {rank} read chunks that are not its own"

    for proxy in proxies:
        proxy.log.clear()
    resharded = Job(tmp_path, s3, "restore", 2, proxies[:2])
    resharded.ok()
    rank0 = load_file(str((again.out / "rank0").with_suffix(".safetensors")))
    for rank in range(2):
        got = load_file(str((resharded.out / f"rank{rank}").with_suffix(".safetensors")))
        assert got["w_full"].equal(rank0["w_full"])  # the DTensor, resharded by DCP's planner
        assert got["w_local"].shape[0] == 5
        for key in ("local", "model/weight", "opt/state/0/momentum_buffer"):
            assert got[key].equal(rank0[key]), key  # everything else comes from rank 0's shard
    w, rest = zip(*(_state_chunks(tree, r) for r in range(4)), strict=True)
    rngs = set().union(*(_chunks_of(tree, r, "rng") for r in range(4)))
    # new rank 0 holds old boxes 0-1, new rank 1 old boxes 1-3; both read old rank 0's other
    # values (not its box: DCP's planner reads the boxes) and every stored RNG (the re-seeding)
    allowed = [w[0] | w[1] | rest[0] | rngs, w[1] | w[2] | w[3] | rest[0] | rngs]
    for rank in range(2):
        read = ranged_reads(proxies[rank], objects) - _metadata(objects, own)
        assert read <= allowed[rank], f"rank {rank} read chunks of boxes it does not hold"
        assert read_ends(proxies[rank], objects)  # every read is of whole chunks
        assert w[2 * rank + 1] <= read  # a box it needs came from the remote
    assert not ranged_reads(proxies[0], objects) & (w[2] | w[3])  # boxes rank 0 does not hold
    for proxy in proxies:
        proxy.stop()


@pytest.mark.slow
def test_a_directory_url_takes_a_distributed_commit_and_restores_it(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    saved = Job(tmp_path, url, "commit", 2, [])
    saved.ok()
    with fetched(tmp_path, url) as lg:
        assert lg.get("origin/main").id == saved.commit(0)
    restored = Job(tmp_path, url, "restore", 2, [])
    restored.ok()
    for rank in range(2):
        assert restored.image(rank) == saved.image(rank)
    # a local ledger that pulled the commit restores it with distributed.restore(path)
    local = tmp_path / "local"
    with Ledger.open(local, create=True, fsync=False) as lg:
        lg.remote_add("origin", url)
        lg.pull("origin", "main")
        assert lg.head is not None and lg.head.id == saved.commit(0)
    out = tmp_path / "from-local"
    out.mkdir()
    worker = SCRIPTS / "adapter_dist_worker.py"
    procs = [start(worker, "restore", r, 2, out / "rendezvous", local, out) for r in range(2)]
    for rank, proc in enumerate(procs):
        proc.wait(timeout=180)
        assert proc.returncode == 0, proc.stdout.read() if proc.stdout else rank
        assert util.load_image(out / f"rank{rank}") == saved.image(rank)


def _pushed(tmp: Path, url: str) -> Ledger:
    lg = Ledger.open(tmp / "writer", create=True, fsync=False)
    lg.commit({"w": torch.arange(8.0)}, step=1)
    lg.remote_add("origin", url)
    lg.push("origin")
    return lg


def test_a_direct_commit_that_loses_the_race_moves_no_ref(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    lg = _pushed(tmp_path, url)
    target = DirectCommit(url)  # reads the refs now
    with lg.stage() as st:
        part = st.write({"w": torch.arange(8.0) + 1})
        packs = target.send(lg, [part.node])
        made = st.commit({"ranks": [part]}, step=2)
    other = Ledger.clone(url, tmp_path / "other")
    other.commit({"w": torch.zeros(8)}, step=3)
    other.push("origin")  # lands first
    before, branches, _ = remote_state(url)
    with pytest.raises(RemoteConflictError, match="changed while the distributed commit"):
        target.publish(lg, made.id, [packs], "main")
    assert remote_state(url)[0] == before and branches["main"] == other.head.id  # type: ignore[union-attr]
    other.close()
    lg.close()


def test_a_direct_commit_from_an_older_commit_keeps_the_remote_tip_on_an_orig_branch(
    tmp_path: Path,
) -> None:
    url = (tmp_path / "remote").as_uri()
    lg = _pushed(tmp_path, url)
    first = lg.head.id  # type: ignore[union-attr]
    tip = lg.commit({"w": torch.arange(8.0) * 2}, step=2).id
    lg.push("origin")
    target = DirectCommit(url)
    assert target.tip(None) == ("main", tip)
    lg.base_on(first)  # resumed from the older commit
    with lg.stage() as st:
        part = st.write({"w": torch.arange(8.0) * 3})
        packs = target.send(lg, [part.node])
        made = st.commit({"ranks": [part]}, step=3)
    target.publish(lg, made.id, [packs], "main")
    _, branches, objects = remote_state(url)
    assert branches == {"main": made.id, f"orig/main/{tip[:12]}": tip}
    assert bytes.fromhex(made.id).hex() in objects
    with fetched(tmp_path, url) as seen:
        assert seen.get("origin/main").parents == [first]
    lg.close()


def test_the_hub_is_refused_for_direct_commits() -> None:
    with pytest.raises(RemoteError, match="cannot go straight to the Hugging Face Hub"):
        DirectCommit("hf://someone/run")


def test_a_direct_commit_naming_a_chunk_nobody_sent_is_refused(tmp_path: Path) -> None:
    url = (tmp_path / "remote").as_uri()
    lg = _pushed(tmp_path, url)
    target = DirectCommit(url)
    with lg.stage() as st:
        part = st.write({"w": torch.arange(8.0) + 5})  # written here, never sent
        made = st.commit({"ranks": [part]}, step=2)
    before = remote_state(url)[0]
    with pytest.raises(RemoteError, match="neither sent nor listed"):
        target.publish(lg, made.id, [], "main")
    assert remote_state(url)[0] == before
    lg.close()


def test_an_asynchronous_commit_to_a_remote_is_refused_before_any_rank_waits(
    tmp_path: Path,
) -> None:
    from ledger.adapters import distributed
    from ledger.adapters._common import AdapterError

    url = (tmp_path / "remote").as_uri()
    with pytest.raises(AdapterError, match=r"blocking=False.*not supported yet"):
        distributed.commit(url, {"w": torch.ones(2)}, blocking=False)
    assert not (tmp_path / "remote").exists()  # nothing written, no process group needed
