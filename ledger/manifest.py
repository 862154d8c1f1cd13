"""The manifest: a commit's state as a tree of nodes, each node a msgspec Struct.

This module owns the on-disk shape of the manifest (docs/format.md,
"Manifest") and the node records it is built from, so that flattening
(``ledger.state``) and history (``ledger.history``) share one definition
without either importing the other. It also owns sending a node between
processes (:func:`encode_node`, :func:`decode_node`) and shifting a
subtree's tensor ids (:func:`renumber`). Tags and field order are the
format: changing either needs a new format version. This module must never
do I/O.
"""

from __future__ import annotations

import msgspec

from ledger.errors import CorruptionError


class DictNode(msgspec.Struct, tag="dict"):
    """A mapping; keys keep their type (str or int) and their order."""

    keys: list[str | int]
    values: list[Node]


class ListNode(msgspec.Struct, tag="list"):
    """A list."""

    items: list[Node]


class TupleNode(msgspec.Struct, tag="tuple"):
    """A tuple (comes back as a tuple)."""

    items: list[Node]


class ValueNode(msgspec.Struct, tag="value"):
    """A plain value: None, bool, int (64-bit), float or str."""

    value: bool | int | float | str | None


class BytesNode(msgspec.Struct, tag="bytes"):
    """A bytes value."""

    data: bytes


class BigIntNode(msgspec.Struct, tag="bigint"):
    """An int too large for 64 bits, as decimal text."""

    text: str


class TensorNode(msgspec.Struct, tag="tensor"):
    """A torch tensor: dtype name, shape, and its bytes as chunk ids (row-major)."""

    dtype: str
    shape: list[int]
    nbytes: int
    chunks: list[str]
    device: str = "cpu"
    id: int = -1


class AliasNode(msgspec.Struct, tag="alias"):
    """A second name for an earlier tensor (same storage, shape, strides, dtype)."""

    of: int


class ArrayNode(msgspec.Struct, tag="ndarray"):
    """A numpy array: numpy dtype string (e.g. ``<f4``), shape, chunk ids."""

    dtype: str
    shape: list[int]
    nbytes: int
    chunks: list[str]
    scalar: bool = False


class StatefulNode(msgspec.Struct, tag="stateful"):
    """An object stored through ``state_dict()``; ``cls`` (its class) is informational."""

    cls: str
    state: Node


class GeneratorNode(msgspec.Struct, tag="generator"):
    """A ``torch.Generator``: its device and ``get_state()`` bytes."""

    device: str
    state: TensorNode


class FileNode(msgspec.Struct, tag="file"):
    """A file's bytes (a ``ledger.File``) as chunk ids, so equal files share storage (format 2)."""

    nbytes: int
    chunks: list[str]


Node = (
    DictNode
    | ListNode
    | TupleNode
    | ValueNode
    | BytesNode
    | BigIntNode
    | TensorNode
    | AliasNode
    | ArrayNode
    | StatefulNode
    | GeneratorNode
    | FileNode
)

CHUNKED = (TensorNode, ArrayNode, FileNode)
"""The node kinds whose bytes are chunks in the store (gc, verify and push walk these)."""


class Manifest(msgspec.Struct, tag="manifest"):
    """The whole state of one commit."""

    format: int
    chunk_size: int
    root: DictNode


MANIFEST_TAGS = frozenset(
    t.__struct_config__.tag
    for t in (
        DictNode, ListNode, TupleNode, ValueNode, BytesNode, BigIntNode, TensorNode, AliasNode,
        ArrayNode, StatefulNode, GeneratorNode, FileNode, Manifest,
    )
)  # fmt: skip
"""The tag of every record this module defines (a reader refuses tags it does not know)."""

manifest_decoder = msgspec.msgpack.Decoder(Manifest)
_node_encoder = msgspec.msgpack.Encoder()
_node_decoder: msgspec.msgpack.Decoder[Node] = msgspec.msgpack.Decoder(Node)


def encode_node(node: Node) -> bytes:
    """A node as msgpack bytes (the manifest's own encoding), to send it to another process.

    Example:
        >>> decode_node(encode_node(ListNode([ValueNode(1)])))
        ListNode(items=[ValueNode(value=1)])
    """
    return _node_encoder.encode(node)


def decode_node(data: bytes) -> Node:
    """The node :func:`encode_node` encoded, validated against the record types.

    Raises:
        CorruptionError: ``data`` is not an encoded node of this format
            (truncated, another record, a field of the wrong type, nested
            too deep).

    Example:
        >>> decode_node(encode_node(TensorNode("float32", [2], 8, ["ab"])))
        TensorNode(dtype='float32', shape=[2], nbytes=8, chunks=['ab'], device='cpu', id=-1)
    """
    try:
        return _node_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise CorruptionError(
            f"{len(data)} bytes are not an encoded manifest node ({e}); the sender must "
            "send encode_node()'s bytes unchanged, from the same training-ledger format"
        ) from e


def renumber(node: Node, offset: int) -> None:
    """Shift every tensor id (``id >= 0``) and alias reference under ``node`` by ``offset``.

    Subtrees flattened apart number their tensors from 0 each; shifting each
    by its own offset before they join one manifest keeps every alias
    pointing at a tensor of its own subtree. Changes ``node`` in place.

    Example:
        >>> tree = ListNode([TensorNode("float32", [1], 4, [], id=0), AliasNode(of=0)])
        >>> renumber(tree, 100)
        >>> tree.items[0].id, tree.items[1].of
        (100, 100)
    """
    if isinstance(node, TensorNode):
        if node.id >= 0:
            node.id += offset
    elif isinstance(node, AliasNode):
        node.of += offset
    elif isinstance(node, DictNode):
        for child in node.values:
            renumber(child, offset)
    elif isinstance(node, ListNode | TupleNode):
        for child in node.items:
            renumber(child, offset)
    elif isinstance(node, StatefulNode | GeneratorNode):
        renumber(node.state, offset)


MAX_DEPTH = 256
"""The deepest nesting a manifest may have: the root dict is level 1, each key or index one
more (the same count as the length of a value's path in the state, plus one)."""
MAX_CHUNK_SIZE = 1 << 32
"""The largest ``chunk_size`` a manifest may declare (a chunk object's cap)."""


def check_manifest(manifest: Manifest, what: str, **fields: object) -> None:
    """Refuse a decoded manifest whose sizes or shape could not have been written.

    Runs before anything is allocated for the manifest's tensors, without
    recursion (so no tree is too deep to check): ``chunk_size`` in 1..4 GiB;
    nesting at most :data:`MAX_DEPTH`; a dict's keys and values pair up; every
    chunked node has ``nbytes >= 0``, no negative dimension and exactly
    ``ceil(nbytes / chunk_size)`` chunk ids; every alias points to a tensor.
    (The dtype-dependent check ``prod(shape) * itemsize == nbytes`` is made
    where dtypes are known, ``ledger.state.build``, also before allocating.)

    Args:
        manifest: the decoded manifest.
        what: how errors name it (``"manifest of commit 3f2a..."``).
        **fields: put onto the error (``object``, ``commit``).

    Raises:
        CorruptionError: naming ``what`` and the path of the offending node.

    Example:
        >>> m = Manifest(2, 4096, DictNode(["w"], [TensorNode("float32", [2], 8, ["ab"])]))
        >>> check_manifest(m, "manifest of commit 3f2a")
        >>> check_manifest(Manifest(2, 0, DictNode([], [])), "manifest of commit 3f2a")
        Traceback (most recent call last):
        ...
        ledger.errors.CorruptionError: manifest of commit 3f2a declares chunk size 0 ...
    """
    size = manifest.chunk_size
    if not 1 <= size <= MAX_CHUNK_SIZE:
        raise CorruptionError(
            f"{what} declares chunk size {size} (must be 1 to {MAX_CHUNK_SIZE}); "
            "the manifest is damaged or crafted",
            **fields,
        )
    ids: set[int] = set()
    aliases: list[tuple[int, str]] = []
    stack: list[tuple[Node, str, int]] = [(manifest.root, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CorruptionError(
                f"{what}: {path or 'the root'} is nested deeper than {MAX_DEPTH} levels",
                path=path,
                **fields,
            )
        children: list[tuple[Node, str]] = []
        if isinstance(node, DictNode):
            if len(node.keys) != len(node.values):
                raise CorruptionError(
                    f"{what}: {path or 'the root'} has {len(node.keys)} keys for "
                    f"{len(node.values)} values",
                    path=path,
                    **fields,
                )
            children = [
                (v, f"{path}.{k}" if path else str(k))
                for k, v in zip(node.keys, node.values, strict=True)
            ]
        elif isinstance(node, ListNode | TupleNode):
            children = [(v, f"{path}[{i}]") for i, v in enumerate(node.items)]
        elif isinstance(node, StatefulNode):  # its state sits at its own path: no new level
            stack.append((node.state, path, depth))
        elif isinstance(node, GeneratorNode):
            children = [(node.state, f"{path}.state")]
        elif isinstance(node, AliasNode):
            aliases.append((node.of, path))
        if isinstance(node, CHUNKED):
            _check_sizes(node, size, what, path, fields)
            if isinstance(node, TensorNode) and node.id >= 0:
                ids.add(node.id)
        stack.extend((child, p, depth + 1) for child, p in reversed(children))
    for of, path in aliases:
        if of not in ids:
            raise CorruptionError(
                f"{what}: {path} is an alias of tensor {of}, which the manifest lacks",
                path=path,
                **fields,
            )


def _check_sizes(
    node: TensorNode | ArrayNode | FileNode, size: int, what: str, path: str, fields: dict
) -> None:
    shape = getattr(node, "shape", [])
    if node.nbytes < 0 or any(d < 0 for d in shape):
        raise CorruptionError(
            f"{what}: {path} declares a negative size ({node.nbytes} bytes, shape {shape})",
            path=path,
            **fields,
        )
    if len(node.chunks) != -(-node.nbytes // size):
        raise CorruptionError(
            f"{what}: {path} declares {node.nbytes} bytes but {len(node.chunks)} chunks of "
            f"{size} bytes; the manifest is damaged or crafted",
            path=path,
            **fields,
        )
