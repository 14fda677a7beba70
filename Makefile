# The two commands of the README:
#   make demo   set up, then run the main job on the embedded default data
#   make test   set up (system packages included), then run the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup setup-dev system-deps demo test lint bench clean

# The demo needs the package alone; the tests, lint and benchmarks also the dev extra (pytest,
# playwright, schemathesis, PySpark, ruff, mypy).
$(BIN)/cimcoder: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(BIN)/cimcoder pyproject.toml
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/cimcoder

setup-dev: $(VENV)/.dev-installed

# PostgreSQL (real server for the store and OMOP tests) and Chromium (review page tests).
system-deps:
	bash scripts/install-system-deps.sh

demo: setup
	$(BIN)/cimcoder run configs/codiesp-fr/hybrid.yaml \
		--baselines configs/codiesp-fr/quickstart.yaml configs/codiesp-fr/tfidf_lr.yaml \
		configs/codiesp-fr/edsnlp_matcher.yaml

test: setup-dev system-deps
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/python scripts/mypy.py

bench: setup-dev
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
