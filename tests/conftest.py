"""Shared fixtures: a fresh ledger per test (default or 4 KiB chunks), hypothesis profiles."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from ledger import Ledger

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile("slow", deadline=None, max_examples=400)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parent.parent
# the shared test helpers (tests/helpers.py) report failed asserts like a test does
pytest.register_assert_rewrite("helpers")


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    """Where a test's ledger lives (not created yet)."""
    return tmp_path / "ckpt"


@pytest.fixture
def lg(ledger_dir: Path) -> Iterator[Ledger]:
    """A new, open ledger (fsync off: durability has its own tests)."""
    with Ledger.open(ledger_dir, create=True, fsync=False) as opened:
        yield opened


@pytest.fixture
def small(ledger_dir: Path) -> Iterator[Ledger]:
    """Like ``lg`` (the same directory), with 4 KiB chunks: modest tensors span several."""
    with Ledger.open(ledger_dir, create=True, fsync=False, chunk_size=4096) as opened:
        yield opened


@pytest.fixture
def python() -> str:
    """The interpreter to run child processes with (same venv)."""
    return sys.executable
