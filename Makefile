# The README's two commands: `make up` and `make test`. Both install what they need themselves.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: up test lint bench venv tools clean
UP_ARGS ?=

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	# .NET Core 3.1 runtime for the old-runtime tests; --no-deps: its extras download from a CDN.
	$(BIN)/pip install -q --no-deps 'dotnetcore2==3.1.23'
	touch $(STAMP)

# Mono's C# compiler builds the test and demo apps (they run on the real .NET runtime);
# curl and jq run the README's examples.
tools:
	@missing=""; \
	command -v mcs >/dev/null || missing="$$missing mono-mcs"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v jq >/dev/null || missing="$$missing jq"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: venv
	$(BIN)/ruff check agent functions tests benchmarks
	$(BIN)/ruff format --check agent functions tests benchmarks
	$(BIN)/mypy agent/dnmon_agent functions/dnmon_core functions/dnmon_api

test: venv tools lint
	$(BIN)/pytest -q

up: venv tools
	$(BIN)/dnmon up --sample-app $(UP_ARGS)

bench: venv tools
	$(BIN)/python -m benchmarks.bench_decoder
	$(BIN)/python -m benchmarks.bench_livemetrics_cpu
	$(BIN)/python -m benchmarks.bench_passthrough
	$(BIN)/python -m benchmarks.bench_api
	$(BIN)/python -m benchmarks.bench_agent
	$(BIN)/python -m benchmarks.bench_discovery
	$(BIN)/python -m benchmarks.bench_fleet
	$(BIN)/python -m benchmarks.bench_cost
	$(BIN)/python -m benchmarks.bench_freshness
	$(BIN)/python -m benchmarks.bench_streaming

clean:
	rm -rf $(VENV) .dnmon-cache .pytest_cache .mypy_cache .ruff_cache
