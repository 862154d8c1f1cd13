"""Manifest nodes sent between processes: encode_node, decode_node and renumber.

A node's bytes are the manifest's own encoding, so what one process sends
another decodes to the same node; anything else given to ``decode_node``
raises a ``CorruptionError`` (a ``LedgerError``), never msgspec's error or a
crash.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import CorruptionError, LedgerError
from ledger.history.records import CommitRecord, msgpack_encoder, utcnow
from ledger.manifest import (
    AliasNode,
    ArrayNode,
    BigIntNode,
    BytesNode,
    DictNode,
    GeneratorNode,
    ListNode,
    Manifest,
    Node,
    StatefulNode,
    TensorNode,
    TupleNode,
    ValueNode,
    decode_node,
    encode_node,
    renumber,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
SIZES = st.integers(0, 2**40)
CHUNK_IDS = st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=3)
NAMES = st.text(max_size=12)

tensors = st.builds(
    TensorNode,
    dtype=st.sampled_from(["float32", "bfloat16", "int8", "bool", "complex64"]),
    shape=st.lists(st.integers(0, 2**20), max_size=4),
    nbytes=SIZES,
    chunks=CHUNK_IDS,
    device=st.sampled_from(["cpu", "cuda:0", "cuda:7"]),
    id=st.integers(-1, 2**50),
)
leaves: st.SearchStrategy[Node] = st.one_of(
    st.builds(
        ValueNode, st.none() | st.booleans() | INT64 | st.floats(allow_nan=False) | st.text()
    ),
    st.builds(BytesNode, st.binary(max_size=64)),
    st.builds(BigIntNode, st.integers(2**63, 2**200).map(str)),
    tensors,
    st.builds(AliasNode, st.integers(0, 2**50)),
    st.builds(
        ArrayNode,
        dtype=st.sampled_from(["<f4", "<i8", "|b1", "<c16"]),
        shape=st.lists(st.integers(0, 2**20), max_size=4),
        nbytes=SIZES,
        chunks=CHUNK_IDS,
        scalar=st.booleans(),
    ),
    st.builds(GeneratorNode, device=st.sampled_from(["cpu", "cuda:0"]), state=tensors),
)


def _dict(children: st.SearchStrategy[Node]) -> st.SearchStrategy[DictNode]:
    keys = st.lists(NAMES | st.integers(-(2**63), 2**64 - 1), max_size=4, unique=True)
    return keys.flatmap(
        lambda ks: st.lists(children, min_size=len(ks), max_size=len(ks)).map(
            lambda vs: DictNode(keys=ks, values=vs)
        )
    )


nodes: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda children: st.one_of(
        _dict(children),
        st.builds(ListNode, st.lists(children, max_size=4)),
        st.builds(TupleNode, st.lists(children, max_size=4)),
        st.builds(StatefulNode, cls=NAMES, state=children),
    ),
    max_leaves=24,
)


def walk(node: Node) -> Iterator[Node]:
    yield node
    if isinstance(node, DictNode):
        for child in node.values:
            yield from walk(child)
    elif isinstance(node, ListNode | TupleNode):
        for child in node.items:
            yield from walk(child)
    elif isinstance(node, StatefulNode | GeneratorNode):
        yield from walk(node.state)


@given(nodes)
def test_every_node_tree_comes_back_equal_from_its_bytes(node: Node) -> None:
    data = encode_node(node)
    back = decode_node(data)
    assert back == node
    assert encode_node(back) == data


@given(nodes)
def test_a_node_encodes_as_it_does_inside_a_manifest(node: Node) -> None:
    manifest = Manifest(format=1, chunk_size=1 << 20, root=DictNode(keys=["k"], values=[node]))
    assert encode_node(node) in msgpack_encoder.encode(manifest)


def test_a_node_is_a_map_led_by_its_tag_then_its_fields_in_order() -> None:
    assert encode_node(ValueNode(1)) == b"\x82\xa4type\xa5value\xa5value\x01"
    assert encode_node(AliasNode(of=7)) == b"\x82\xa4type\xa5alias\xa2of\x07"


@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_to_a_node_or_a_ledger_error(data: bytes) -> None:
    try:
        node = decode_node(data)
    except LedgerError as e:
        assert isinstance(e, CorruptionError)
        assert "not an encoded manifest node" in str(e)
    else:
        again = encode_node(node)
        assert encode_node(decode_node(again)) == again  # bytes: a NaN is not equal to itself


@given(nodes, st.data())
def test_damaged_node_bytes_decode_to_a_node_or_a_ledger_error(
    node: Node, data: st.DataObject
) -> None:
    raw = bytearray(encode_node(node))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        back = decode_node(bytes(raw[:cut]))
    except CorruptionError:
        return
    again = encode_node(back)
    assert encode_node(decode_node(again)) == again


def test_other_records_and_wrong_field_types_are_refused() -> None:
    commit = CommitRecord(manifest="ab", parents=[], time=utcnow())
    manifest = Manifest(format=1, chunk_size=1, root=DictNode(keys=[], values=[]))
    wrong_type = msgspec.msgpack.encode({"type": "tensor", "dtype": 3, "shape": [], "nbytes": 0})
    for data in (msgpack_encoder.encode(commit), msgpack_encoder.encode(manifest), wrong_type):
        with pytest.raises(CorruptionError, match="not an encoded manifest node"):
            decode_node(data)


def test_nesting_too_deep_to_decode_is_a_corruption_error() -> None:
    data = encode_node(ValueNode(None))
    for _ in range(5000):
        data = b"\x82\xa4type\xa4list\xa5items\x91" + data
    with pytest.raises(CorruptionError, match="not an encoded manifest node"):
        decode_node(data)


@given(nodes, st.integers(0, 2**45))
def test_renumber_shifts_every_tensor_id_and_alias_and_nothing_else(
    node: Node, offset: int
) -> None:
    before = decode_node(encode_node(node))
    renumber(node, offset)
    for old, new in zip(walk(before), walk(node), strict=True):
        if isinstance(old, TensorNode):
            assert isinstance(new, TensorNode)
            assert new.id == (old.id + offset if old.id >= 0 else -1)
            assert msgspec.structs.replace(new, id=old.id) == old
        elif isinstance(old, AliasNode):
            assert new == AliasNode(of=old.of + offset)
        elif not isinstance(old, DictNode | ListNode | TupleNode | StatefulNode | GeneratorNode):
            assert new == old


def test_renumber_reaches_a_generator_state_inside_a_stateful_object() -> None:
    state = TensorNode("uint8", [16], 16, [], id=3)
    tree = DictNode(
        keys=["rng", "model"],
        values=[
            GeneratorNode("cpu", state),
            StatefulNode("torch.nn.Linear", DictNode(keys=["w", "tied"], values=[
                TensorNode("float32", [2], 8, [], id=0), AliasNode(of=0),
            ])),
        ],
    )  # fmt: skip
    renumber(tree, 1 << 40)
    assert state.id == 3 + (1 << 40)
    model = tree.values[1]
    assert isinstance(model, StatefulNode) and isinstance(model.state, DictNode)
    weight, tied = model.state.values
    assert isinstance(weight, TensorNode) and weight.id == 1 << 40
    assert tied == AliasNode(of=1 << 40)
