# Nightshift: `make demo` runs the nightly job on the small preset; `make test` runs the tests.
SHELL := /bin/bash
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export NIGHTSHIFT_HOME ?= $(CURDIR)/.nightshift
# The venv's tools (prefect, mlflow, ray) come first for every recipe and the processes it starts.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup up down status demo test test-postgres lint clean

$(BIN)/nightshift: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(BIN)/nightshift

setup: $(BIN)/nightshift  ## create .venv with the pinned dependency set

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

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean: down
	rm -rf $(NIGHTSHIFT_HOME)
