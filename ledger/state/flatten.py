"""Flatten a live training state into manifest nodes plus the tensor bytes to store.

This module owns what a storable state is and how each kind of value maps to
a node (docs/format.md, "Manifest"). Tensors become zero-copy byte views cut
into chunks aligned to their start; the caller stores the chunks and fills in
their ids. It must never pickle, and it refuses anything it cannot store with
an error naming the value's path in the state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ledger.errors import ObjectMissingError, UnsupportedValueError
from ledger.manifest import (
    MAX_DEPTH,
    AliasNode,
    ArrayNode,
    BigIntNode,
    BytesNode,
    DictNode,
    FileNode,
    GeneratorNode,
    ListNode,
    Node,
    StatefulNode,
    TensorNode,
    TupleNode,
    ValueNode,
)
from ledger.state.dtypes import as_bits, float_itemsize, torch_dtype_name
from ledger.state.files import File
from ledger.state.rng import RNG_KEY
from ledger.state.unchanged import Probe, UnchangedTensors

_INT64 = (-(2**63), 2**63 - 1)
# Integer mapping keys are stored as msgpack integers: int64 or uint64.
_INT_KEY = (-(2**63), 2**64 - 1)


def format_path(parts: tuple[Any, ...]) -> str:
    """``("model", "fc.weight")`` -> ``state['model']['fc.weight']``.

    Example:
        >>> format_path(("callbacks", 0))
        "state['callbacks'][0]"
    """
    return "state" + "".join(f"[{p!r}]" for p in parts)


def _is_stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


class TensorJob:
    """One tensor's bytes waiting to be chunked and stored into ``node.chunks``.

    A job with ``reuse`` set is a tensor found unchanged (see
    :mod:`ledger.state.unchanged`): its chunk ids are known and its bytes are
    not read, unless those chunks turn out to be gone (:meth:`Flattener.check_reused`).
    """

    def __init__(
        self,
        data: memoryview,
        itemsize: int | None,
        node: TensorNode | ArrayNode | FileNode,
        keep: Any,
        *,
        probe: Probe | None = None,
        reuse: list[str] | None = None,
        where: str = "",
        private: bool = False,
    ) -> None:
        self.data = data
        self.itemsize = itemsize
        self.node = node
        self.keep = keep  # the tensor/array owning ``data`` (kept alive until stored)
        # ``data`` is already a copy no caller can write (of a GPU or strided tensor).
        self.private = private
        self.probe = probe
        self.reuse = reuse
        self.where = where


class Flattener:
    """Turns one state into a root :class:`DictNode` and a list of :class:`TensorJob`.

    Example:
        >>> f = Flattener(chunk_size=1 << 20)
        >>> root = f.flatten_root({"step": 3, "w": torch.ones(2)}, rng=None)
        >>> root.keys, len(f.jobs)
        (['step', 'w'], 1)
    """

    def __init__(
        self,
        chunk_size: int,
        *,
        unchanged: UnchangedTensors | None = None,
        has: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.chunk_size = chunk_size
        self.jobs: list[TensorJob] = []
        self.tensors = 0
        # Version-counter fast path (opt-in): ``has`` says whether a chunk is stored.
        self.unchanged = unchanged
        self.has = has
        self.reused_chunks = 0
        self.reused_bytes = 0
        self._aliases: dict[tuple[Any, ...], int] = {}
        # Every tensor keyed in _aliases stays alive while flattening: a temporary one
        # (from a state_dict() call) freed early could hand its address to another
        # tensor, which would then be taken for an alias of it.
        self._alive: list[torch.Tensor] = []
        self._next_id = 0
        self._stack: set[int] = set()

    def flatten_root(self, state: Mapping[Any, Any], rng: dict[str, Any] | None) -> DictNode:
        """Flatten the user's state mapping, adding the RNG tree under the reserved key."""
        if not isinstance(state, Mapping):
            raise UnsupportedValueError(
                f"state must be a mapping such as a dict, not {type(state).__name__}; "
                "wrap it: commit({'model': model, ...})"
            )
        if RNG_KEY in state:
            raise UnsupportedValueError(
                f"state[{RNG_KEY!r}] uses a key reserved for the RNG state; rename it"
            )
        root = self._mapping(state, ())
        if rng is not None:
            root.keys.append(RNG_KEY)
            root.values.append(self.flatten(rng, (RNG_KEY,)))
        return root

    def flatten(self, value: Any, path: tuple[Any, ...]) -> Node:
        """The node for one value at ``path`` (tensors are queued as jobs)."""
        if len(path) >= MAX_DEPTH:
            raise UnsupportedValueError(
                f"{format_path(path[:3])}...: the state is nested deeper than {MAX_DEPTH} "
                "levels, more than a manifest may hold; flatten it (e.g. keys 'a.b.c')"
            )
        if isinstance(value, torch.Tensor):
            return self._tensor(value, path)
        if isinstance(value, np.ndarray | np.generic):
            return self._array(value, path)
        if isinstance(value, File):
            return self._file(value)
        if isinstance(value, torch.Generator):
            state = self._tensor(value.get_state(), (*path, "<generator state>"))
            assert isinstance(state, TensorNode)
            return GeneratorNode(device=str(value.device), state=state)
        if value is None or isinstance(value, bool | float | str):
            if isinstance(value, str):
                _check_text(value, path, "the string")
            return ValueNode(value)
        if isinstance(value, int):
            if _INT64[0] <= value <= _INT64[1]:
                return ValueNode(int(value))
            return BigIntNode(str(int(value)))
        if isinstance(value, bytes | bytearray | memoryview):
            return BytesNode(bytes(value))
        if isinstance(value, Mapping):
            return self._mapping(value, path)
        if isinstance(value, list | tuple):
            return self._sequence(value, path)
        if _is_stateful(value):
            cls = f"{type(value).__module__}.{type(value).__qualname__}"
            return StatefulNode(cls=cls, state=self.flatten(value.state_dict(), path))
        raise UnsupportedValueError(
            f"{format_path(path)}: {_describe(value)} cannot be stored; {_hint(value)}"
        )

    def _enter(self, value: Any, path: tuple[Any, ...]) -> None:
        if id(value) in self._stack:
            raise UnsupportedValueError(f"{format_path(path)}: the container contains itself")
        self._stack.add(id(value))

    def _mapping(self, value: Mapping[Any, Any], path: tuple[Any, ...]) -> DictNode:
        self._enter(value, path)
        keys: list[str | int] = []
        values: list[Node] = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise UnsupportedValueError(
                    f"{format_path(path)}: key {key!r} is a {type(key).__name__}; "
                    "mapping keys must be str or int"
                )
            if isinstance(key, str):
                _check_text(key, path, f"key {key!r}")
            elif not _INT_KEY[0] <= key <= _INT_KEY[1]:
                raise UnsupportedValueError(
                    f"{format_path(path)}: integer key {key} does not fit in 64 bits; use a str key"
                )
            keys.append(key if isinstance(key, str) else int(key))
            values.append(self.flatten(item, (*path, key)))
        self._stack.discard(id(value))
        return DictNode(keys=keys, values=values)

    def _sequence(self, value: list[Any] | tuple[Any, ...], path: tuple[Any, ...]) -> Node:
        self._enter(value, path)
        items = [self.flatten(item, (*path, i)) for i, item in enumerate(value)]
        self._stack.discard(id(value))
        return TupleNode(items) if isinstance(value, tuple) else ListNode(items)

    def _tensor(self, t: torch.Tensor, path: tuple[Any, ...]) -> Node:
        where = format_path(path)
        if t.layout != torch.strided:
            raise UnsupportedValueError(
                f"{where}: a {t.layout} tensor cannot be stored; call .to_dense()"
            )
        if t.is_quantized:
            raise UnsupportedValueError(
                f"{where}: quantized tensors cannot be stored; dequantize() first"
            )
        if t.device.type == "meta":
            raise UnsupportedValueError(f"{where}: a meta tensor has no data to store")
        if getattr(t, "is_nested", False):
            raise UnsupportedValueError(f"{where}: nested tensors cannot be stored")
        t = t.detach()
        key = None
        if t.numel() > 0:
            key = (
                t.device,
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                t.stride(),
                t.dtype,
            )
            if key in self._aliases:
                return AliasNode(of=self._aliases[key])
        node_id = self._next_id
        self._next_id += 1
        if key is not None:
            self._aliases[key] = node_id
            self._alive.append(t)
        probe = reuse = None
        if self.unchanged is not None and self.has is not None:
            probe = self.unchanged.probe(t)
            if probe is not None:
                reuse = self.unchanged.lookup(probe, self.has)
        node = TensorNode(
            dtype=torch_dtype_name(t.dtype),
            shape=list(t.shape),
            nbytes=t.numel() * t.element_size(),
            chunks=[],
            device=str(t.device),
            id=node_id,
        )
        if reuse is not None:
            # Unchanged since this process stored it: no copy, no read. ``keep`` is the
            # live tensor, read only if the chunks vanished before the commit lands.
            empty = memoryview(b"")
            job = TensorJob(empty, None, node, t, probe=probe, reuse=reuse, where=where)
            self.jobs.append(job)
        elif node.nbytes:
            data, keep = _bytes_of(t)
            itemsize = float_itemsize(t.dtype)
            private = keep is not t
            job = TensorJob(data, itemsize, node, keep, probe=probe, where=where, private=private)
            self.jobs.append(job)
        self.tensors += 1
        return node

    def _array(self, a: np.ndarray | np.generic, path: tuple[Any, ...]) -> Node:
        scalar = isinstance(a, np.generic)
        arr = np.asarray(a)
        if (
            arr.dtype.hasobject
            or arr.dtype.fields is not None
            or arr.dtype.kind not in "biufcSUmMV"
        ):
            raise UnsupportedValueError(
                f"{format_path(path)}: numpy dtype {arr.dtype} cannot be stored; "
                "use a numeric, bool, bytes or str dtype"
            )
        if not arr.flags.c_contiguous:
            # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
            arr = arr.copy(order="C")
        node = ArrayNode(
            dtype=arr.dtype.str, shape=list(arr.shape), nbytes=arr.nbytes, chunks=[], scalar=scalar
        )
        if arr.nbytes:
            data = memoryview(arr.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            self.jobs.append(TensorJob(data, float_itemsize(arr.dtype), node, arr))
        self.tensors += 1
        return node

    def _file(self, f: File) -> FileNode:
        node = FileNode(nbytes=len(f), chunks=[])
        if len(f):
            # Bytes are immutable: nothing can change them before they are stored.
            self.jobs.append(TensorJob(memoryview(f.data), None, node, f, private=True))
        return node

    def chunks(self) -> Iterator[tuple[memoryview, int | None]]:
        """Every job's chunks in order: slices of at most ``chunk_size`` bytes.

        Jobs whose chunks are reused yield nothing.
        """
        size = self.chunk_size
        for job in self.jobs:
            if job.reuse is not None:
                continue
            for start in range(0, len(job.data), size):
                yield job.data[start : start + size], job.itemsize

    def pending_bytes(self) -> int:
        """Bytes that must be read (and, for an async commit, copied) to store this state."""
        return sum(len(job.data) for job in self.jobs if job.reuse is None)

    def check_reused(self) -> None:
        """Make sure every reused chunk is still stored (call under the gc lock, after the
        store re-read its pack list: ``has`` then sees what another process's gc left).

        A tensor whose chunks vanished meanwhile (a gc in another process) is
        read again from the live tensor; after :meth:`snapshot` there is none.

        Raises:
            ObjectMissingError: an async commit's reused chunks were collected.
        """
        for job in self.jobs:
            if job.reuse is None:
                continue
            assert self.has is not None  # reuse is only ever set when it is
            if all(self.has(bytes.fromhex(c)) for c in job.reuse):
                continue
            if job.keep is None:
                raise ObjectMissingError(
                    f"{job.where}: the stored chunks of this unchanged tensor were removed by a "
                    "gc in another process while the commit was pending; commit again"
                )
            live = job.keep
            job.data, job.keep = _bytes_of(live)
            job.private = job.keep is not live
            job.itemsize = float_itemsize(job.keep.dtype)
            job.reuse = None

    def snapshot(self, staging: Staging | None = None) -> None:
        """Copy every job's bytes, so later changes to the live tensors cannot leak in.

        Used by asynchronous commits: afterwards the jobs hold no reference to
        the caller's tensors. Buffers come from ``staging`` when given (and go
        back to it for the next snapshot).
        """
        used: list[torch.Tensor] = []
        for job in self.jobs:
            if job.reuse is not None:
                job.keep = None  # unchanged: nothing to copy, and the live tensor is let go
                continue
            if job.private:
                continue  # already a host copy of a GPU or strided tensor
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only source only warns; we never write it
                source = torch.frombuffer(job.data, dtype=torch.uint8)
            copy = staging.take(len(job.data)) if staging is not None else None
            if copy is None:
                copy = torch.empty(len(job.data), dtype=torch.uint8)
            copy.copy_(source)  # torch's copy runs on every core: ~3x a single memcpy
            job.data = memoryview(copy.numpy())  # type: ignore[arg-type]
            job.keep = copy
            job.private = True
            used.append(copy)
        if staging is not None:
            staging.hold(used)

    def assign(self, ids: list[str]) -> None:
        """Fill each job's node with its chunk ids (``ids`` in :meth:`chunks` order)."""
        pos = 0
        for job in self.jobs:
            if job.reuse is not None:
                job.node.chunks.extend(job.reuse)
                self.reused_chunks += len(job.reuse)
                self.reused_bytes += job.node.nbytes
                continue
            count = -(-len(job.data) // self.chunk_size)
            job.node.chunks.extend(ids[pos : pos + count])
            pos += count
            if job.probe is not None and self.unchanged is not None:
                self.unchanged.remember(job.probe, job.node.chunks)
        if self.unchanged is not None:
            self.unchanged.prune()
        self.jobs = []


class Staging:
    """Snapshot buffers kept from one async commit for the next one.

    A fresh buffer costs a page fault per 4 KiB on first write (and far more
    on VMs that hand pages back to the host); a training loop that commits
    the same state every N steps reuses the same buffers instead. Safe because
    a commit waits for the previous one before it snapshots, so the buffers
    handed out are never still being written. Holds one snapshot's worth of
    memory (at most the async budget) between commits.

    Example:
        >>> s = Staging()
        >>> s.hold([torch.empty(8, dtype=torch.uint8)])
        >>> s.take(8) is not None, s.take(8)
        (True, None)
    """

    def __init__(self) -> None:
        self._free: dict[int, list[torch.Tensor]] = {}

    def take(self, nbytes: int) -> torch.Tensor | None:
        """A kept buffer of exactly ``nbytes`` bytes, or None."""
        free = self._free.get(nbytes)
        return free.pop() if free else None

    def hold(self, buffers: list[torch.Tensor]) -> None:
        """Keep ``buffers`` (the last snapshot's) for the next snapshot; drop the rest."""
        self._free = {}
        for buf in buffers:
            self._free.setdefault(buf.numel(), []).append(buf)

    def clear(self) -> None:
        """Let every kept buffer go."""
        self._free = {}


def _bytes_of(t: torch.Tensor) -> tuple[memoryview, torch.Tensor]:
    """A zero-copy byte view of ``t`` on the CPU (copied when on a device or strided)."""
    source = t if t.device.type == "cpu" else t.cpu()
    if not source.is_contiguous():
        # Through as_bits: torch cannot copy some dtypes (int1..7) directly.
        source = as_bits(source).contiguous().view(t.dtype)
    if source.numel() == 0:
        return memoryview(b""), source
    # as_strided, not reshape(-1): a contiguous tensor may still carry any
    # stride on size-1 dims (t[::2] of one element), which view() refuses.
    flat = source.as_strided((source.numel(),), (1,))
    return memoryview(flat.view(torch.uint8).numpy()), source  # type: ignore[arg-type]


def _check_text(text: str, path: tuple[Any, ...], what: str) -> None:
    """Refuse a str that UTF-8 cannot encode (lone surrogates), naming its path."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UnsupportedValueError(
            f"{format_path(path)}: {what} is not valid Unicode ({e.reason} at {e.start}); "
            "store it as bytes"
        ) from None


def _describe(value: Any) -> str:
    if callable(value) and not isinstance(value, type):
        return (
            "a function"
            if type(value).__name__ in ("function", "builtin_function_or_method", "method")
            else f"a callable {type(value).__name__}"
        )
    if isinstance(value, type):
        return f"the class {value.__name__}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _hint(value: Any) -> str:
    if isinstance(value, set | frozenset):
        return "store it as a sorted list"
    return "store its data (tensors, numbers, strings, dicts, lists) or give it state_dict()/load_state_dict()"
