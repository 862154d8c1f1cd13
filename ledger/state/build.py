"""Build values back from manifest nodes: tensors, arrays and the nested tree around them.

This module owns reading a manifest's bytes back: it allocates each tensor
once (or takes a live tensor to read into), reads its chunks straight into
that memory (in parallel, hash-checked by the store, or mapped from a pack),
and returns the nested tree a checkout gives. Loading into live objects is
``ledger.state.restore``'s, built on :class:`Builder`. It must never execute
anything stored, and it treats every manifest field as untrusted.
"""

from __future__ import annotations

import bisect
import math
import mmap
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import torch

from ledger.errors import CorruptionError, LedgerError
from ledger.manifest import (
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
from ledger.objects.store import Located, ObjectStore, raw_run
from ledger.state.dtypes import numpy_dtype, torch_dtype
from ledger.state.files import File
from ledger.state.flatten import format_path

Path_ = tuple[Any, ...]
Selection = dict[str, "Selection | None"]


class PathNotFoundError(LedgerError):
    """A ``paths=`` entry names nothing in the commit."""


def parse_paths(paths: list[str] | None) -> Selection | None:
    """``["model", "optim/state"]`` -> a selection tree (None selects everything).

    Example:
        >>> parse_paths(["model", "optim/state"])
        {'model': None, 'optim': {'state': None}}
    """
    if paths is None:
        return None
    sel: Selection = {}
    for p in paths:
        parts = [x for x in p.split("/") if x]
        if not parts:
            return None
        cur = sel
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part in cur and cur[part] is None:
                break
            if last:
                cur[part] = None
            else:
                nxt = cur.setdefault(part, {})
                assert nxt is not None
                cur = nxt
    return sel


class Builder:
    """Turns nodes into values; tensor bytes are read in one parallel batch by :meth:`load`."""

    def __init__(
        self, store: ObjectStore, pool: ThreadPoolExecutor, commit_id: str, chunk_size: int
    ) -> None:
        self.store = store
        self.pool = pool
        self.commit = commit_id[:12]
        self.chunk_size = chunk_size
        self.reads: list[tuple[bytes, memoryview, str]] = []
        self.by_id: dict[int, torch.Tensor] = {}
        self.nodes_by_id: dict[int, tuple[TensorNode, Path_]] = {}
        # Storages of live tensors that chunks are read straight into.
        self.targets: set[int] = set()
        # Read into page-locked buffers when tensors will be copied on to a GPU.
        self.pin = False
        # Map raw chunks of the packs instead of reading them (checkout(mmap=True)).
        self.mmap = False
        self.maps: dict[str, mmap.mmap] = {}
        # Per pack, the sorted, disjoint byte ranges already handed out as
        # mapped tensors: identical bytes dedup to one place in a pack, and two
        # tensors must never share memory the manifest does not alias.
        self.taken: dict[str, list[tuple[int, int]]] = {}
        self.checks: list[tuple[bytes, memoryview, str, str]] = []
        self.devices: dict[int, str] = {}

    def index(self, node: Node, path: Path_) -> None:
        """Record every tensor node by id, so aliases resolve outside a selection."""
        if isinstance(node, TensorNode):
            self.nodes_by_id.setdefault(node.id, (node, path))
        elif isinstance(node, DictNode):
            for k, v in zip(node.keys, node.values, strict=False):
                self.index(v, (*path, k))
        elif isinstance(node, ListNode | TupleNode):
            for i, v in enumerate(node.items):
                self.index(v, (*path, i))
        elif isinstance(node, StatefulNode):
            self.index(node.state, path)

    def _where(self, path: Path_) -> str:
        return f"{format_path(path)} in commit {self.commit}"

    def _buffer(
        self,
        nbytes: int,
        chunks: list[str],
        path: Path_,
        into: torch.Tensor | None = None,
        align: int = 1,
    ) -> torch.Tensor:
        where = self._where(path)
        size = self.chunk_size
        if nbytes < 0 or len(chunks) != math.ceil(nbytes / size):
            raise CorruptionError(f"{where}: {len(chunks)} chunks do not cover {nbytes} bytes")
        oids = []
        found: list[Located | None] = []
        for i, cid in enumerate(chunks):
            try:
                oid = bytes.fromhex(cid)
            except ValueError:
                raise CorruptionError(f"{where}: chunk id {cid!r} is not hex") from None
            located = self.store.locate(oid)
            expect = min(size, nbytes - i * size)
            if located is not None and located[1].raw_length != expect:
                raise CorruptionError(
                    f"{where}: chunk {i} is {located[1].raw_length} bytes, expected {expect}"
                )
            oids.append(oid)
            found.append(located)
        mapped = self._mapped(nbytes, found, align) if into is None and self.mmap else None
        if mapped is not None:
            buf, pack = mapped
        else:
            buf = (
                into
                if into is not None
                else torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pin)
            )
        view = memoryview(buf.numpy())  # type: ignore[arg-type]
        for i, oid in enumerate(oids):
            chunk = view[i * size : (i + 1) * size]
            if mapped is not None:
                self.checks.append((oid, chunk, where, pack))  # in place: only hashed
            else:
                self.reads.append((oid, chunk, where))
        return buf

    def _mapped(
        self, nbytes: int, found: list[Located | None], align: int
    ) -> tuple[torch.Tensor, str] | None:
        """The chunks' bytes as a copy-on-write view of their pack (and its name), or None.

        Only where the chunks lie back to back, uncompressed, in one pack, at an
        offset aligned for the dtype; their hashes are checked in :meth:`load`.
        """
        run = raw_run(found)
        if run is None or run[1] % align:
            return None
        pack, offset = run
        mm = self.maps.get(pack)
        if mm is None:
            try:
                mm = self.maps[pack] = self.store.map_pack(pack)
            except (FileNotFoundError, ValueError, OSError):
                return None  # gone under a concurrent gc, or not mappable: read it
        if offset + nbytes > len(mm) or not self._take(pack, offset, nbytes):
            return None
        return torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=offset), pack

    def _take(self, pack: str, offset: int, nbytes: int) -> bool:
        """Claim ``[offset, offset + nbytes)`` of ``pack`` for one tensor; False if any is taken."""
        if nbytes == 0:
            return True
        ranges = self.taken.setdefault(pack, [])
        end = offset + nbytes
        i = bisect.bisect_left(ranges, (offset, end))
        if i > 0 and ranges[i - 1][1] > offset:
            return False
        if i < len(ranges) and ranges[i][0] < end:
            return False
        ranges.insert(i, (offset, end))
        return True

    def tensor_into(self, node: TensorNode | AliasNode, live: torch.Tensor, path: Path_) -> bool:
        """Queue ``node``'s chunks to be read straight into ``live``'s memory, if it can take them.

        ``live`` must be a contiguous CPU tensor of the node's dtype and shape;
        returns False (nothing queued) otherwise.
        """
        if isinstance(node, AliasNode):
            target = self.nodes_by_id.get(node.of)
            if target is None:
                return False
            node = target[0]
        if (
            live.device.type != "cpu"
            or not live.is_contiguous()
            or node.nbytes == 0
            or str(live.dtype).removeprefix("torch.") != node.dtype
            or list(live.shape) != node.shape
        ):
            return False
        # as_strided, not reshape(-1): a contiguous tensor may carry any stride on
        # size-1 dims (one element of t[::4]), which view(torch.uint8) refuses.
        dest = live.detach().as_strided((live.numel(),), (1,)).view(torch.uint8)
        if dest.numel() != node.nbytes:
            return False
        queued = self.by_id.get(node.id) if node.id >= 0 else None
        if queued is not None and queued.data_ptr() == live.data_ptr():
            return True  # tied (an alias into the same memory): read once, not twice at once
        self._buffer(node.nbytes, node.chunks, path, into=dest)
        if node.id >= 0:
            self.by_id.setdefault(node.id, live)
        self.targets.add(live.untyped_storage().data_ptr())
        return True

    def tensor(self, node: TensorNode, path: Path_) -> torch.Tensor:
        """A CPU tensor whose bytes will be filled by :meth:`load`."""
        if node.id in self.by_id:
            return self.by_id[node.id]
        dtype = torch_dtype(node.dtype, self._where(path))
        if any(d < 0 for d in node.shape) or math.prod(node.shape) * dtype.itemsize != node.nbytes:
            raise CorruptionError(
                f"{self._where(path)}: shape {node.shape} of {node.dtype} is not {node.nbytes} bytes"
            )
        buf = self._buffer(node.nbytes, node.chunks, path, align=dtype.itemsize)
        t = (
            buf.view(dtype).reshape(node.shape)
            if node.nbytes
            else torch.empty(node.shape, dtype=dtype)
        )
        if node.id >= 0:
            self.by_id[node.id] = t
        self.devices[id(t)] = node.device
        return t

    def alias(self, node: AliasNode, path: Path_) -> torch.Tensor:
        if node.of not in self.by_id:
            target = self.nodes_by_id.get(node.of)
            if target is None:
                raise CorruptionError(f"{self._where(path)}: alias of unknown tensor {node.of}")
            self.tensor(*target)
        return self.by_id[node.of]

    def array(self, node: ArrayNode, path: Path_) -> np.ndarray | np.generic:
        dtype = numpy_dtype(node.dtype, self._where(path))
        if any(d < 0 for d in node.shape) or math.prod(node.shape) * dtype.itemsize != node.nbytes:
            raise CorruptionError(
                f"{self._where(path)}: shape {node.shape} of {node.dtype} is not {node.nbytes} bytes"
            )
        buf = self._buffer(node.nbytes, node.chunks, path, align=dtype.itemsize)
        arr = buf.numpy().view(dtype).reshape(node.shape)
        return _Scalar(arr) if node.scalar else arr  # type: ignore[return-value]

    def build(self, node: Node, path: Path_, sel: Selection | None = None) -> Any:
        """The value of ``node`` (containers recursively), restricted to ``sel``."""
        if isinstance(node, ValueNode):
            return node.value
        if isinstance(node, BytesNode):
            return node.data
        if isinstance(node, BigIntNode):
            return int(node.text)
        if isinstance(node, TensorNode):
            return self.tensor(node, path)
        if isinstance(node, AliasNode):
            return self.alias(node, path)
        if isinstance(node, ArrayNode):
            return self.array(node, path)
        if isinstance(node, FileNode):
            return _FileSpec(self._buffer(node.nbytes, node.chunks, path))
        if isinstance(node, GeneratorNode):
            return _GeneratorSpec(
                node.device, self.tensor(node.state, (*path, "<generator state>"))
            )
        if isinstance(node, StatefulNode):
            return self.build(node.state, path, sel)
        if isinstance(node, DictNode):
            out: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values, strict=True):
                if sel is not None and str(key) not in sel:
                    continue
                out[key] = self.build(value, (*path, key), None if sel is None else sel[str(key)])
            _check_selected(sel, [str(k) for k in node.keys], path)
            return out
        if isinstance(node, ListNode | TupleNode):
            items = []
            for i, value in enumerate(node.items):
                if sel is not None and str(i) not in sel:
                    continue
                items.append(self.build(value, (*path, i), None if sel is None else sel[str(i)]))
            _check_selected(sel, [str(i) for i in range(len(node.items))], path)
            return tuple(items) if isinstance(node, TupleNode) else items
        raise CorruptionError(f"{self._where(path)}: unknown node {type(node).__name__}")

    def load(self) -> None:
        """Read every queued chunk into its tensor, in parallel, hash-checked."""
        reads, self.reads = self.reads, []
        checks, self.checks = self.checks, []
        futures = [self.pool.submit(self.store.check, *job) for job in checks]
        try:
            self.store.read_many(reads, self.pool)
        finally:
            wait(futures)  # no check left running over buffers the caller may drop
        for f in futures:
            f.result()


class _Scalar:
    """Placeholder for a numpy scalar until its bytes are loaded."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr


class _FileSpec:
    """Placeholder for a :class:`File` until its bytes are loaded."""

    def __init__(self, buf: torch.Tensor) -> None:
        self.buf = buf


class _GeneratorSpec:
    """Placeholder for a torch.Generator until its state bytes are loaded."""

    def __init__(self, device: str, state: torch.Tensor) -> None:
        self.device = device
        self.state = state


def _check_selected(sel: Selection | None, keys: list[str], path: Path_) -> None:
    if sel is None:
        return
    missing = [k for k in sel if k not in keys]
    if missing:
        raise PathNotFoundError(
            f"{format_path(path)} has no entry {missing[0]!r}; it has: {', '.join(keys[:20])}"
        )


def finalize(value: Any, to_device: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Replace placeholders once bytes are loaded and move tensors (keeping shared ones shared)."""
    memo: dict[int, Any] = {}

    def walk(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            if id(v) not in memo:
                memo[id(v)] = to_device(v)
            return memo[id(v)]
        if isinstance(v, _Scalar):
            return v.arr[()]
        if isinstance(v, _FileSpec):
            return File(v.buf.numpy().tobytes())
        if isinstance(v, _GeneratorSpec):
            gen = torch.Generator(device=v.device if device_available(v.device) else "cpu")
            gen.set_state(v.state)
            return gen
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, tuple):
            return tuple(walk(x) for x in v)
        return v

    return walk(value)


def device_available(device: str) -> bool:
    """Whether tensors can be placed on ``device`` in this process."""
    if device.startswith("cuda"):
        return torch.cuda.is_available()
    return device == "cpu"


def to_cuda(map_location: str | torch.device | None) -> bool:
    """Whether ``map_location`` puts tensors on a CUDA device that exists here."""
    if map_location is None or not torch.cuda.is_available():
        return False
    return torch.device(map_location).type == "cuda"


def mover(map_location: str | torch.device | None, builder: Builder) -> Callable[[Any], Any]:
    """The function that moves each built CPU tensor to where ``map_location`` says.

    ``None`` puts each tensor back on the device it was saved from, where that
    device exists here (else it stays on the CPU).
    """
    if map_location is None:

        def home(t: torch.Tensor) -> torch.Tensor:
            saved = builder.devices.get(id(t), "cpu")
            return t.to(saved) if saved != "cpu" and device_available(saved) else t

        return home
    device = torch.device(map_location)
    if device.type == "cpu":
        return lambda t: t
    # Pinned (page-locked) source buffers make these copies asynchronous DMA;
    # checkout synchronizes once before handing the tensors back.
    return lambda t: t.to(device, non_blocking=t.is_pinned())
