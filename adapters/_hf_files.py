"""The files a ``from_pretrained`` folder needs besides weights, as ``ledger.File`` values.

This module owns :func:`hf_files`: the ``config.json``, ``generation_config.json``,
tokenizer / processor files and custom-code files (for ``auto_map`` /
``trust_remote_code`` models) that ``save_pretrained`` would write, produced
by the objects' own ``save_pretrained`` into a temporary folder and read back,
plus ``adapter_config.json`` for a PEFT model. The Transformers adapter commits
the result under the state key ``hf_files``; plain-torch users may do the
same, and ``ledger export --format hf`` / ``--format peft`` write them out. It
builds on the public API only (``ledger.File``), changes neither the model nor
its config, and never writes outside its temporary folder.

Example:
    >>> lg.commit({"model": model, "hf_files": hf_files(model, tokenizer)})  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from ledger import File

from ._common import AdapterError

STATE_KEY = "hf_files"
"""The state key the files are committed under (what ``ledger export --format hf`` reads)."""


def has_hf_files(model: Any) -> bool:
    """Whether ``model`` (or a PEFT model's base) has a transformers config to save.

    Example:
        >>> has_hf_files(torch.nn.Linear(2, 2))  # doctest: +SKIP
        False
    """
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return callable(getattr(getattr(model, "config", None), "save_pretrained", None))


def hf_files(model: Any, processing_class: Any = None) -> dict[str, File]:
    """What ``save_pretrained`` writes next to the weights, file name -> :class:`~ledger.File`.

    Args:
        model: a ``transformers.PreTrainedModel``, or a ``peft.PeftModel`` (its
            ``adapter_config.json`` is added, and the base model's files).
        processing_class: a tokenizer, image processor, feature extractor or
            processor (anything with ``save_pretrained``), or None.

    Raises:
        AdapterError: ``model`` has no ``config`` with ``save_pretrained``, or
            ``processing_class`` has no ``save_pretrained``.

    Example:
        >>> files = hf_files(model, tokenizer)  # doctest: +SKIP
        >>> sorted(files)  # doctest: +SKIP
        ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json']
    """
    base = model
    with tempfile.TemporaryDirectory(prefix="ledger-hf-files-") as tmp:
        folder = Path(tmp)
        if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
            _adapter_config(model, folder)
            base = model.get_base_model()
        _model_files(base, folder)
        if processing_class is not None:
            save = getattr(processing_class, "save_pretrained", None)
            if not callable(save):
                raise AdapterError(
                    f"processing_class is a {type(processing_class).__name__}, which has no "
                    "save_pretrained(); pass the tokenizer or processor the Trainer uses"
                )
            save(str(folder))
        return {
            str(p.relative_to(folder)): File(p.read_bytes())
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        }


def _model_files(model: Any, folder: Path) -> None:
    """config.json (with ``architectures`` and ``dtype``, as save_pretrained sets them), code."""
    config: Any = getattr(model, "config", None)
    if not callable(getattr(config, "save_pretrained", None)):
        raise AdapterError(
            f"{type(model).__name__} has no transformers config; hf_files() needs a "
            "PreTrainedModel (a plain torch model has no from_pretrained folder)"
        )
    config = copy.deepcopy(config)
    config.architectures = [type(model).__name__]
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        config.dtype = str(dtype).split(".")[-1]
    if callable(getattr(model, "is_remote_code", None)) and model.is_remote_code():
        from transformers.dynamic_module_utils import custom_object_save

        custom_object_save(model, str(folder), config=config)
    config.save_pretrained(str(folder))
    can_generate = getattr(model, "can_generate", None)
    generation = getattr(model, "generation_config", None)
    if callable(can_generate) and can_generate() and generation is not None:
        generation.save_pretrained(str(folder))


def _adapter_config(model: Any, folder: Path) -> None:
    """adapter_config.json of the active adapter, as ``PeftModel.save_pretrained`` writes it."""
    name = getattr(model, "active_adapter", "default")
    config = copy.deepcopy(model.peft_config[name])
    if config.base_model_name_or_path is None:
        base = model.get_base_model()
        config.base_model_name_or_path = getattr(base, "name_or_path", None) or None
    config.inference_mode = True
    config.save_pretrained(str(folder))
