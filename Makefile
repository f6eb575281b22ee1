# Kronos: `make demo` runs the main job on bundled data, `make test` the test suite.
# Both create the virtual environment on first use; later runs reuse it.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kronos-installed
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba
# torch/OpenMP threads spin while waiting; on 2 shared cores that stalls training badly
export OMP_WAIT_POLICY ?= PASSIVE

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

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/kronos data ingest --source bundled
	$(BIN)/kronos data validate
	$(BIN)/kronos data info

lab: install
	$(BIN)/jupyter lab --notebook-dir=notebooks

mlflow: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host 127.0.0.1 --port 5000

lint: install
	$(BIN)/ruff check kronos tests

clean-venv:
	rm -rf $(VENV)
