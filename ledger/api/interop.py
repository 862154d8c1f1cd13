"""Coming and going: import other tools' checkpoints, export commits, release to the Hub.

Thin methods over ``ledger.interop`` (import, export) and
``ledger.remotes.release``; what each format holds and carries is
docs/interop.md. This module owns only the facade: no format is read or
written here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from ledger.api.core import LedgerCore
from ledger.progress import ProgressFn

if TYPE_CHECKING:  # each is imported by its method: formats load torch, safetensors, DCP
    from ledger.interop.imports import ImportReport
    from ledger.interop.source import ExportReport
    from ledger.remotes.release import ReleaseResult


class Interop(LedgerCore):
    """Import, export and release of a ledger's commits.

    The protocols these functions take are met by ``Ledger`` (this mixin and
    its siblings together), hence the casts of ``self``.
    """

    def import_checkpoints(
        self,
        path: str | os.PathLike[str],
        *,
        branch: str | None = None,
        onto: str | None = None,
        allow: Iterable[str] = (),
        progress: ProgressFn | None = None,
    ) -> ImportReport:
        """Import the checkpoint(s) at ``path`` as commits, one per checkpoint in step order.

        Reads ``torch.save`` files (``weights_only=True`` only), safetensors
        (single and sharded), a Trainer ``checkpoint-N`` folder or ``output_dir``,
        a Lightning ``.ckpt`` or ``checkpoints/`` folder, an Accelerate
        ``save_state`` folder and a ``torch.distributed.checkpoint`` folder.
        Nothing is executed; bad input leaves the ledger unchanged.

        Args:
            path: a file or directory.
            branch: append onto this branch (created if missing); default: a new
                branch named after the source directory.
            onto: the first imported commit's parent (default: a root commit).
            allow: ``module.Type`` names a ``torch.load(weights_only=True)`` may
                also admit, for types you trust.
            progress: ``progress(done, total, "steps")``: each checkpoint read, then
                each committed (``ledger.progress``).

        Example:
            >>> report = lg.import_checkpoints("runs/gpt2")  # doctest: +SKIP
            >>> [c.step for c in report.commits]  # doctest: +SKIP
            [500, 1000, 1500]
        """
        from ledger.interop.imports import LedgerLike, import_path

        self._check_open()
        return import_path(
            cast(LedgerLike, self), path, branch=branch, onto=onto, allow=allow, progress=progress
        )

    def export(
        self,
        rev: str,
        fmt: str,
        out: str | os.PathLike[str],
        *,
        force: bool = False,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> ExportReport:
        """Write commit ``rev`` in a layout another tool loads (``hf``, ``peft``, ``torch`` ...).

        Args:
            rev: the revision to export.
            fmt: one of ``hf``, ``peft``, ``torch``, ``lightning``, ``dcp``, ``safetensors``.
            out: the folder (or file, for ``torch`` and ``lightning``) to write.
            force: write into a non-empty folder or over an existing file.
            progress: ``progress(done, total, "bytes")`` as the tensors' bytes are
                written: per file, shard or part (``ledger.progress``).
            options: format options, e.g. ``max_shard_size="2GB"`` for ``hf``.

        Example:
            >>> lg.export("best", "hf", "model-best", max_shard_size="2GB")  # doctest: +SKIP
        """
        from ledger.interop.export import export_commit
        from ledger.interop.source import ExportSource

        with self._lock:
            self._check_open()
            return export_commit(
                cast(ExportSource, self),
                rev,
                fmt,
                os.fspath(out),
                force=force,
                progress=progress,
                **options,
            )

    def release(
        self,
        rev: str,
        to: str,
        *,
        revision: str = "main",
        tag: str | None = None,
        public: bool = False,
        hf_token_name: str | None = None,
    ) -> ReleaseResult:
        """Publish commit ``rev`` as an ordinary Hub model repo commit (private unless ``public``).

        Args:
            rev: the revision to release.
            to: ``hf://org/name``.
            revision: the Hub branch to write (created or moved).
            tag: also tag the Hub commit (refused if the tag exists).
            public: create a missing repo public; existing repos keep their visibility.
            hf_token_name: write with the token ``hf auth login`` stored under this name
                (default: the client's active token). It is checked (``whoami``) first.

        Example:
            >>> lg.release("best", "hf://me/gpt2-small", tag="v1")  # doctest: +SKIP
        """
        from ledger.remotes.release import ReleaseReader, release

        with self._lock:
            self._check_open()
            return release(
                cast(ReleaseReader, self),
                rev,
                to,
                revision=revision,
                tag=tag,
                public=public,
                token_name=hf_token_name,
            )
