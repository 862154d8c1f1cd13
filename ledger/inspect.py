"""Reading history for people: show, diff, du and the Arrow table of commits.

This module owns the typed reports that ``Ledger.show/diff/du/table`` return
(msgspec Structs, so the CLI's ``--json`` encodes them as they are). It reads
through the Ledger's plumbing and never writes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import msgspec

from ledger.errors import CommitExpiredError
from ledger.history.records import Commit
from ledger.history.refs import BRANCH_PREFIX
from ledger.history.tree import chunk_ids, iter_leaves, leaf_value, tensor_table
from ledger.history.usage import usage_by_branch
from ledger.manifest import ArrayNode, FileNode, TensorNode

if TYPE_CHECKING:  # torch and pyarrow load only where a tensor is read or a table built
    import pyarrow as pa
    import torch

    from ledger.api.core import LedgerCore as Ledger


class TensorInfo(msgspec.Struct):
    """One tensor of a commit."""

    path: str
    dtype: str
    shape: list[int]
    nbytes: int
    chunks: int


class ShowReport(msgspec.Struct):
    """``ledger show``: a commit's metadata plus a summary of its state."""

    commit: Commit
    tensors: list[TensorInfo]
    values: dict[str, Any]
    logical_bytes: int
    expired: str | None = None


class FieldChange(msgspec.Struct):
    """One metadata field in both commits (``same`` tells whether it differs)."""

    key: str
    a: Any
    b: Any
    same: bool


class MetricDelta(msgspec.Struct):
    """A metric in both commits, with ``b - a`` when both have it."""

    name: str
    a: float | None
    b: float | None
    delta: float | None


class TensorChange(msgspec.Struct):
    """A tensor present in both commits with different bytes, dtype or shape."""

    path: str
    dtype: str
    shape: list[int]
    bytes_changed: int
    rel_l2: float | None
    max_abs: float | None


class TensorDiff(msgspec.Struct):
    """Tensors added, removed, changed, and how many are unchanged."""

    added: list[str]
    removed: list[str]
    changed: list[TensorChange]
    unchanged: int
    unavailable: str | None = None


class DiffReport(msgspec.Struct):
    """``ledger diff A B``."""

    a: Commit
    b: Commit
    metrics: list[MetricDelta]
    params: list[FieldChange]
    meta: list[FieldChange]
    tensors: TensorDiff
    #: The state's other leaves (plain values, bytes, files) by ``/`` path, RNG left out;
    #: a file compares by its chunks, shown as its size. Empty when a side's state expired.
    values: list[FieldChange] = []


class BranchUsage(msgspec.Struct):
    """Space used by one branch's history."""

    branch: str
    commits: int
    logical_bytes: int
    unique_bytes: int
    exclusive_bytes: int


class DuReport(msgspec.Struct):
    """``ledger du``: logical vs stored bytes and the ratios between them.

    ``logical_bytes``: what every commit's state holds, summed; ``unique_bytes``:
    raw bytes of distinct chunks; ``stored_bytes``: pack files on disk (chunks,
    manifests, commit records, blobs); ``chunk_stored_bytes``: what the chunks
    take after their codecs. ``dedup_ratio`` = logical / unique;
    ``compression_ratio`` = unique / chunk_stored.
    """

    commits: int
    logical_bytes: int
    unique_bytes: int
    stored_bytes: int
    chunk_stored_bytes: int
    dedup_ratio: float
    compression_ratio: float
    branches: list[BranchUsage]


def show(lg: Ledger, rev: str) -> ShowReport:
    """The report behind ``ledger show REV``."""
    commit = lg.get(rev)
    try:
        _, manifest = lg.manifest(commit.id)
    except CommitExpiredError as e:  # its metadata remains; its state does not
        return ShowReport(commit=commit, tensors=[], values={}, logical_bytes=0, expired=str(e))
    tensors = [
        TensorInfo(
            path=p, dtype=n.dtype, shape=list(n.shape), nbytes=n.nbytes, chunks=len(n.chunks)
        )
        for p, n in tensor_table(manifest.root).items()
        if not p.startswith("__rng__")
    ]
    values = {
        path: leaf_value(node)
        for path, node in iter_leaves(manifest.root)
        if not path.startswith("__rng__")
        and type(node).__name__ in ("ValueNode", "BytesNode", "BigIntNode", "FileNode")
    }
    return ShowReport(
        commit=commit, tensors=tensors, values=values, logical_bytes=sum(t.nbytes for t in tensors)
    )


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    else:
        out[prefix] = d
    return out


def _fields(a: dict[str, Any], b: dict[str, Any]) -> list[FieldChange]:
    fa, fb = _flatten(a), _flatten(b)
    keys = sorted(fa.keys() | fb.keys())
    return [FieldChange(key=k, a=fa.get(k), b=fb.get(k), same=fa.get(k) == fb.get(k)) for k in keys]


def diff(lg: Ledger, rev_a: str, rev_b: str) -> DiffReport:
    """The report behind ``ledger diff A B`` (tensor statistics read both sides' bytes)."""
    a, b = lg.get(rev_a), lg.get(rev_b)
    names = sorted(a.metrics.keys() | b.metrics.keys())
    metrics = []
    for name in names:
        va, vb = a.metrics.get(name), b.metrics.get(name)
        delta = vb - va if va is not None and vb is not None else None
        metrics.append(MetricDelta(name=name, a=va, b=vb, delta=delta))
    meta_a = {"step": a.step, "epoch": a.epoch, "message": a.message, **a.meta}
    meta_b = {"step": b.step, "epoch": b.epoch, "message": b.message, **b.meta}
    return DiffReport(
        a=a,
        b=b,
        metrics=metrics,
        params=_fields(a.params, b.params),
        meta=_fields(meta_a, meta_b),
        tensors=_tensor_diff(lg, a.id, b.id),
        values=_value_diff(lg, a.id, b.id),
    )


_PLAIN = ("ValueNode", "BytesNode", "BigIntNode", "FileNode")


def _plain_leaves(lg: Ledger, commit_id: str) -> dict[str, tuple[Any, Any]]:
    """Each plain leaf's path -> (what it compares by, what is shown)."""
    _, manifest = lg.manifest(commit_id)
    out: dict[str, tuple[Any, Any]] = {}
    for path, node in iter_leaves(manifest.root):
        if path.startswith("__rng__") or type(node).__name__ not in _PLAIN:
            continue
        key = tuple(node.chunks) if isinstance(node, FileNode) else leaf_value(node)
        out[path] = (key, leaf_value(node))
    return out


def _value_diff(lg: Ledger, a_id: str, b_id: str) -> list[FieldChange]:
    try:
        va, vb = _plain_leaves(lg, a_id), _plain_leaves(lg, b_id)
    except CommitExpiredError:
        return []
    missing = (None, None)
    return [
        FieldChange(
            key=p,
            a=va.get(p, missing)[1],
            b=vb.get(p, missing)[1],
            same=va.get(p, missing) == vb.get(p, missing),
        )
        for p in sorted(va.keys() | vb.keys())
    ]


def _tensor_diff(lg: Ledger, a_id: str, b_id: str) -> TensorDiff:
    try:
        _, ma = lg.manifest(a_id)
        _, mb = lg.manifest(b_id)
    except CommitExpiredError as e:
        return TensorDiff(added=[], removed=[], changed=[], unchanged=0, unavailable=str(e))
    ta = {p: n for p, n in tensor_table(ma.root).items() if not p.startswith("__rng__")}
    tb = {p: n for p, n in tensor_table(mb.root).items() if not p.startswith("__rng__")}
    added = sorted(tb.keys() - ta.keys())
    removed = sorted(ta.keys() - tb.keys())
    changed_paths = [
        p
        for p in ta.keys() & tb.keys()
        if (ta[p].dtype, ta[p].shape, ta[p].chunks) != (tb[p].dtype, tb[p].shape, tb[p].chunks)
    ]
    unchanged = len(ta.keys() & tb.keys()) - len(changed_paths)
    from ledger.state.build import Builder

    builder_a = Builder(lg.store, lg.pool, a_id, ma.chunk_size)
    builder_b = Builder(lg.store, lg.pool, b_id, mb.chunk_size)
    # Read-only comparison: map raw chunks from the packs (hashed all the same)
    # instead of holding private copies of both sides' changed tensors.
    builder_a.mmap = builder_b.mmap = True
    pairs: list[tuple[str, torch.Tensor | None, torch.Tensor | None, TensorNode | ArrayNode]] = []
    for p in sorted(changed_paths):
        na, nb = ta[p], tb[p]
        if (
            isinstance(na, TensorNode)
            and isinstance(nb, TensorNode)
            and na.dtype == nb.dtype
            and na.shape == nb.shape
        ):
            pairs.append((p, builder_a.tensor(na, (p,)), builder_b.tensor(nb, (p,)), nb))
        else:
            pairs.append((p, None, None, nb))
    builder_a.load()
    builder_b.load()
    changed = []
    for p, xa, xb, nb in pairs:
        if xa is None or xb is None:
            changed.append(
                TensorChange(
                    path=p,
                    dtype=nb.dtype,
                    shape=list(nb.shape),
                    bytes_changed=nb.nbytes,
                    rel_l2=None,
                    max_abs=None,
                )
            )
            continue
        changed.append(_compare(p, xa, xb, nb))
    return TensorDiff(added=added, removed=removed, changed=changed, unchanged=unchanged)


def _compare(
    path: str, xa: torch.Tensor, xb: torch.Tensor, node: TensorNode | ArrayNode
) -> TensorChange:
    import torch

    ua = xa.reshape(-1).view(torch.uint8) if xa.numel() else xa.reshape(-1)
    ub = xb.reshape(-1).view(torch.uint8) if xb.numel() else xb.reshape(-1)
    bytes_changed = int((ua != ub).sum().item()) if xa.numel() else 0
    rel_l2 = max_abs = None
    if xa.numel() and (
        xa.dtype.is_floating_point
        or xa.dtype.is_complex
        or (not xa.dtype.is_signed and xa.dtype != torch.bool)
        or xa.dtype.is_signed
    ):
        try:
            da = xa.to(torch.complex128 if xa.is_complex() else torch.float64)
            db = xb.to(da.dtype)
            d = (db - da).abs()
            max_abs = float(d.max().item())
            norm_a = float(da.abs().pow(2).sum().sqrt().item())
            norm_d = float(d.pow(2).sum().sqrt().item())
            rel_l2 = norm_d / norm_a if norm_a else (math.inf if norm_d else 0.0)
        except (RuntimeError, TypeError):
            pass
    return TensorChange(
        path=path,
        dtype=node.dtype,
        shape=list(node.shape),
        bytes_changed=bytes_changed,
        rel_l2=rel_l2,
        max_abs=max_abs,
    )


def du(lg: Ledger) -> DuReport:
    """The report behind ``ledger du``: one pass over the commits and the chunks' index entries."""
    lg.store.refresh()
    commit_ids = [oid.hex() for oid in lg.store.ids("commit")]
    refs_by_commit: dict[str, set[str]] = {}
    logical = 0
    expired = lg.refs.state().expired  # read once: the log is not re-read per commit
    for cid in commit_ids:
        rec = lg.record(cid)
        logical += rec.stats.logical_bytes
        refs_by_commit[cid] = set()
        if cid in expired:
            continue
        try:
            manifest = lg.manifest_by_id(rec.manifest, cid)
        except Exception:  # an unreadable manifest is verify's business, not du's
            continue
        refs_by_commit[cid] = chunk_ids(manifest.root)
    chunk_size: dict[str, int] = {}
    chunk_stored = 0
    for _, entry in lg.store.entries("chunk"):
        chunk_size[entry.id.hex()] = entry.raw_length
        chunk_stored += entry.length
    unique = sum(chunk_size.values())
    stored = sum((lg.store.packs_dir / f"{p}.pack").stat().st_size for p in lg.store.pack_names())
    return DuReport(
        commits=len(commit_ids),
        logical_bytes=logical,
        unique_bytes=unique,
        stored_bytes=stored,
        chunk_stored_bytes=chunk_stored,
        dedup_ratio=logical / unique if unique else 1.0,
        compression_ratio=unique / chunk_stored if chunk_stored else 1.0,
        branches=[
            BranchUsage(**msgspec.structs.asdict(u))
            for u in usage_by_branch(
                lg.branches(),
                lambda c: lg.record(c).parents,
                lambda c: lg.record(c).stats.logical_bytes,
                refs_by_commit,
                chunk_size,
            )
        ],
    )


def table(lg: Ledger) -> pa.Table:
    """One row per commit: id, branch, parents, step, epoch, time, message, metrics.*, params.*."""
    import pyarrow as pa

    lg.store.refresh()
    ids = [oid.hex() for oid in lg.store.ids("commit")]
    commits = sorted((Commit.from_record(c, lg.record(c)) for c in ids), key=lambda c: c.time)
    tips = {
        v: k[len(BRANCH_PREFIX) :]
        for k, v in lg.refs.snapshot().items()
        if k.startswith(BRANCH_PREFIX)
    }
    rows: dict[str, list[Any]] = {
        "id": [c.id for c in commits],
        "branch": [c.branch for c in commits],
        "parents": [list(c.parents) for c in commits],
        "step": [c.step for c in commits],
        "epoch": [c.epoch for c in commits],
        "time": [c.time for c in commits],
        "message": [c.message for c in commits],
        "is_tip_of": [tips.get(c.id) for c in commits],
    }
    columns: dict[str, pa.Array] = {
        "id": pa.array(rows["id"], pa.string()),
        "branch": pa.array(rows["branch"], pa.string()),
        "parents": pa.array(rows["parents"], pa.list_(pa.string())),
        "step": pa.array(rows["step"], pa.int64()),
        "epoch": pa.array(rows["epoch"], pa.int64()),
        "time": pa.array(rows["time"], pa.timestamp("us", tz="UTC")),
        "message": pa.array(rows["message"], pa.string()),
    }
    for name in sorted({k for c in commits for k in c.metrics}):
        columns[f"metrics.{name}"] = pa.array([c.metrics.get(name) for c in commits], pa.float64())
    flat_params = [_flatten(c.params) for c in commits]
    for name in sorted({k for p in flat_params for k in p}):
        values = [p.get(name) for p in flat_params]
        columns[f"params.{name}"] = _param_column(values)
    return pa.table(columns)


def _param_column(values: list[Any]) -> pa.Array:
    import pyarrow as pa

    kinds = {type(v) for v in values if v is not None}
    if kinds <= {bool}:
        return pa.array(values, pa.bool_())
    if kinds <= {int}:
        return pa.array(values, pa.int64())
    if kinds <= {int, float}:
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    if kinds <= {str}:
        return pa.array(values, pa.string())
    return pa.array(
        [None if v is None else msgspec.json.encode(v).decode() for v in values], pa.string()
    )
