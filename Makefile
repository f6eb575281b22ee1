# Kronos: `make demo` runs the main job on bundled data, `make test` the test suite.
# Both create the virtual environment on first use; later runs reuse it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kronos-installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
# torch/OpenMP threads spin while waiting; on 2 shared cores that stalls training badly
export OMP_WAIT_POLICY ?= PASSIVE
DEMO_STEPS ?= 200

.PHONY: install test demo lab mlflow lint clean-venv

install: $(STAMP)

# torch==2.13.0 is the CPU wheel on these machines' disk (any other request
# downloads a CUDA build); torch-geometric-temporal goes in with --no-deps (see
# ARCHITECTURE.md and kronos/models/graph_compat.py).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps torch-geometric-temporal==0.56.2
	touch $(STAMP)

# Two pytest workers (the machines have 2 cores; most tests use one); a test
# file stays on one worker, so its module fixtures are built once.
TEST_WORKERS ?= 2

test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The whole pipeline on the bundled data, each step a notebook run by papermill
# through `kronos run` and tracked in MLflow (experiments/runs/ holds the
# executed notebooks).
demo: install
	@echo "== 1/5 ingest the bundled data and check it (00_data)"
	$(BIN)/kronos run 00_data --name demo-data
	@echo "== 2/5 retrain a small N-BEATS and gate it against EWMA (10_retrain)"
	$(BIN)/kronos run 10_retrain -p model=nbeats -p max_steps=$(DEMO_STEPS) --name demo-retrain
	@echo "== 3/5 walk-forward backtest of the EWMA spec, 2005-2022 (20_walkforward)"
	$(BIN)/kronos run 20_walkforward -p spec=backtests/sp500_ewma_weekly.yaml --name demo-walkforward
	@echo "== 4/5 nightly calibration of the N-BEATS forecasts (40_calibrate)"
	$(BIN)/kronos run 40_calibrate -p model=nbeats --name demo-calibrate
	@echo "== 5/5 paper-trading loop, 6 cycles on the simulated broker (30_paper_trading)"
	$(BIN)/kronos run 30_paper_trading -p model=nbeats -p broker=sim --name demo-paper
	$(BIN)/kronos runs list --max 5
	@echo "Executed notebooks: experiments/runs/demo-*/   Backtest report: data/backtests/sp500_ewma_weekly/*/report.html"
	@echo "Compare runs: make mlflow (http://127.0.0.1:5000), kronos runs compare RUN RUN, or notebooks/50_compare_runs.ipynb"

# JupyterLab on 127.0.0.1 with this environment's python3 kernel (root, as in
# containers, needs --allow-root)
lab: install
	$(BIN)/jupyter lab --ip=127.0.0.1 --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

lint: install
	$(BIN)/ruff check kronos tests

clean-venv:
	rm -rf $(VENV)
