"""What a Hub push adds for people without training-ledger: a model card and plain weights.

This module owns the ``README.md`` written at the root of a Hub repo on every
push (built with ``huggingface_hub.ModelCard``/``ModelCardData`` from the
pushed head commit's metadata: metrics, params, lineage, and how to load it)
and, with ``export_weights``, the head's tensors as plain safetensors files
under ``weights/`` (written by ``ledger.interop.export``). It reads only scrubbed
commit metadata (docs/metadata.md) and must never put anything else
(environment, tokens) into the card.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ledger.history.needs import HistoryReader
from ledger.history.records import Commit
from ledger.interop.export import METADATA_FILE, CommitReader, export_safetensors
from ledger.remotes.base import check_key

LIBRARY = "training-ledger"
TAGS = ["training-ledger", "checkpoint"]
WEIGHTS_DIR = "weights"

# Jinja, rendered by ModelCard.from_template; every value is escaped by _cell first.
TEMPLATE = """---
{{ card_data }}
---

# {{ repo_id }}

Training checkpoints kept with [training-ledger](https://pypi.org/project/training-ledger/):
each commit is a content-addressed snapshot of the whole training state (weights,
optimizer, schedulers, RNG, data position). The ledger lives under `ledger/`.

## Latest pushed commit

| field | value |
|---|---|
{% for k, v in fields %}| {{ k }} | {{ v }} |
{% endfor %}
{%- for title, rows in tables %}
### {{ title }}

| name | value |
|---|---|
{% for k, v in rows %}| {{ k }} | {{ v }} |
{% endfor %}
{%- endfor %}
### Lineage

{% for line in lineage %}- {{ line }}
{% endfor %}
## Use it

```python
from ledger import Ledger

lg = Ledger.clone("hf://{{ repo_id }}", "ckpt", depth=1)  # the latest state, history on demand
state = lg.checkout("HEAD")
```
{% if weights %}
Plain safetensors copies of this commit's tensors (no training-ledger needed):

{% for w in weights %}- `{{ w }}`
{% endfor %}{% endif %}"""


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text.replace("|", "\\|").replace("\n", " ")[:200]


def _lineage(c: Commit) -> list[str]:
    lines = [f"parent: `{p}`" for p in c.parents] or ["first commit"]
    code = c.meta.get("code")
    git = code.get("git") if isinstance(code, dict) else None
    if isinstance(git, dict) and git.get("commit"):
        lines.append(
            f"code: git `{_cell(git['commit'])}`" + (" (dirty)" if git.get("dirty") else "")
        )
    data = c.meta.get("data")
    if isinstance(data, dict):
        lines += [f"data {_cell(k)}: {_cell(v)}" for k, v in sorted(data.items())]
    return lines


def model_card(
    records: HistoryReader, commit_id: str, repo_id: str, weights: list[str] | None = None
) -> str:
    """The ``README.md`` for ``repo_id`` describing commit ``commit_id``.

    Example:
        >>> print(model_card(lg, lg.head.id, "me/run")[:3])  # doctest: +SKIP
        ---
    """
    from huggingface_hub import ModelCard, ModelCardData

    c = Commit.from_record(commit_id, records.record(commit_id))
    fields = [
        ("commit", f"`{c.id}`"),
        ("branch", _cell(c.branch or "-")),
        ("step", c.step if c.step is not None else "-"),
        ("epoch", c.epoch if c.epoch is not None else "-"),
        ("time", f"{c.time:%Y-%m-%d %H:%M:%S} UTC"),
        ("message", _cell(c.message or "-")),
    ]
    tables = [
        (title, [(_cell(k), _cell(v)) for k, v in sorted(table.items())])
        for title, table in (("Metrics", c.metrics), ("Hyper-parameters", c.params))
        if table
    ]
    card = ModelCard.from_template(
        ModelCardData(library_name=LIBRARY, tags=TAGS),
        template_str=TEMPLATE,
        repo_id=repo_id,
        fields=fields,
        tables=tables,
        lineage=_lineage(c),
        weights=weights or [],
    )
    return str(card)


def export_weights(reader: CommitReader, commit_id: str, tmp_dir: Path) -> list[tuple[str, Path]]:
    """Write commit ``commit_id`` as safetensors files; (path in repo, local file) pairs.

    One ``weights/<key>.safetensors`` per top-level key holding tensors, plus
    ``weights/metadata.json`` (the layout of ``ledger checkout --out``).

    Example:
        >>> export_weights(lg, lg.head.id, Path("/tmp"))  # doctest: +SKIP
        [('weights/model.safetensors', PosixPath('/tmp/.../model.safetensors')), ...]
    """
    out = Path(tempfile.mkdtemp(prefix=".weights-", dir=tmp_dir))
    written = export_safetensors(reader, commit_id, out, force=True)
    names = [*written.files, METADATA_FILE]
    return [(check_key(f"{WEIGHTS_DIR}/{n}"), out / n) for n in names]
