# Set-up is two commands: `make run` and `make test`. Both build .venv from scratch when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-kafka test-fast bench docs lint clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# e.g. make run ARGS="--port 8080 --broker-port 19092"
run: $(STAMP)
	$(BIN)/inference-allocator dev $(ARGS)

# The dashboard test drives Debian's Chromium: installed here when it is missing and this
# can (root, apt-get); otherwise the test skips saying why (and fails in CI's strict run).
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && echo "installing Debian's chromium for the dashboard test (once)..." \
	  && { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } \
	  || echo "note: no Chromium here (apt-get install chromium): the dashboard test will skip"

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# The same suite on Apache Kafka 4.x (KRaft), fetched once with Maven into ~/.cache.
test-kafka: $(STAMP) chromium
	INFERENCE_TEST_BROKER=apache-kafka $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/inference-allocator bench --broker both --json docs/benchmarks.json --plot docs/benchmarks.png

# The docs site (MkDocs Material) into site/; --strict: a broken link or page fails.
docs: $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check inference_allocator tests
	$(BIN)/ruff format --check inference_allocator tests

clean:
	rm -rf $(VENV) .pytest_cache build site *.egg-info
