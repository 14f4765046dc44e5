# The two set-up commands of the README: `make run` and `make test`. Everything else is optional.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test tools lint typecheck unit compile pricing bench bench-peers bench-firestore soak clean vendor-ui

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server]'
	@touch $@

$(VENV)/.dev-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.run-deps $(VENV)/.native-deps

$(VENV)/.native-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[server,native]'
	@touch $@

## compile: compile the request path with mypyc, in place (scripts/compile; a no-op when nothing changed).
## run, unit and bench do it first; without a C compiler, run goes on interpreted and unit stops.
compile: $(VENV)/.native-deps
	$(BIN)/python scripts/compile

## run: create the venv, install, serve the proxy on 127.0.0.1:8080 and the dashboard on 127.0.0.1:8081,
## with the embedded SQLite store
run: $(VENV)/.run-deps compile
	$(BIN)/modeltrack serve --ui true

## test: the system tools the tests use (apt), lint, type-check, the whole test suite
test: tools lint typecheck unit

tools:
	@scripts/test-tools

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check src tests bench deploy
	$(BIN)/ruff format --check src tests bench deploy

typecheck: $(VENV)/.dev-deps
	$(BIN)/mypy

unit: $(VENV)/.dev-deps
	$(BIN)/python scripts/compile --strict
	$(BIN)/pytest

## pricing: regenerate pricing/prices.json from the installed genai-prices (offline, reproducible)
pricing: $(VENV)/.dev-deps
	$(BIN)/modeltrack pricing update

## bench: proxy overhead side by side with a direct connection and nginx (writes bench/results/)
bench: $(VENV)/.dev-deps compile
	$(BIN)/python -m bench.run

bench-peers: $(VENV)/.dev-deps compile
	$(BIN)/python -m bench.run --peers

## bench-firestore: 300,000 events in the Firestore emulator, the dashboard's 30-day questions timed (~6 min)
bench-firestore: $(VENV)/.dev-deps
	$(BIN)/python -m bench.firestore_scale

## vendor-ui: refresh the dashboard's vendored chart library (uPlot) from the npm registry, checksum-pinned
vendor-ui:
	scripts/vendor-ui

clean:
	$(PY) scripts/compile --clean
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis data

## soak: mixed traffic with injected upstream faults (default 10 min; SOAK_MINUTES=1 make soak)
soak: $(VENV)/.dev-deps
	$(BIN)/python -m bench.soak --minutes $${SOAK_MINUTES:-10}
