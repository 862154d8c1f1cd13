"""Helpers shared by the test modules (not a test module; tests/ is on ``sys.path`` under pytest).

``SCRIPTS`` is the folder of the child-process scripts; :func:`load_script`
imports one of them by path, for the helpers the tests share with it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parent / "scripts"


def load_script(name: str) -> ModuleType:
    """``tests/scripts/<name>.py`` as a module (a fresh one on every call).

    ``SCRIPTS`` goes on ``sys.path`` first, as it does when a script runs, so the
    scripts can import each other by name.
    """
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
