"""Walk a manifest tree: every tensor and value with its path (used by gc, show, diff).

Paths use the ``paths=`` syntax of ``checkout``: keys joined by ``/``
(``model/fc.weight``, ``optim/state/0/exp_avg``). Read-only; never touches
the store.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ledger.manifest import (
    CHUNKED,
    AliasNode,
    ArrayNode,
    DictNode,
    FileNode,
    GeneratorNode,
    ListNode,
    Node,
    StatefulNode,
    TensorNode,
    TupleNode,
)

Leaf = TensorNode | ArrayNode | AliasNode


def iter_leaves(node: Node, prefix: str = "") -> Iterator[tuple[str, Node]]:
    """Every non-container node under ``node`` with its ``/`` path.

    Example:
        >>> from ledger.manifest import ValueNode
        >>> list(iter_leaves(DictNode(keys=["a"], values=[ValueNode(1)])))
        [('a', ValueNode(value=1))]
    """
    if isinstance(node, DictNode):
        for key, value in zip(node.keys, node.values, strict=True):
            yield from iter_leaves(value, f"{prefix}/{key}" if prefix else str(key))
    elif isinstance(node, ListNode | TupleNode):
        for i, value in enumerate(node.items):
            yield from iter_leaves(value, f"{prefix}/{i}" if prefix else str(i))
    elif isinstance(node, StatefulNode):
        yield from iter_leaves(node.state, prefix)
    elif isinstance(node, GeneratorNode):
        yield prefix, node.state
    else:
        yield prefix, node


def tensor_table(root: DictNode) -> dict[str, TensorNode | ArrayNode]:
    """Path -> tensor or array node (aliases resolved to their target)."""
    by_id: dict[int, TensorNode] = {}
    out: dict[str, TensorNode | ArrayNode] = {}
    pending: list[tuple[str, int]] = []
    for path, node in iter_leaves(root):
        if isinstance(node, TensorNode):
            by_id[node.id] = node
            out[path] = node
        elif isinstance(node, ArrayNode):
            out[path] = node
        elif isinstance(node, AliasNode):
            pending.append((path, node.of))
    for path, of in pending:
        if of in by_id:
            out[path] = by_id[of]
    return out


def chunk_ids(root: DictNode) -> set[str]:
    """Every chunk id the manifest references."""
    ids: set[str] = set()
    for _, node in iter_leaves(root):
        if isinstance(node, CHUNKED):
            ids.update(node.chunks)
    return ids


def leaf_value(node: Node) -> Any:
    """A short printable form of a non-tensor leaf."""
    if isinstance(node, FileNode):
        return f"<file, {node.nbytes} bytes>"
    value = getattr(node, "value", None)
    if value is not None or type(node).__name__ == "ValueNode":
        return value
    if hasattr(node, "data"):
        return f"<{len(node.data)} bytes>"
    if hasattr(node, "text"):
        return int(node.text)
    return None
