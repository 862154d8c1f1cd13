"""Reading a ``torch.distributed.checkpoint`` directory without executing anything.

This module owns DCP import: the ``.metadata`` file is a pickle, read here by
:class:`MetadataUnpickler`, whose ``find_class`` admits only DCP's own
metadata types (``torch/distributed/checkpoint/metadata.py`` and
``filesystem._StorageInfo`` at torch 2.13) and the few torch values they hold
(dtypes, ``torch.Size``, layouts, memory formats, the checkpoint path), never
``FileSystemReader.read_metadata``. Each stored item is then read from its
``.distcp`` file at the recorded offset with ``torch.load(weights_only=True)``
(the same call DCP makes for tensors; DCP's own planner unpickles non-tensor
items with ``weights_only=False``, which we never do), chunks are placed into
full tensors, and the flattened keys are nested back by the planner's paths.
"""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import filesystem as dcp_fs
from torch.distributed.checkpoint import metadata as dcp_md

from ledger.interop.imports_read import ImportRefusedError, ImportSourceError, load_torch

METADATA = ".metadata"

_DCP_TYPES: dict[tuple[str, str], Any] = {
    (cls.__module__, cls.__name__): cls
    for cls in (
        dcp_md.Metadata,
        dcp_md.TensorStorageMetadata,
        dcp_md.BytesStorageMetadata,
        dcp_md.ChunkStorageMetadata,
        dcp_md.TensorProperties,
        dcp_md._MEM_FORMAT_ENCODING,
        dcp_md.StorageMeta,
        dcp_md.MetadataIndex,
        dcp_fs._StorageInfo,
    )
}
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)
_PATHS = {"PosixPath", "PurePosixPath", "PureWindowsPath"}


class MetadataUnpickler(pickle.Unpickler):
    """A pickle reader for DCP's ``.metadata``: every global outside DCP's metadata types is refused.

    Example:
        >>> import io, pickle
        >>> MetadataUnpickler(io.BytesIO(pickle.dumps(torch.Size([2])))).load()
        torch.Size([2])
    """

    def find_class(self, module: str, name: str) -> Any:
        """The class a pickle names, when it is one DCP's metadata is made of."""
        if (module, name) in _DCP_TYPES:
            return _DCP_TYPES[(module, name)]
        if module == "torch" and name == "Size":
            return torch.Size
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":
            return torch.serialization._get_layout  # a lookup of a layout by name
        if module == "pathlib" and name in _PATHS:
            import pathlib

            return getattr(pathlib, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not a DCP metadata type")


def read_metadata(directory: Path) -> dcp_md.Metadata:
    """The ``Metadata`` of a DCP directory, through :class:`MetadataUnpickler`.

    Raises:
        ImportRefusedError: the pickle names a type that is not DCP metadata.
        ImportSourceError: the file is missing, truncated or not DCP metadata.
    """
    path = directory / METADATA
    try:
        value = MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        if "is not a DCP metadata type" in str(e):
            raise ImportRefusedError(
                f"{path} names {str(e).split(' is not')[0]}, which is not one of DCP's metadata "
                "types; a DCP checkpoint's .metadata never holds it, so it was not read",
                path=str(path),
            ) from None
        raise ImportSourceError(f"{path} is damaged or truncated: {e}", path=str(path)) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as e:
        raise ImportSourceError(
            f"{path} is damaged or truncated: {type(e).__name__}: {e}", path=str(path)
        ) from None
    if not isinstance(value, dcp_md.Metadata):
        raise ImportSourceError(
            f"{path} holds a {type(value).__name__}, not DCP Metadata", path=str(path)
        )
    return value


def read_dcp(directory: Path, allow: Sequence[Any] = ()) -> dict[str, Any]:
    """The state a DCP directory holds, nested as it was saved (tensors whole, on the CPU).

    Raises:
        ImportRefusedError: an item holds a type ``weights_only=True`` refuses.
        ImportSourceError: the metadata or a data file is missing, truncated or inconsistent.
    """
    md = read_metadata(directory)
    storage: dict[Any, Any] = md.storage_data or {}
    by_fqn: dict[str, list[tuple[Any, Any]]] = {}
    for index, info in storage.items():
        by_fqn.setdefault(index.fqn, []).append((index, info))
    flat: dict[str, Any] = {}
    for fqn, item in md.state_dict_metadata.items():
        pieces = by_fqn.get(fqn, [])
        if not pieces:
            raise ImportSourceError(
                f"{directory / METADATA} lists {fqn!r} but no file holds it", path=str(directory)
            )
        if isinstance(item, dcp_md.BytesStorageMetadata):
            flat[fqn] = load_torch(directory, allow, data=_read(directory, pieces[0][1]))
            continue
        full = torch.empty(tuple(item.size), dtype=item.properties.dtype)
        for index, info in pieces:
            chunk = load_torch(directory, (), data=_read(directory, info))
            if not isinstance(chunk, torch.Tensor):
                raise ImportSourceError(
                    f"{fqn!r} in {directory} is not a tensor", path=str(directory)
                )
            offsets = tuple(index.offset or ())
            where = tuple(slice(o, o + n) for o, n in zip(offsets, chunk.shape, strict=True))
            full[where] = chunk
        flat[fqn] = full
    return _nest(flat, md.planner_data if isinstance(md.planner_data, dict) else {})


def _read(directory: Path, info: Any) -> bytes:
    name = str(info.relative_path)
    if Path(name).name != name or name in ("", ".", ".."):
        raise ImportSourceError(
            f"{directory / METADATA} points outside its directory ({name!r})", path=str(directory)
        )
    if getattr(info, "transform_descriptors", None):
        raise ImportSourceError(
            f"{directory / name} is stored with transforms {list(info.transform_descriptors)}; "
            "only plain torch.save items are imported",
            path=str(directory / name),
        )
    path = directory / name
    try:
        with path.open("rb") as f:
            f.seek(int(info.offset))
            data = f.read(int(info.length))
    except OSError as e:
        raise ImportSourceError(f"{path} cannot be read: {e}", path=str(path)) from None
    if len(data) != int(info.length):
        raise ImportSourceError(
            f"{path} is truncated: an item needs bytes {info.offset}..{info.offset + info.length}",
            path=str(path),
        )
    return data


_DIGITS = re.compile(r"\d+")


def _nest(flat: dict[str, Any], paths: dict[str, Any]) -> dict[str, Any]:
    """Flattened DCP keys back into nested dicts/lists by the planner's recorded paths."""
    root: dict[Any, Any] = {}
    for fqn, value in flat.items():
        path = list(paths.get(fqn, (fqn,)))
        node: Any = root
        for i, key in enumerate(path):
            last = i == len(path) - 1
            nxt = path[i + 1] if not last else None
            if isinstance(node, list):
                while len(node) <= key:
                    node.append(None)
                if last:
                    node[key] = value
                else:
                    if node[key] is None:
                        node[key] = [] if isinstance(nxt, int) else {}
                    node = node[key]
            else:
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, [] if isinstance(nxt, int) else {})
    return _optimizer_ids(root)


def _optimizer_ids(value: Any) -> Any:
    """An optimizer state dict's ``state`` keys back to the ints DCP's flattening made strings."""
    if isinstance(value, dict):
        out = {k: _optimizer_ids(v) for k, v in value.items()}
        state = out.get("state")
        numbered = isinstance(state, dict) and all(
            isinstance(k, str) and _DIGITS.fullmatch(k) for k in state
        )
        if "param_groups" in out and isinstance(state, dict) and numbered:
            out["state"] = {int(k): v for k, v in state.items()}
        return out
    if isinstance(value, list):
        return [_optimizer_ids(v) for v in value]
    return value
