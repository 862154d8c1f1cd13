"""What a Hub push adds for people without training-ledger: a model card and plain weights.

This module owns the ``README.md`` written at the root of a Hub repo on every
push (from the pushed head commit's metadata: metrics, params, lineage, and how
to load it) and, with ``export_weights``, the head's tensors as plain
safetensors files under ``weights/``. It reads only scrubbed commit metadata
(docs/metadata.md) and must never put anything else (environment, tokens)
into the card.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger.history.records import Commit
from ledger.remotes.base import check_key

if TYPE_CHECKING:
    from ledger.api.core import LedgerCore


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def model_card(
    lg: LedgerCore, commit_id: str, repo_id: str, weights: list[str] | None = None
) -> str:
    """The ``README.md`` for ``repo_id`` describing commit ``commit_id``.

    Example:
        >>> print(model_card(lg, lg.head.id, "me/run")[:3])  # doctest: +SKIP
        ---
    """
    c = Commit.from_record(commit_id, lg.record(commit_id))
    lines = [
        "---",
        "library_name: training-ledger",
        "tags:",
        "- training-ledger",
        "- checkpoint",
        "---",
        "",
        f"# {repo_id}",
        "",
        "Training checkpoints kept with [training-ledger](https://pypi.org/project/training-ledger/):",
        "each commit is a content-addressed snapshot of the whole training state (weights,",
        "optimizer, schedulers, RNG, data position). The ledger lives under `ledger/`.",
        "",
        "## Latest pushed commit",
        "",
        "| field | value |",
        "|---|---|",
        f"| commit | `{c.id}` |",
        f"| branch | {_cell(c.branch or '-')} |",
        f"| step | {c.step if c.step is not None else '-'} |",
        f"| epoch | {c.epoch if c.epoch is not None else '-'} |",
        f"| time | {c.time:%Y-%m-%d %H:%M:%S} UTC |",
        f"| message | {_cell(c.message or '-')} |",
    ]
    for title, table in (("Metrics", c.metrics), ("Hyper-parameters", c.params)):
        if table:
            lines += ["", f"### {title}", "", "| name | value |", "|---|---|"]
            lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(table.items())]
    lines += ["", "### Lineage", ""]
    lines += [f"- parent: `{p}`" for p in c.parents] or ["- first commit"]
    git = c.meta.get("code", {}).get("git") if isinstance(c.meta.get("code"), dict) else None
    if isinstance(git, dict) and git.get("commit"):
        lines.append(
            f"- code: git `{_cell(git['commit'])}`" + (" (dirty)" if git.get("dirty") else "")
        )
    data = c.meta.get("data")
    if isinstance(data, dict):
        lines += [f"- data {_cell(k)}: {_cell(v)}" for k, v in sorted(data.items())]
    lines += [
        "",
        "## Use it",
        "",
        "```python",
        "from ledger import Ledger",
        "",
        f'lg = Ledger.clone("hf://{repo_id}", "ckpt", depth=1)  # the latest state, history on demand',
        'state = lg.checkout("HEAD")',
        "```",
    ]
    if weights:
        lines += [
            "",
            "Plain safetensors copies of this commit's tensors (no training-ledger needed):",
            "",
        ]
        lines += [f"- `{w}`" for w in weights]
    return "\n".join(lines) + "\n"


def export_weights(lg: LedgerCore, commit_id: str, tmp_dir: Path) -> list[tuple[str, Path]]:
    """Write commit ``commit_id`` as safetensors files; (path in repo, local file) pairs.

    One ``weights/<key>.safetensors`` per top-level key holding tensors, plus
    ``weights/metadata.json`` (the layout of ``ledger checkout --out``).

    Example:
        >>> export_weights(lg, lg.head.id, Path("/tmp"))  # doctest: +SKIP
        [('weights/model.safetensors', PosixPath('/tmp/.../model.safetensors')), ...]
    """
    from ledger.cli.export import write_safetensors_dir

    out = Path(tempfile.mkdtemp(prefix=".weights-", dir=tmp_dir))
    commit = Commit.from_record(commit_id, lg.record(commit_id))
    state = lg.checkout(commit_id)  # type: ignore[attr-defined]
    written = write_safetensors_dir(state, commit, out, force=True)
    names = [*written.files, "metadata.json"]
    return [(check_key(f"weights/{n}"), out / n) for n in names]
