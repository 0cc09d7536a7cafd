# pantau: `make up` runs the stack, `make test` runs the tests. Both set up everything they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: up test lint typecheck bench system-deps browser-deps lock clean

up: $(STAMP) system-deps
	$(BIN)/pantau up

test: $(STAMP) system-deps browser-deps lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP) system-deps
	$(BIN)/pantau bench ingest

# Re-run pip only when the dependencies changed: a second `make test` starts at once. The
# constraints pin every package to the versions CI last passed with (docs/decisions.md D14).
$(STAMP): pyproject.toml deploy/constraints.txt
	@deploy/ensure-system-deps.sh python
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c deploy/constraints.txt -e '.[dev]'
	@touch $@

# Re-resolve the newest versions pyproject.toml allows into deploy/constraints.txt; run `make test`
# after it and commit the file with what the new versions needed.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet -e '.[dev]'
	{ sed -n '1,2p' deploy/constraints.txt; .lock-venv/bin/pip freeze --exclude-editable | grep -v '^pantau'; } \
		> deploy/constraints.txt.new
	mv deploy/constraints.txt.new deploy/constraints.txt
	rm -rf .lock-venv

system-deps:
	@deploy/ensure-system-deps.sh postgresql mosquitto

# The screen's browser tests drive Debian's Chromium through Playwright (no browser download).
browser-deps:
	@deploy/ensure-system-deps.sh chromium

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
