"""What the Hub shows people without training-ledger: model cards and plain weights.

This module owns the ``README.md`` written at the root of a Hub repo on every
push (built with ``huggingface_hub.ModelCard``/``ModelCardData`` from the
pushed head commit's metadata: metrics, params, lineage, and how to load it),
the card of a release (:func:`release_card`: the same facts plus base model,
datasets and the files the release wrote, for ``ledger release``), and the
``hf`` layout both write (:func:`write_hf`: what ``save_pretrained`` writes,
so ``from_pretrained`` loads it; under ``weights/`` on a push with
``export_weights``). It reads only scrubbed commit metadata (docs/metadata.md)
and must never put anything else (environment, tokens) into a card.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from ledger.errors import ExportError
from ledger.history.needs import HistoryReader
from ledger.history.records import Commit
from ledger.interop.export import METADATA_FILE, CommitReader, export_safetensors
from ledger.interop.export_hf import write_hf as _write_hf
from ledger.interop.source import ExportJob
from ledger.remotes.base import check_key
from ledger.state.build import PathNotFoundError

LIBRARY = "training-ledger"
TAGS = ["training-ledger", "checkpoint"]
WEIGHTS_DIR = "weights"

# Jinja, rendered by ModelCard.from_template; every value is escaped by _cell first.
# The commit's fields, metrics and hyper-parameters, and lineage (both cards show them).
FACTS = """| field | value |
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
{% endfor %}"""

TEMPLATE = (
    """---
{{ card_data }}
---

# {{ repo_id }}

Training checkpoints kept with [training-ledger](https://pypi.org/project/training-ledger/):
each commit is a content-addressed snapshot of the whole training state (weights,
optimizer, schedulers, RNG, data position). The ledger lives under `ledger/`.

## Latest pushed commit

"""
    + FACTS
    + """
## Use it

```python
from ledger import Ledger

lg = Ledger.clone("hf://{{ repo_id }}", "ckpt", depth=1)  # the latest state, history on demand
state = lg.checkout("HEAD")
```
{% if weights %}
This commit's weights as plain files (no training-ledger needed){% if "weights/config.json" in weights %},
loadable with `from_pretrained("{{ repo_id }}", subfolder="weights")`{% endif %}:

{% for w in weights %}- `{{ w }}`
{% endfor %}{% endif %}"""
)


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


def _facts(c: Commit) -> tuple[list[tuple[str, Any]], list[tuple[str, list[tuple[str, str]]]]]:
    """The card's commit fields, and its metrics and hyper-parameter tables."""
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
    return fields, tables


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
    fields, tables = _facts(c)
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


RELEASE_TEMPLATE = (
    """---
{{ card_data }}
---

# {{ repo_id }}

Released with [training-ledger](https://pypi.org/project/training-ledger/) from commit
`{{ commit }}`. The files are the plain `save_pretrained` layout: no training-ledger
is needed to load them.

```python
from transformers import {{ auto_class }}

model = {{ auto_class }}.from_pretrained("{{ repo_id }}", revision="{{ revision }}")
```

## Commit

"""
    + FACTS
)

#: The card's metadata key holding the release's commit, lineage and files.
RELEASE_KEY = "training_ledger"
_BASE_KEYS = ("base_model", "model_name_or_path", "base_model_name_or_path")


def base_model(c: Commit) -> str | None:
    """The base model a commit names: ``base_model`` (or ``model_name_or_path``) in its
    params or metadata, when it is a Hub id (``org/name``), else None.

    Example:
        >>> base_model(lg.head)  # doctest: +SKIP
        'openai-community/gpt2'
    """
    for table in (c.params, c.meta):
        for key in _BASE_KEYS:
            value = table.get(key)
            if isinstance(value, str) and value.count("/") <= 1 and value and " " not in value:
                return value
    return None


def datasets(c: Commit) -> list[str]:
    """The dataset names of a commit's ``data`` lineage: ``data["datasets"]`` (names),
    ``data["dataset"]`` or ``data["name"]``.

    Example:
        >>> lg.commit(state, data={"dataset": "wikitext"}); datasets(lg.head)  # doctest: +SKIP
        ['wikitext']
    """
    data = c.meta.get("data")
    if not isinstance(data, dict):
        return []
    found = data.get("datasets", data.get("dataset", data.get("name")))
    names = found if isinstance(found, list) else [found]
    return sorted({n for n in names if isinstance(n, str) and n})


_AUTO = (
    ("ForCausalLM", "AutoModelForCausalLM"),
    ("LMHeadModel", "AutoModelForCausalLM"),
    ("ForMaskedLM", "AutoModelForMaskedLM"),
    ("ForSequenceClassification", "AutoModelForSequenceClassification"),
    ("ForTokenClassification", "AutoModelForTokenClassification"),
    ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
    ("ForImageClassification", "AutoModelForImageClassification"),
)


def auto_class(config: bytes | None) -> str:
    """The transformers ``Auto*`` class that loads a model with this ``config.json``.

    Example:
        >>> auto_class(b'{"architectures": ["GPT2LMHeadModel"]}')
        'AutoModelForCausalLM'
    """
    try:
        names = json.loads(config or b"{}").get("architectures") or []
    except (ValueError, AttributeError):
        names = []
    for suffix, cls in _AUTO:
        if names and isinstance(names[0], str) and names[0].endswith(suffix):
            return cls
    return "AutoModel"


def release_card(
    records: HistoryReader,
    commit_id: str,
    repo_id: str,
    revision: str,
    files: list[str],
    config: bytes | None = None,
) -> str:
    """The ``README.md`` of a release of ``commit_id`` to ``repo_id``, loaded at ``revision``
    (the tag of the release, or its branch); ``config`` (the ``config.json``)
    picks the ``Auto*`` class the card's snippet loads it with.

    Its metadata (``ModelCardData``) carries ``base_model``, ``datasets``,
    ``library_name: transformers`` when the files hold a ``config.json``, and
    under ``training_ledger`` the commit, its parents, branch and the files the
    release wrote (the next release there deletes those it no longer writes).

    Example:
        >>> print(release_card(lg, lg.head.id, "org/model", "main", ["config.json"])[:3])  # doctest: +SKIP
        ---
    """
    from huggingface_hub import ModelCard, ModelCardData

    c = Commit.from_record(commit_id, records.record(commit_id))
    lineage: Any = {"commit": c.id, "parents": list(c.parents), "branch": c.branch, "files": files}
    data = ModelCardData(
        library_name="transformers" if "config.json" in files else None,
        tags=TAGS,
        base_model=base_model(c),
        datasets=datasets(c) or None,
        training_ledger=lineage,  # RELEASE_KEY
    )
    fields, tables = _facts(c)
    card = ModelCard.from_template(
        data,
        template_str=RELEASE_TEMPLATE,
        repo_id=repo_id,
        revision=revision,
        auto_class=auto_class(config),
        commit=c.id,
        fields=fields,
        tables=tables,
        lineage=[f"commit: `{c.id}`", *_lineage(c)],
    )
    return str(card)


def released_files(card_text: str) -> list[str]:
    """The files an earlier release's card says it wrote (none for any other card).

    Example:
        >>> released_files(release_card(lg, lg.head.id, "org/m", "main", ["a.json"]))  # doctest: +SKIP
        ['a.json']
    """
    from huggingface_hub import ModelCard

    try:
        meta = ModelCard(card_text, ignore_metadata_errors=True).data.to_dict()
    except Exception:  # a hand-written card we cannot read: we wrote nothing there
        return []
    lineage = meta.get(RELEASE_KEY)
    files = lineage.get("files") if isinstance(lineage, dict) else None
    return [f for f in files if isinstance(f, str)] if isinstance(files, list) else []


def export_weights(reader: CommitReader, commit_id: str, tmp_dir: Path) -> list[tuple[str, Path]]:
    """Write commit ``commit_id`` for a push's ``weights/``; (path in repo, local file) pairs.

    A state with a ``model`` gets the ``hf`` layout (:func:`write_hf`), so
    ``from_pretrained("user/repo", subfolder="weights")`` loads it; any other
    state keeps the ``ledger checkout --out`` layout (one
    ``<key>.safetensors`` per top-level key holding tensors, plus ``metadata.json``).

    Example:
        >>> export_weights(lg, lg.head.id, Path("/tmp"))  # doctest: +SKIP
        [('weights/config.json', PosixPath('/tmp/.../config.json')), ...]
    """
    out = Path(tempfile.mkdtemp(prefix=".weights-", dir=tmp_dir))
    try:
        names = write_hf(reader, commit_id, out)
    except ExportError:
        written = export_safetensors(reader, commit_id, out, force=True)
        names = [*written.files, METADATA_FILE]
    return [(check_key(f"{WEIGHTS_DIR}/{n}"), out / n) for n in names]


def write_hf(reader: CommitReader, commit_id: str, out: Path) -> list[str]:
    """Write commit ``commit_id`` in the ``hf`` (``save_pretrained``) layout into ``out``.

    The layout is ``ledger.interop.export_hf``'s (the commit's ``hf_files`` and
    its ``model`` weights, sharded above 5 GB). Returns the written files'
    paths relative to ``out``, sorted.

    Raises:
        ExportError: the commit holds no ``model`` or no ``config.json`` in ``hf_files``.

    Example:
        >>> write_hf(lg, lg.head.id, Path("release"))  # doctest: +SKIP
        ['config.json', 'model.safetensors']
    """
    commit = Commit.from_record(commit_id, reader.record(commit_id))
    state: dict[Any, Any] = {}
    for key in ("model", "hf_files"):  # only what the layout holds, not the optimizer
        with contextlib.suppress(PathNotFoundError):  # write_hf names what is missing
            state.update(reader.checkout(commit_id, paths=[key], mmap=True))
    _write_hf(ExportJob(state, commit, out, force=True))
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
