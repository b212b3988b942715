# Quick start: `make demo` (install + main job) and `make test` (dev install + every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel is installed before the project so that resolving `torch>=2.5` never pulls a CUDA build.
# On a GPU machine: make install TORCH_SPEC='torch==2.13.0 --index-url <your CUDA index>'
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip

.PHONY: install install-dev test test-fast lint demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	touch $@

install: $(VENV)/.torch
	$(PIP) install -q -e .

# Horovod builds from source against the installed CPU torch (Gloo controller, no MPI): ~2-3 min once.
HOROVOD_ENV := HOROVOD_WITH_PYTORCH=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
	HOROVOD_WITHOUT_MPI=1 HOROVOD_CPU_OPERATIONS=gloo MAKEFLAGS=-j2 CXX=$(CURDIR)/scripts/cxx17

$(VENV)/.horovod: $(VENV)/.torch
	$(BIN)/python -c "import horovod.torch" 2>/dev/null || ( \
	  $(PIP) install -q cloudpickle psutil pyyaml packaging cffi wheel setuptools && \
	  $(HOROVOD_ENV) $(PIP) install -q --no-build-isolation --no-cache-dir horovod==0.28.1 )
	touch $@

install-dev: $(VENV)/.torch $(VENV)/.horovod
	$(PIP) install -q -e '.[dev]'

test: install-dev
	$(BIN)/python -m pytest -m 'slow or not slow' --durations=15

test-fast: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

demo: install
	bash scripts/demo.sh $(BIN)/python runs/demo

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
