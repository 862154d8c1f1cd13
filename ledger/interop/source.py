"""What every export reads (a commit through a Protocol) and where it may write.

This module owns the reader Protocols the export formats take (``ledger.Ledger``
satisfies them structurally), the report an export returns, and the checks on
its destination: a directory that is new or empty (or ``force``), a file that
does not exist (or ``force``), never inside the ledger itself. It never
writes a byte of the export.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import msgspec

from ledger.errors import ExportError
from ledger.history.needs import HistoryReader
from ledger.history.records import Commit
from ledger.progress import Tally


class CommitReader(HistoryReader, Protocol):
    """Reads a commit's record and its whole state (``ledger.Ledger`` is one)."""

    def checkout(
        self, rev: str, *, paths: list[str] | None = None, mmap: bool = False
    ) -> dict[Any, Any]:
        """The state of the commit ``rev`` names (or only ``paths`` of it), as a nested dict."""
        ...


class ExportSource(CommitReader, Protocol):
    """A :class:`CommitReader` that also resolves revisions and has a directory."""

    @property
    def root(self) -> Path:
        """The ledger's directory (nothing is ever exported into it)."""
        ...

    def resolve(self, rev: str) -> str:
        """The full commit id ``rev`` names."""
        ...


class ExportJob(NamedTuple):
    """One export's input: the checked-out state, its commit, where to write, ``force``, and
    the tally of tensor bytes written (writers call :meth:`wrote` as they write)."""

    state: Mapping[Any, Any]
    commit: Commit
    out: Path
    force: bool = False
    tally: Tally | None = None

    def wrote(self, nbytes: int) -> None:
        """Count ``nbytes`` more bytes of the export written (for its ``progress=``)."""
        if self.tally is not None:
            self.tally.add(nbytes)

    @property
    def rev(self) -> str:
        """The commit's short id, to name it in messages."""
        return self.commit.id[:12]


EXPORT_FORMATS = ("hf", "peft", "torch", "lightning", "dcp", "safetensors")
"""Every format ``ledger.interop.export.export_commit`` writes (here, where no torch is loaded)."""


class ExportReport(msgspec.Struct):
    """What an export wrote: the commit, the format, and every file (relative to ``out``)."""

    commit: str
    format: str
    out: str
    files: list[str]
    bytes: int


def outside(root: Path, out: Path) -> None:
    """Refuse an ``out`` inside the ledger's directory ``root``.

    Example:
        >>> outside(Path("/runs/ckpt"), Path("/runs/export"))
    """
    r, o = root.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise ExportError(f"{out} is inside the ledger {root}; export to a directory outside it")


def prepare_dir(out: Path, *, force: bool) -> None:
    """Make ``out`` a directory to export into: new, or empty, or ``force``.

    Raises:
        ExportError: ``out`` is a file, or a directory with files in it (without ``force``).

    Example:
        >>> prepare_dir(Path("export"), force=False)  # doctest: +SKIP
    """
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; this format writes a directory, choose a new path")
    if out.exists() and any(out.iterdir()) and not force:
        raise ExportError(f"{out} is not empty; choose a new directory or pass force=True")
    out.mkdir(parents=True, exist_ok=True)


def prepare_file(out: Path, *, force: bool) -> None:
    """Check that the file ``out`` may be written (absent, or ``force`` and not a directory).

    Example:
        >>> prepare_file(Path("model.pt"), force=False)  # doctest: +SKIP
    """
    if out.is_dir():
        raise ExportError(f"{out} is a directory; this format writes one file, give a file path")
    if out.exists() and not force:
        raise ExportError(f"{out} exists; choose a new file name or pass force=True")
    out.parent.mkdir(parents=True, exist_ok=True)


def readable(path: Path) -> None:
    """Give a written file the permissions the umask allows (safetensors makes them 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    path.chmod(0o666 & ~mask)


def report(commit_id: str, fmt: str, out: Path) -> ExportReport:
    """The :class:`ExportReport` of what lies at ``out`` after an export (a file or a tree).

    Example:
        >>> report(c.id, "torch", Path("model.pt")).files  # doctest: +SKIP
        ['model.pt']
    """
    if out.is_file():
        return ExportReport(commit_id, fmt, str(out), [out.name], out.stat().st_size)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    return ExportReport(commit_id, fmt, str(out), [str(p.relative_to(out)) for p in files], size)
