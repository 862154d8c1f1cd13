"""``ledger import``: other tools' checkpoints into a ledger, one commit each, on a branch.

This module owns the import as a whole: find the checkpoints under a path
(:mod:`ledger.interop.imports_layouts`), hash their files, skip those a
previous import of the same files already committed, read every new one
(nothing executed: :mod:`ledger.interop.imports_read`), and only when all of
them read cleanly commit them, in step order, through the ledger's staging
session (``Ledger.stage()``; docs/api.md "Plumbing"). Bad input therefore
leaves the ledger unchanged. Each commit's ``meta.data.import`` records the
source path, the checkpoint's format and every file's size and blake3 hash;
re-importing compares those hashes.

It is a layer below the api: it works on the small protocols below and never
imports ``ledger.api`` or ``ledger.cli``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import msgspec

from ledger.errors import ImportBranchError
from ledger.history.records import Commit
from ledger.history.refs import BRANCH_PREFIX, HEAD, SYMREF_PREFIX, check_ref_name
from ledger.interop.imports_formats import load
from ledger.interop.imports_layouts import Loaded, Source, find_checkpoints
from ledger.interop.imports_read import (
    ImportRefusedError,
    ImportSourceError,
    hash_file,
    resolve_allowed,
)
from ledger.objects.hashing import hash_bytes
from ledger.progress import ProgressFn, tell
from ledger.state.flatten import Flattener

__all__ = [
    "ImportBranchError",
    "ImportRefusedError",
    "ImportReport",
    "ImportSourceError",
    "ImportedCheckpoint",
    "import_path",
]

DATA_KEY = "import"
"""Each imported commit's ``meta["data"][DATA_KEY]``: source, format, checkpoint, files, fingerprint."""


class StageLike(AbstractContextManager["StageLike"], Protocol):
    """The part of ``ledger.api.staging.Stage`` an import commits through."""

    refs: Any

    def commit(
        self,
        tree: Mapping[str, Any],
        message: str | None = None,
        *,
        step: int | None = None,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        branch: str | None = None,
        summary: Mapping[Any, Any] | None = None,
    ) -> Commit: ...


class LedgerLike(Protocol):
    """What an import needs of a ``Ledger``: its branches, history and a staging session."""

    def branches(self) -> dict[str, str]: ...

    def resolve(self, rev: str) -> str: ...

    def log(self, rev: str = "HEAD") -> Iterator[Commit]: ...

    def stage(self) -> StageLike: ...


class ImportedCheckpoint(msgspec.Struct):
    """One checkpoint of an import: where it came from and the commit it became (or why not)."""

    name: str
    format: str
    step: int | None
    commit: str | None
    source_bytes: int
    stored_bytes: int = 0
    skipped: str | None = None  # why no commit was made ("already imported as <id>")
    not_carried: list[str] = []  # files of the checkpoint read by nobody (pickles)


class ImportReport(msgspec.Struct):
    """What an import did: the branch, one entry per checkpoint, bytes before and after.

    ``source_bytes`` is the size of the checkpoints imported now; ``stored_bytes``
    what the ledger grew by for them (chunks written after deduplication).
    """

    source: str
    branch: str
    created_branch: bool
    checkpoints: list[ImportedCheckpoint]
    source_bytes: int
    stored_bytes: int

    @property
    def commits(self) -> list[str]:
        """The ids of the commits made, in order."""
        return [c.commit for c in self.checkpoints if c.commit and c.skipped is None]


def default_branch(path: Path) -> str:
    """The branch an import of ``path`` makes without ``branch=``: the directory's name, cleaned.

    Example:
        >>> default_branch(Path("/runs/gpt2 finetune/checkpoints"))
        'checkpoints'
        >>> default_branch(Path("/runs/my run/last.ckpt"))
        'my-run'
    """
    name = path.name if path.is_dir() or not path.suffix else path.parent.name
    cleaned = re.sub(r"[^A-Za-z0-9._/-]+", "-", name).strip("-./") or "import"
    if not cleaned[0].isalnum():
        cleaned = "import-" + cleaned
    return check_ref_name(cleaned, "branch")


def import_path(
    ledger: LedgerLike,
    path: str | os.PathLike[str],
    *,
    branch: str | None = None,
    onto: str | None = None,
    allow: Iterable[str] = (),
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Import the checkpoint(s) at ``path`` as commits, one per checkpoint in step order.

    ``progress(done, total, "steps")`` counts each checkpoint read, then each committed
    (a skipped one counts at the end), ``ledger.progress``.

    Args:
        ledger: an open ``Ledger``.
        path: a checkpoint file or directory, or a directory of many (a
            Trainer ``output_dir``, a Lightning ``checkpoints/``).
        branch: append onto this branch (created when missing); default: a new
            branch named after the source directory (refused if it exists,
            unless every commit on it was imported from this same source).
        onto: the parent of the first commit when the branch is new; default:
            it is a root commit.
        allow: ``module.Type`` names to pass to ``torch.serialization.safe_globals``
            for files ``weights_only=True`` refuses; only for files you trust.

    Returns:
        An :class:`ImportReport`; checkpoints whose files a commit on the
        branch already imported are listed as skipped.

    Raises:
        ImportRefusedError: a file holds a type ``weights_only=True`` refuses (nothing imported).
        ImportSourceError: unknown layout, truncated/damaged file, missing shard (nothing imported).
        ImportBranchError: the default branch exists, or ``onto`` was given for an existing branch.

    Example:
        >>> report = import_path(lg, "out/", branch="finetune")  # doctest: +SKIP
        >>> report.commits[-1] == lg.resolve("finetune")  # doctest: +SKIP
        True
    """
    source = Path(path).absolute()
    sources = find_checkpoints(source)
    allowed = resolve_allowed(allow)
    name = check_ref_name(branch, "branch") if branch is not None else default_branch(source)
    tip = ledger.branches().get(name)
    imported = _imported(ledger, tip)
    if tip is not None and branch is None and any(s != str(source) for s, _ in imported.values()):
        raise ImportBranchError(
            f"branch {name!r} exists and holds commits not imported from {source}; pass "
            f"branch={name!r} to append onto it, or another branch name",
            branch=name,
        )
    if tip is not None and onto is not None:
        raise ImportBranchError(
            f"onto={onto!r} only applies to a new branch; {name!r} exists, so the import "
            "appends onto its tip. Pass another branch name to start one on that revision",
            branch=name,
            revision=onto,
        )
    parent = ledger.resolve(onto) if onto is not None else None
    # Read and check everything first: a bad file fails the import before anything is written.
    entries: list[tuple[Source, ImportedCheckpoint, Loaded | None, dict[str, Any]]] = []
    seen: dict[str, str] = {}
    steps = 2 * len(sources)
    for done, src in enumerate(sources):
        tell(progress, done, steps, "steps")
        files = [(f, *hash_file(f)) for f in src.files]
        fingerprint = _fingerprint(src, files)
        size = sum(s for _, s, _ in files)
        entry = ImportedCheckpoint(src.name, src.kind, src.order, None, size)
        prior = imported.get(fingerprint)
        if prior is not None or fingerprint in seen:
            if prior is not None:
                entry.commit, entry.step = prior[1].id, prior[1].step
                entry.skipped = f"already imported as {prior[1].id[:12]} (the same files)"
            else:
                entry.skipped = f"the same files as {seen[fingerprint]}"
            entries.append((src, entry, None, {}))
            continue
        seen[fingerprint] = src.name
        loaded = load(src, allowed)
        Flattener(1 << 22).flatten(loaded.tree, ())  # refuses what a commit cannot store, now
        entry.step = loaded.step
        entry.not_carried = loaded.skipped
        data = {
            DATA_KEY: {
                "source": str(source),
                "checkpoint": src.name,
                "format": src.kind,
                "files": [[_rel(f, src), s, h] for f, s, h in files],
                "fingerprint": fingerprint,
            }
        }
        entries.append((src, entry, loaded, data))
    created = tip is None
    todo = [(src, entry, ld, data) for src, entry, ld, data in entries if ld is not None]
    _commit_all(ledger, name, parent, todo, progress, (len(sources), steps))
    tell(progress, steps, steps, "steps")
    made = [entry for _, entry, _, _ in todo]
    return ImportReport(
        source=str(source),
        branch=name,
        created_branch=created and bool(made),
        checkpoints=[entry for _, entry, _, _ in entries],
        source_bytes=sum(e.source_bytes for e in made),
        stored_bytes=sum(e.stored_bytes for e in made),
    )


def _commit_all(
    ledger: LedgerLike,
    branch: str,
    parent: str | None,
    todo: Sequence[tuple[Source, ImportedCheckpoint, Loaded, dict[str, Any]]],
    progress: ProgressFn | None = None,
    counted: tuple[int, int] = (0, 0),
) -> None:
    """One commit per loaded checkpoint onto ``branch``, in one staging session.

    ``progress`` is told ``counted[0] + i`` of ``counted[1]`` before the i-th commit.
    """
    if not todo:
        return
    with ledger.stage() as stage:
        for i, (src, entry, loaded, data) in enumerate(todo):
            tell(progress, counted[0] + i, counted[1], "steps")
            inner = stage.refs
            if ledger_tip_missing(stage, branch):
                stage.refs = _FirstParent(inner, branch, parent)
            try:
                commit = stage.commit(
                    loaded.tree,
                    f"import {src.kind} {src.name}",
                    step=loaded.step,
                    epoch=loaded.epoch,
                    metrics=loaded.metrics,
                    params=loaded.params,
                    data=data,
                    branch=branch,
                )
            finally:
                stage.refs = inner
            entry.commit = commit.id
            entry.stored_bytes = commit.stats.bytes_written
            loaded.tree = {}  # let the tensors go


def ledger_tip_missing(stage: StageLike, branch: str) -> bool:
    """Whether ``branch`` has no commit yet (as the stage's ref store sees it now)."""
    return BRANCH_PREFIX + branch not in stage.refs.snapshot()


class _FirstParent:
    """The stage's ref store, showing HEAD at the first imported commit's parent (None: a root).

    ``Stage.commit`` makes a new branch's first commit a child of HEAD's
    commit; an import's first commit is a root, or a child of ``onto``. Only
    the snapshot the commit reads its parent from is changed; every ref move
    still goes to the real store as a compare-and-swap.
    """

    def __init__(self, inner: Any, branch: str, parent: str | None) -> None:
        self.inner = inner
        self.branch = branch
        self.parent = parent

    def snapshot(self) -> dict[str, str]:
        refs = dict(self.inner.snapshot())
        if BRANCH_PREFIX + self.branch not in refs:
            refs[HEAD] = self.parent or f"{SYMREF_PREFIX}{BRANCH_PREFIX}{self.branch}"
        return refs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _imported(ledger: LedgerLike, tip: str | None) -> dict[str, tuple[str, Commit]]:
    """Fingerprint -> (source path, commit) of every commit reachable from ``tip``.

    A commit that was not imported counts under a fingerprint of its own, with no source.
    """
    out: dict[str, tuple[str, Commit]] = {}
    for commit in ledger.log(tip) if tip is not None else ():
        info = _import_info(commit)
        key = str(info.get("fingerprint", f"not-imported:{commit.id}"))
        out.setdefault(key, (str(info.get("source")), commit))
    return out


def _import_info(commit: Commit) -> dict[str, Any]:
    data = commit.meta.get("data")
    info = data.get(DATA_KEY) if isinstance(data, dict) else None
    return info if isinstance(info, dict) else {}


def _rel(path: Path, src: Source) -> str:
    base = src.path if src.path.is_dir() else src.path.parent
    return str(path.relative_to(base))


def _fingerprint(src: Source, files: Sequence[tuple[Path, int, str]]) -> str:
    """blake3 over the checkpoint's format and its files' relative names, sizes and hashes."""
    lines = [src.kind] + [f"{_rel(f, src)}\t{s}\t{h}" for f, s, h in sorted(files)]
    return hash_bytes("\n".join(lines).encode()).hex()
