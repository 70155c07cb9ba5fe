# loraplex: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast test-all lint format bench clean help

help: ## Show the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: ## Create .venv and install everything (seconds when nothing changed)
	@bash scripts/setup.sh

demo: setup ## Run the release flow end to end on the embedded defaults
	@$(PY) -m services.demo

test: setup ## The CI test suite (real vLLM + training + evaluation paths), with line coverage
	@rm -f .coverage .coverage.*
	@$(PY) -m pytest -m "not gpu and not heavy" -q --cov --cov-report=term:skip-covered

test-fast: setup ## Only the fast tests
	@$(PY) -m pytest -m "not slow and not gpu and not heavy" -q

test-all: setup ## Everything, GPU tests too (skipped without a GPU)
	@$(PY) -m pytest -q

lint: setup ## ruff check, ruff format --check, mypy, the import rules (lint-imports)
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@$(BIN)/mypy
	@$(BIN)/lint-imports

format: setup ## Apply ruff fixes and formatting
	@$(BIN)/ruff check --fix .
	@$(BIN)/ruff format .

bench: setup ## Run every benchmark and update docs/benchmarks.md
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## Remove the virtualenv and local data (keeps nothing)
	rm -rf $(VENV) .loraplex
