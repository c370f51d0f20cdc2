# The README's two commands: `make up` and `make test`. Both install what they need themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint unit integration bench venv mcs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# .NET Core 3.1 runtime for the old-runtime tests; --no-deps: its extras download from a CDN.
	$(BIN)/pip install -q --no-deps 'dotnetcore2==3.1.23'
	touch $(STAMP)

# Mono's C# compiler builds the test and demo apps (they run on the real .NET runtime).
mcs:
	@command -v mcs >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq mono-mcs >/dev/null; }

lint: venv
	$(BIN)/ruff check agent functions tests benchmarks
	$(BIN)/ruff format --check agent functions tests benchmarks
	$(BIN)/mypy agent/dnmon_agent functions/dnmon_core functions/dnmon_api

test: venv mcs lint
	$(BIN)/pytest -q

up: venv mcs
	$(BIN)/dnmon up --sample-app

bench: venv mcs
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .dnmon-cache .pytest_cache .mypy_cache .ruff_cache
