# Everything runs from the project's own virtual environment, made on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/default

.PHONY: install test lint demo clean

install: $(STAMP)

# Re-install whenever pyproject.toml changes; torch==2.13.0 pins the CPU build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The small default model: synthetic data, trained and exported in a few minutes on 2 cores.
demo: $(STAMP)
	$(BIN)/python -m training demo --out $(MODEL_DIR)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
