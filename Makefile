# The two commands of the README:
#   make run    set up a fresh clone and run the main job
#   make test   set up a fresh clone and run the whole test suite (what .ci/run calls)

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup compile pure lint types pytest fuzz bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

# The hub's hot path, compiled to C extensions by mypyc (from the dev extras) next to
# their sources, where the editable install imports them first: a relayed message costs
# the hub about a fifth less CPU (benchmarks/hub_relay.py; see the README).
# Rebuilt whenever one of these files changes, so a test never runs a stale build.
# DUPLEX_COMPILE=0 (or `make pure`) runs the same modules as plain Python.
HOT := duplex/wire/frames.py duplex/timers.py duplex/protocol/hub.py duplex/protocol/peer.py \
	duplex/hub/connection.py duplex/hub/core.py duplex/broker/local.py duplex/store/sqlite.py \
	duplex/hub/accounts.py duplex/hub/metrics.py
COMPILED := src/.compiled
DUPLEX_COMPILE ?= 1
HOTPATH := $(if $(filter 0,$(DUPLEX_COMPILE)),pure,$(COMPILED))

$(COMPILED): $(STAMP) Makefile $(addprefix src/,$(HOT))
	@echo "compiling the hot path with mypyc (about a minute): $(HOT)"
	find src -name '*.so' -delete
	cd src && ../$(BIN)/mypyc $(HOT) > build-mypyc.log 2>&1 \
		|| { tail -30 build-mypyc.log; echo "mypyc failed (above, in src/build-mypyc.log);" \
		"DUPLEX_COMPILE=0 runs everything as plain Python"; exit 1; }
	rm -rf src/build-mypyc.log src/build
	touch $(COMPILED)

compile: $(COMPILED)

pure:
	find src -name '*.so' -delete
	rm -rf src/build src/.mypy_cache $(COMPILED)

setup: $(HOTPATH)

run: $(HOTPATH)
	$(BIN)/duplex serve

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks fuzzing
	$(BIN)/ruff check src tests benchmarks fuzzing

types: $(STAMP)
	$(BIN)/mypy

pytest: $(HOTPATH)
	$(BIN)/pytest

test: lint types pytest

# Longer fuzzing than CI's: each atheris harness for FUZZ_SECONDS, then the hypothesis
# state machine and harness tests with DUPLEX_FUZZ=long. Crashes land in fuzzing/artifacts/.
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	mkdir -p fuzzing/artifacts
	$(BIN)/python fuzzing/fuzz_frames.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzzing/artifacts/
	$(BIN)/python fuzzing/fuzz_messages.py -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=fuzzing/artifacts/
	DUPLEX_FUZZ=long $(BIN)/pytest tests/fuzz

bench: $(HOTPATH)
	$(BIN)/python benchmarks/echo_throughput.py --all-models

clean: pure
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
