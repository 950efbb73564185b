# The two commands of the README:
#   make run    set up a fresh clone and run the main job
#   make test   set up a fresh clone and run the whole test suite (what .ci/run calls)

PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup lint types pytest fuzz bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/duplex serve

lint: $(STAMP)
	$(BIN)/ruff format --check src tests benchmarks fuzzing
	$(BIN)/ruff check src tests benchmarks fuzzing

types: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
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

bench: $(STAMP)
	$(BIN)/python benchmarks/echo_throughput.py --all-models

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
