# Nightshift: `make demo` runs the nightly job on the small preset; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3.11
# The interpreter .venv is made from, found before .venv/bin goes first on PATH below.
PY_BASE := $(shell $(PY) -c 'import sys; print(sys._base_executable)')
VENV ?= .venv
BIN := $(VENV)/bin
export NIGHTSHIFT_HOME ?= $(CURDIR)/.nightshift
# The venv's tools (prefect, mlflow, ray) come first for every recipe and the processes it starts.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup lock up down status demo test test-postgres lint clean

# uv installs the locked set (uv.lock, with hashes) from its cache in seconds; uv itself comes from PyPI
# once, into .tools/. torch's CPU build comes from this machine's disk (see [tool.uv.index] in pyproject).
UV_VERSION := $(shell sed -n 's/^required-version = "==\(.*\)"/\1/p' pyproject.toml)
UV := $(CURDIR)/.tools/uv-$(UV_VERSION)/bin/uv
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

$(UV):
	$(PY_BASE) -m pip install -q --disable-pip-version-check --target .tools/uv-$(UV_VERSION) uv==$(UV_VERSION)

$(BIN)/nightshift: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --all-extras --python $(PY_BASE)
	touch $(BIN)/nightshift

setup: $(BIN)/nightshift  ## create .venv with the locked dependency set, every extra and the dev tools

lock: | $(UV)  ## re-resolve uv.lock after a change to pyproject.toml's dependencies
	$(UV) lock --python $(PY_BASE)

up: setup  ## start Prefect server + worker, MLflow, Ray head; apply prefect.yaml
	$(BIN)/nightshift up

down:  ## stop what `up` started
	$(BIN)/nightshift down

status:
	$(BIN)/nightshift status

demo: setup  ## set up, bring the stack up, fetch Shakespeare, run pretrain/nightly (preset small)
	$(BIN)/nightshift demo

test: setup  ## the whole test suite (starts its own servers)
	$(BIN)/python -m pytest -q --durations=15

# The integration tests again, on Postgres + S3: `nightshift up --stack.backend postgres` starts a
# Postgres 15 (Debian's postgresql package) and an S3 server on loopback for them.
test-postgres: setup  ## the integration tests on Postgres + S3 instead of the embedded defaults
	NIGHTSHIFT_TEST_BACKEND=postgres $(BIN)/python -m pytest -q -m integration --durations=10

lint: setup  ## ruff; the import contracts (import-linter); deptry: every imported package declared, nothing declared unused
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/ruff format --check .
	$(BIN)/deptry .
	$(UV) lock --check --python $(PY_BASE)

clean: down
	rm -rf $(NIGHTSHIFT_HOME)
