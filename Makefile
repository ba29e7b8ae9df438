# sdbox: the two commands a newcomer needs are `make demo` and `make test`.
# Both install what they need first (`make setup`).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's own Python: the box runs it, and only it sees python3-gi (GTK 4).
SYSTEM_PYTHON := /usr/bin/python3
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: setup setup-system venv test lint typecheck unit integration demo bench clean deb lock

setup: setup-system venv

setup-system:
	bash scripts/setup-system.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

lint: venv
	$(VENV)/bin/ruff check sdbox tests benchmarks scripts

typecheck: venv
	$(VENV)/bin/mypy sdbox tests benchmarks scripts

test: setup lint typecheck
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

bench: setup
	$(PY) -m benchmarks

# The Debian package, out of tree, into build/deb/ (lintian must be clean).
deb:
	bash scripts/setup-system.sh base debian
	bash scripts/build-deb.sh

# Regenerate debian/*.lock after changing a pin in pyproject.toml.
lock: venv
	$(PY) scripts/lock_requirements.py

clean:
	rm -rf build .mypy_cache .pytest_cache .ruff_cache
