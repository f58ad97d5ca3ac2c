# Set-up prefers the CPU build of torch: pinned first so the resolver never pulls a CUDA wheel.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1

.PHONY: demo test setup setup-test notebooks lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-test: $(VENV)/.installed-test

demo: setup
	$(BIN)/fsm-probe demo

test: setup-test
	$(BIN)/python -m pytest

$(VENV)/.installed-notebooks: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[notebooks]"
	touch $@ $(VENV)/.installed

# JupyterLab on the example notebooks (the `notebooks` extra).
notebooks: $(VENV)/.installed-notebooks
	$(BIN)/jupyter lab examples/

lint: setup-test
	$(BIN)/ruff check .

bench: setup-test
	$(BIN)/python analyses/bench_training.py

clean:
	rm -rf $(VENV) build *.egg-info
