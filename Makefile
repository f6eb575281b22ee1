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
	@echo
	@echo "Where to click:"
	@echo "  JupyterLab     make lab, then http://127.0.0.1:$(LAB_PORT)/lab/tree/notebooks (with the token it prints; reports and runs are one folder up)"
	@echo "  The report     $(CURDIR)/$$(ls -td data/backtests/sp500_ewma_weekly/*/ | head -1)report.html"
	@echo "  Notebooks run  $(CURDIR)/experiments/runs/ (each beside its .html)"
	@echo "  MLflow UI      make mlflow, then http://127.0.0.1:5000 (experiments kronos-*)"

# JupyterLab on 127.0.0.1 with this environment's python3 kernel, rooted at the
# project (data/backtests/*/report.html and experiments/runs/ one click away), opening
# on notebooks/. PORT (8888, never another: the URL printed stays true); TOKEN: the
# one Jupyter generates and prints, unless given (`make lab TOKEN=` turns it off).
# Root, as in containers, needs --allow-root.
LAB_PORT = $(or $(PORT),8888)
LAB_TOKEN = $(if $(TOKEN),--IdentityProvider.token='$(TOKEN)',$(if $(filter command line,$(origin TOKEN)),--IdentityProvider.token=''))
lab: install
	@echo "JupyterLab: http://127.0.0.1:$(LAB_PORT)/lab/tree/notebooks$(if $(TOKEN),?token=$(TOKEN),$(if $(filter command line,$(origin TOKEN)), (no token), (with the token Jupyter prints below)))"
	$(BIN)/jupyter lab --ip=127.0.0.1 --port=$(LAB_PORT) --ServerApp.port_retries=0 \
	  --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/notebooks \
	  $(LAB_TOKEN) $(if $(filter 0,$(shell id -u)),--allow-root)

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

lint: install
	$(BIN)/ruff check kronos tests

clean-venv:
	rm -rf $(VENV)
