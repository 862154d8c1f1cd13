# Needs only a Python >= 3.10 on PATH; everything else goes into .venv.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv demo docs test test-slow lint bench clean

venv: $(STAMP)

# Rebuilt when the dependency declarations change. constraints.txt pins torch to
# the CPU wheel; every pip install goes through it.
$(STAMP): pyproject.toml setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c constraints.txt -e '.[dev,plot]'
	touch $@

demo: venv
	$(PY) examples/demo.py && $(PY) examples/import_export.py

# The documentation site (mkdocs.yml): --strict makes every warning (a broken link
# or anchor, an unreadable docstring) an error. Offline: no fonts or CDN are fetched.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -q -d build/site

# Line coverage of ledger/ and adapters/, child processes included (pyproject.toml,
# [tool.coverage]); under 90% fails the target. The terminal report lists the files
# not fully covered.
test: venv docs
	rm -f .coverage .coverage.*
	$(PY) -m pytest -m "not slow" -n 2 --timeout=600 -q \
		--cov --cov-report=term --cov-fail-under=90

test-slow: venv
	$(PY) -m pytest -n 2 --timeout=3600 -q

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: venv
	$(PY) benchmarks/run.py

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis \
		.coverage .coverage.* coverage.xml htmlcov benchmarks/out
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
