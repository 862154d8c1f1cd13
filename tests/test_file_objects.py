"""``ledger.File`` values: stored as deduplicated chunks in file nodes, read back bit-exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import flip_stored_byte
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import File, Ledger
from ledger.errors import CorruptionError, UnsupportedValueError
from ledger.manifest import BytesNode, FileNode


def _files_node(lg: Ledger, rev: str, name: str) -> FileNode:
    _, manifest = lg.manifest(rev)
    files = manifest.root.values[manifest.root.keys.index("files")]
    node = files.values[files.keys.index(name)]  # type: ignore[union-attr]
    assert isinstance(node, FileNode)
    return node


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=20_000))
def test_a_file_reads_back_bit_exactly_and_is_a_file_node_not_inline_bytes(
    small: Ledger, data: bytes
) -> None:
    c = small.commit({"files": {"f.bin": File(data)}, "raw": b"x"}, rng=False)
    back = small.checkout(c.id)["files"]["f.bin"]
    assert isinstance(back, File) and back.data == data
    node = _files_node(small, c.id, "f.bin")
    assert node.nbytes == len(data) and len(node.chunks) == -(-len(data) // 4096)
    _, manifest = small.manifest(c.id)
    assert isinstance(manifest.root.values[manifest.root.keys.index("raw")], BytesNode)


def test_an_unchanged_file_costs_no_new_bytes_and_a_changed_one_only_its_chunks(
    small: Ledger,
) -> None:
    vocab = torch.randint(0, 256, (16384,), dtype=torch.uint8).numpy().tobytes()  # 4 chunks
    first = small.commit({"files": {"vocab": File(vocab), "cfg": File(b"{}")}}, rng=False)
    assert first.stats.chunks_written == 5
    same = small.commit({"files": {"vocab": File(vocab), "cfg": File(b"{}")}}, rng=False)
    assert same.stats.chunks_written == 0 and same.stats.bytes_written == 0
    edited = vocab[:-1] + b"!"
    changed = small.commit({"files": {"vocab": File(edited), "cfg": File(b"{}")}}, rng=False)
    assert changed.stats.chunks_written == 1  # only the last chunk of vocab differs
    a, b = _files_node(small, first.id, "vocab"), _files_node(small, changed.id, "vocab")
    assert a.chunks[:3] == b.chunks[:3] and a.chunks[3] != b.chunks[3]


def test_a_background_commit_stores_the_files_it_was_given(small: Ledger) -> None:
    files = {"config.json": File(b'{"n": 1}'), "big.bin": File(bytes(range(256)) * 40)}
    handle = small.commit({"files": files, "w": torch.ones(3)}, rng=False, blocking=False)
    files = {"config.json": File(b'{"n": 2}')}  # the caller moves on; the commit is unaffected
    c = handle.result()
    back = small.checkout(c.id)["files"]
    assert back["config.json"] == File(b'{"n": 1}') and back["big.bin"].data[:3] == b"\x00\x01\x02"


def test_gc_keeps_the_chunks_of_files_a_ref_reaches_and_frees_the_rest(small: Ledger) -> None:
    small.commit({"files": {"kept": File(b"k" * 9000)}}, rng=False)
    small.commit({"files": {"gone": File(b"g" * 9000)}}, branch="tmp", rng=False)
    small.delete_branch("tmp", force=True)
    report = small.gc(grace=0)
    assert report.objects_freed >= 3  # the commit, its manifest and the file's chunks
    assert small.verify(full=True).ok
    assert small.checkout("main")["files"]["kept"] == File(b"k" * 9000)


def test_push_sends_file_chunks_once_and_a_clone_reads_the_files(
    small: Ledger, tmp_path: Path
) -> None:
    tokenizer = File(torch.randint(0, 256, (9000,), dtype=torch.uint8).numpy().tobytes())
    small.commit({"files": {"tokenizer.json": tokenizer}, "step": 1}, rng=False)
    small.remote_add("origin", str(tmp_path / "remote"))
    assert small.push("origin").chunks_sent == 3  # the file's chunks: 4096 + 4096 + 808 bytes
    small.commit({"files": {"tokenizer.json": tokenizer}, "step": 2}, rng=False)
    assert small.push("origin").chunks_sent == 0
    with Ledger.clone(str(tmp_path / "remote"), tmp_path / "copy") as copy:
        assert copy.checkout("HEAD")["files"] == {"tokenizer.json": tokenizer}
        assert copy.verify(full=True).ok


def test_a_flipped_byte_in_a_file_chunk_is_refused_naming_the_file(small: Ledger) -> None:
    c = small.commit({"files": {"config.json": File(b'{"a": 1}' * 100)}}, rng=False)
    flip_stored_byte(small, _files_node(small, c.id, "config.json").chunks[0])
    with pytest.raises(CorruptionError, match=r"config\.json"):
        small.checkout(c.id)
    assert not small.verify(full=True).ok


def test_restore_puts_the_stored_files_into_the_live_state(small: Ledger) -> None:
    small.commit({"w": torch.ones(2), "files": {"a": File(b"old")}}, rng=False)
    live = {"w": torch.zeros(2), "files": {"a": File(b"new")}}
    small.restore(live)
    assert live["files"] == {"a": File(b"old")} and live["w"].equal(torch.ones(2))


def test_file_values_compare_by_content_and_come_from_regular_files(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_bytes(b"{}")
    f = File.from_path(tmp_path / "c.json")
    assert f == File(b"{}") and hash(f) == hash(File(bytearray(b"{}"))) and f != File(b"[]")
    assert f.text() == "{}" and len(f) == 2
    assert f.write(tmp_path / "out" / "c.json").read_bytes() == b"{}"
    with pytest.raises(UnsupportedValueError, match="not a regular file"):
        File.from_path(tmp_path)
    with pytest.raises(UnsupportedValueError, match="does not exist"):
        File.from_path(tmp_path / "missing")
    with pytest.raises(UnsupportedValueError, match="not str"):
        File("text")  # type: ignore[arg-type]


def test_show_lists_each_file_with_its_size_beside_the_values(small: Ledger) -> None:
    small.commit({"w": torch.ones(2), "hf_files": {"config.json": File(b'{"a": 1}')}, "n": 3})
    values = small.show("HEAD").values
    assert values["hf_files/config.json"] == "<file, 8 bytes>"
    assert values["n"] == 3
    assert [t.path for t in small.show("HEAD").tensors] == ["w"]
