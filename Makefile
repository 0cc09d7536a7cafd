# pantau: `make up` runs the stack, `make test` runs the tests. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint typecheck bench system-deps clean

up: $(STAMP) system-deps
	$(BIN)/pantau up

test: $(STAMP) system-deps lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/pantau bench ingest

# Re-run pip only when pyproject.toml changed: a second `make test` starts at once.
$(STAMP): pyproject.toml
	@deploy/ensure-system-deps.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

system-deps:
	@deploy/ensure-system-deps.sh postgresql mosquitto

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
