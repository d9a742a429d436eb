# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
ARGS   ?= --trials 8 --rounds 30 --max-depth 30
PYTEST_ARGS ?=
# Test files run in TEST_JOBS processes (pytest-xdist, a file's tests together): on 2 cores the
# suite took 16.7 min with 2 against 24.5 min in one (same machine, same afternoon), and
# 11.25 min with 3 against 11.45 min with 2 (clean clones, 2026-12-04: CPU-bound, load average
# 4-5); 1: no xdist. From a clean clone, install included: 9 min 54 s (2026-12-04).
TEST_JOBS ?= 2

.PHONY: run test lint format bench serve-model screenshots install clean

# uv installs the same releases as pip (same resolution here) in 25 s instead of 56 s on 2 cores
# (fresh venv, 2026-12-04), bytecode compiled as pip does it: without, where
# PYTHONDONTWRITEBYTECODE=1 (as on CI) every process compiled MLflow and Prefect again (imports
# 6.1-6.9 CPU-s instead of 2.2-2.4, the suite 1.5x slower). pip does it where uv cannot be had.
$(BIN)/taxi-hpo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	( $(BIN)/python -m pip install --quiet uv && $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]' ) \
	  || $(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/taxi-hpo

run: install
	$(BIN)/taxi-hpo run $(ARGS)

test: install
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile) $(PYTEST_ARGS)

# Style and layers: ruff (format and lint, configured in pyproject.toml) and import-linter's
# contracts (the layers of README's Architecture). CI runs it before the tests.
lint: install
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: install
	$(BIN)/taxi-hpo bench --layouts script,seq,default,2x1-fixed,1x2 --trials 8 --rounds 30 --max-depth 40 --seed 1 --out bench-out

# The registered model behind a REST endpoint (POST /invocations, raw TLC rows in, minutes out).
# MLflow starts `uvicorn` by name, so the venv's bin goes first on PATH.
MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
PORT ?= 5002
serve-model: install
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI="$(MLFLOW_TRACKING_URI)" \
	  $(BIN)/mlflow models serve -m models:/nyc-taxi-duration@staging --env-manager local --host 127.0.0.1 --port $(PORT)

# The README's pictures of the MLflow and Prefect UIs: the browser test, saving what it checks.
# Needs Debian's chromium (apt-get install chromium).
screenshots: install
	TAXI_HPO_SCREENSHOTS=docs/images $(BIN)/python -m pytest -q tests/test_browser.py

clean:
	rm -rf $(VENV) mlflow.db mlartifacts bench-out
