"""A part of a commit taken now and stored later: flattened, and copied when it fits the budget.

This module owns :class:`Snapshot`, what :meth:`ledger.Ledger.snapshot` hands
out: a value flattened on the caller's thread (so an error names its path at
once) whose tensor bytes were copied into the ledger's reused snapshot
buffers, as ``commit(blocking=False)`` copies them, so the live objects can
change while :meth:`ledger.Stage.write` stores it from another thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ledger.errors import UnsupportedValueError
from ledger.manifest import Node

if TYPE_CHECKING:
    from ledger.state.flatten import Flattener


class Snapshot:
    """A flattened value waiting for :meth:`ledger.Stage.write` (see :meth:`ledger.Ledger.snapshot`).

    ``copied`` says whether its bytes were copied (the value fitted the
    ledger's ``async_budget``); when it is False the snapshot still reads the
    live tensors, so store it before they change.

    Example:
        >>> snap = lg.snapshot({"model": model})  # doctest: +SKIP
        >>> with lg.stage() as st:  # doctest: +SKIP
        ...     part = st.write(snap)
    """

    def __init__(self, flat: Flattener, node: Node, nbytes: int, copied: bool) -> None:
        self._flat = flat
        self._node: Node | None = node
        self.nbytes = nbytes
        self.copied = copied

    def take(self) -> tuple[Flattener, Node]:
        """The flattener and node, once: a snapshot's chunk ids are filled in by one write.

        Raises:
            UnsupportedValueError: the snapshot was already written.
        """
        if self._node is None:
            raise UnsupportedValueError(
                "this snapshot was already written by a stage; take a new one with lg.snapshot()"
            )
        node, self._node = self._node, None
        return self._flat, node
