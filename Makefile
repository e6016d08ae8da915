# Everything runs from the project's own virtual environment, made on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/default
DATA_DIR ?= data
PORT ?= 8000

.PHONY: install test lint demo serve clean

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

# The service: trains the default model first when there is none, then serves on $(PORT).
serve: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python -m app --model-dir $(MODEL_DIR) --data-dir $(DATA_DIR) --port $(PORT)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
