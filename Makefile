# Two commands a new user needs: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
CAPPLAN := $(VENV)/bin/capplan
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test check lint typecheck contracts unit install clean

$(PY):
	python3 -m venv $(VENV)

# torch first, and only when none is importable: `pip install torch==2.13.0` takes the CPU wheel,
# and a user's own CUDA build is never replaced.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(CAPPLAN) demo

lint: install
	$(PY) -m ruff check capplan reference_server tests benchmarks scenarios

typecheck: install
	$(PY) -m mypy capplan reference_server

# Import layers and boundaries (docs/architecture.md), lazy imports included.
contracts: install
	$(VENV)/bin/lint-imports --no-cache

unit: install
	$(PY) -m pytest -q

check: lint typecheck contracts

test: lint typecheck contracts unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
