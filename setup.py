"""Package list for setuptools; all other metadata is in pyproject.toml.

`ledger` and every `ledger.*` subpackage are found under `ledger/`; the
top-level folder `adapters/` is installed as `ledger.adapters` (see the
`package-dir` mapping in pyproject.toml), never as a top-level `adapters`.
pyproject.toml alone cannot combine found packages with mapped ones.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["ledger", "ledger.*"]),
        "ledger.adapters",
        *(f"ledger.adapters.{name}" for name in find_packages("adapters")),
    ],
)
