"""Reading a commit back: ``checkout`` (new objects) and ``restore`` (into live objects).

This module owns the user-facing read paths; how nodes become tensors (and
how bytes go straight into live memory) is ``ledger.state.build``'s.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

from ledger.api.core import LedgerCore
from ledger.api.inputs import (
    _mover,
    _to_cuda,
)
from ledger.errors import (
    UnsupportedValueError,
)
from ledger.history.records import (
    Commit,
)
from ledger.state.build import Builder, finalize, parse_paths
from ledger.state.restore import Restorer
from ledger.state.rng import RNG_KEY, restore_rng


class Restoring(LedgerCore):
    """Checkout and restore of a ledger's commits."""

    def checkout(
        self,
        rev: str = "HEAD",
        map_location: str | torch.device | None = "cpu",
        paths: list[str] | None = None,
        mmap: bool = False,
    ) -> dict[Any, Any]:
        """Read a commit's state as a nested dict of tensors and plain values (moves nothing).

        Args:
            rev: the revision to read.
            map_location: device for every tensor; None puts each back where it
                was saved when that device exists (else on the CPU).
            paths: read only these parts, e.g. ``["model"]`` or ``["optim/state"]``;
                only their chunks are read.
            mmap: CPU tensors whose chunks lie uncompressed and in order in one
                pack are mapped from it copy-on-write instead of copied into new
                memory (the rest is read as usual). Every byte is still hashed
                before this returns; writes to the tensors stay private. The
                bytes live in the page cache, so the kernel may drop clean pages
                and read them from disk again later, unhashed: use the default
                where a disk may rot under a long-lived process.

        Example:
            >>> weights = lg.checkout("best", paths=["model"])["model"]  # doctest: +SKIP
            >>> frozen = lg.checkout("base", mmap=True)  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            cid, manifest = self.manifest(rev)
            builder = Builder(self.store, self.pool, cid, manifest.chunk_size)
            builder.pin = _to_cuda(map_location)
            builder.mmap = mmap and not builder.pin
            builder.index(manifest.root, ())
            tree = builder.build(manifest.root, (), parse_paths(paths))
            builder.load()
            out = finalize(tree, _mover(map_location, builder))
            if builder.pin:
                torch.cuda.synchronize()
            return out

    def restore(
        self,
        state: MutableMapping[Any, Any],
        rev: str = "HEAD",
        strict: bool = True,
        rng: bool = True,
    ) -> Commit:
        """Load a commit into live objects in place: modules, optimizers, tensors, values.

        Every key, shape and dtype is checked before anything changes; plain
        values are assigned back into ``state``.

        Args:
            state: the same kind of mapping that was committed.
            rev: the revision to restore.
            strict: fail on keys missing from either side.
            rng: also set the global RNGs back.

        Raises:
            StateMismatchError: keys, shapes or dtypes differ (nothing was changed).
            CorruptionError: a chunk fails its hash check. Chunks are read straight
                into the live tensors, so they may then be partly loaded: restore
                another commit into them (the error names the tensor and commit).

        Example:
            >>> lg.restore({"model": model, "optim": opt, "step": 0})  # doctest: +SKIP
        """
        with self._lock:
            self._check_open()
            if not isinstance(state, MutableMapping):
                raise UnsupportedValueError(
                    f"restore needs a mutable mapping such as a dict, not {type(state).__name__}"
                )
            cid, manifest = self.manifest(rev)
            builder = Builder(self.store, self.pool, cid, manifest.chunk_size)
            builder.index(manifest.root, ())
            restorer = Restorer(builder, strict)
            restorer.plan_root(state, manifest.root, {RNG_KEY})
            rng_tree = None
            if rng and RNG_KEY in manifest.root.keys:
                rng_node = manifest.root.values[manifest.root.keys.index(RNG_KEY)]
                rng_tree = builder.build(rng_node, (RNG_KEY,))
            builder.load()
            restorer.apply()
            if rng_tree is not None:
                restore_rng(finalize(rng_tree, lambda t: t))
            return Commit.from_record(cid, self.record(cid))
