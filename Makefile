# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
PORT ?= 8000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Set up and start the demo site on http://127.0.0.1:$(PORT) (log in as demo / demo).
run: $(STAMP)
	$(BIN)/python manage.py demo 127.0.0.1:$(PORT)

## Set up and run the whole test suite: one test file per core (each file's module
## fixtures made once), then the browser tests one at a time (a page's timings and a
## browser's sockets need the machine to themselves).
test: $(STAMP)
	$(BIN)/python -m pytest --ignore=tests/browser --numprocesses=auto --maxprocesses=4 --dist=loadfile
	$(BIN)/python -m pytest tests/browser

## Run the relay benchmark (a few minutes) and rewrite bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
