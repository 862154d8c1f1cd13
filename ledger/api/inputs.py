"""Inputs and helpers of the ``Ledger`` facade: validating what users pass, the commit draft.

This module owns turning user arguments (metrics, params, map_location, the
ledger directory) into checked values, and the draft a commit carries from
the caller's thread to the writer. It never writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

from ledger.api.initdir import CONFIG_FILE as CONFIG_FILE  # re-exported: where users find it
from ledger.errors import (
    FormatVersionError,
    NotALedgerError,
    UnsupportedValueError,
)
from ledger.history.records import (
    FORMAT_VERSION,
    LEDGER_KIND,
    Commit,
    LedgerConfig,
    config_decoder,
    unknown_tags,
)

DEFAULT_CHUNK_SIZE = 4 << 20


# -- helpers -----------------------------------------------------------------------


def _refuse_newer(data: bytes, what: str) -> None:
    newer = unknown_tags(data)
    if newer:
        raise FormatVersionError(
            f"{what} uses record kinds {sorted(newer)} from a newer training-ledger; "
            "upgrade: pip install -U training-ledger"
        )


def _read_config(path: Path) -> LedgerConfig:
    try:
        raw = msgspec.json.decode(path.read_bytes())
    except msgspec.DecodeError as e:
        raise NotALedgerError(f"{path} is not a ledger config ({e})") from e
    if not isinstance(raw, dict) or raw.get("kind") != LEDGER_KIND:
        raise NotALedgerError(f"{path.parent} is not a training-ledger directory")
    version = raw.get("format")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path.parent} was written with ledger format {version}, this training-ledger reads "
            f"up to {FORMAT_VERSION}; upgrade: pip install -U training-ledger"
        )
    try:
        return config_decoder.decode(path.read_bytes())
    except msgspec.ValidationError as e:
        raise NotALedgerError(f"{path} is not a valid ledger config ({e})") from e


def _done(commit: Commit) -> Future[Commit]:
    future: Future[Commit] = Future()
    future.set_result(commit)
    return future


def _default_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 4 << 30


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnsupportedValueError(f"{name}={value!r} must be an integer") from None


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        if not isinstance(key, str):
            raise UnsupportedValueError(f"metric name {key!r} must be a string")
        try:
            out[key] = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            raise UnsupportedValueError(f"metrics[{key!r}] = {value!r} is not a number") from None
    return out


def _clean_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    def clean(value: Any, where: str) -> Any:
        if value is None:
            return None
        for plain in (bool, int, float, str):  # exact types: numpy.float64 is a float subclass
            if isinstance(value, plain):
                return plain(value)
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return clean(value.item(), where)
        if isinstance(value, Mapping):
            return {str(k): clean(v, f"{where}[{k!r}]") for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        raise UnsupportedValueError(
            f"{where} is a {type(value).__name__}; params hold plain values, lists and dicts"
        )

    return {str(k): clean(v, f"params[{k!r}]") for k, v in (params or {}).items()}
