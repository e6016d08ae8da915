# Everything runs from the project's own virtual environment, made on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL_DIR ?= models/default
DATA_DIR ?= data
PORT ?= 8000

ECG ?= ../shared/ecg

.PHONY: install test lint demo serve eval-ecg loadtest docker-check bench bench-full bench-scale bench-apps \
	explorer-screenshots eval-ecg-cv clean

install: $(STAMP)

# Re-install whenever pyproject.toml changes; torch==2.13.0 pins the CPU build. The Python
# client (client/, its own package: httpx and numpy only) goes in too, for its tests.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e ./client
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

# The benchmark suite (BENCHMARKS.md): quick (a few minutes) or full (larger sizes, longer runs).
bench: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python benchmarks/bench.py --model-dir $(MODEL_DIR)

bench-full: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python benchmarks/bench.py --model-dir $(MODEL_DIR) --full

# Scale-out figures (a few minutes; needs wrk, and PostgreSQL's server for the replica rows):
# HSN_WORKERS 1 vs 2 under 64 connections, replication lag, write throughput per engine.
bench-scale: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python benchmarks/scale_out.py --model-dir $(MODEL_DIR)

# Alignment, drift and verification measured through the service (a few minutes): drift on a
# drifted synthetic set; with ../shared/ecg and the models make eval-ecg trains, verification and
# drift on ECG-ID and alignment on QTDB (skipped with one line otherwise).
bench-apps: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python benchmarks/applications.py --model-dir $(MODEL_DIR) --ecgid-model runs/ecgid \
		--qtdb-model runs/qtdb --shared $(ECG) --out benchmarks/results

# The explorer's pictures in docs/ (README "Explorer"), taken by its browser tests (needs the OS's
# chromium and chromium-driver; about half a minute).
explorer-screenshots: $(STAMP)
	EXPLORER_SCREENSHOTS=docs $(BIN)/python -m pytest -q tests/app/test_explorer_browser.py

# 60 s of 16 concurrent clients mixing /embed, /search and writes against a fresh server.
loadtest: $(STAMP)
	@test -f $(MODEL_DIR)/model.pt || $(BIN)/python -m training demo --out $(MODEL_DIR)
	$(BIN)/python benchmarks/loadtest.py --model-dir $(MODEL_DIR) --duration 60 --clients 16

# The container for real (several minutes): lint, build, compose up, use, restart, tear down;
# then the cluster profile (PostgreSQL, three replicas, the balancer). The tools it needs are
# checked first, before the virtual environment is made.
docker-check:
	@tools/container/docker-check.sh --tools
	@$(MAKE) -s --no-print-directory $(STAMP)
	tools/container/docker-check.sh

# Real-ECG figures (BENCHMARKS.md): trains each recipe once (15 min each on 2 cores) unless
# runs/qtdb and runs/ecgid already hold a model, then scores elements they never saw.
eval-ecg: $(STAMP)
	@if [ ! -d $(ECG) ]; then echo "skipped: $(ECG) is absent"; exit 0; fi; \
	test -f runs/qtdb/model.pt || $(BIN)/python -m training train --config configs/qtdb.toml \
		--data $(ECG)/qtdb_auto_dev.npz --out runs/qtdb || exit 1; \
	test -f runs/ecgid/model.pt || $(BIN)/python -m training train --config configs/ecgid.toml \
		--data $(ECG)/ecgid_dev.npz --out runs/ecgid || exit 1; \
	$(BIN)/python benchmarks/ecg_eval.py --qtdb-model runs/qtdb --ecgid-model runs/ecgid \
		--shared $(ECG) --out benchmarks/results

# Cross-validated real-ECG figures (BENCHMARKS.md): five folds by record / person, each the
# recipe's own training run (up to 15 min each, two at a time), then every fold's test elements,
# then which evidence (global, local, intervals, rhythm) the anomaly score gains from.
eval-ecg-cv: $(STAMP)
	$(BIN)/python benchmarks/ecg_cv.py --folds 5 --max-minutes 15 --parallel 2 --runs runs/cv \
		--shared $(ECG) --out benchmarks/results
	$(BIN)/python benchmarks/anomaly_evidence.py --runs runs/cv --shared $(ECG) \
		--out benchmarks/results

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
