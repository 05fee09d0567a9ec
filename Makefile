# Set-up is two commands: `make run` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-kafka test-fast bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# e.g. make run ARGS="--port 8080 --broker-port 19092"
run: $(STAMP)
	$(BIN)/inference-allocator dev $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

# The same suite on Apache Kafka 4.x (KRaft), fetched once with Maven into ~/.cache.
test-kafka: $(STAMP)
	INFERENCE_TEST_BROKER=apache-kafka $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/inference-allocator bench --broker both --json docs/benchmarks.json --plot docs/benchmarks.png

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check inference_allocator tests
	$(BIN)/ruff format --check inference_allocator tests

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
