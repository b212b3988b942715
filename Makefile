# Quick start: `make demo` (install + main job) and `make test` (dev install + every test).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel is installed before the project so that resolving `torch>=2.5` never pulls a CUDA build.
# On a GPU machine: make install TORCH_SPEC='torch==2.13.0 --index-url <your CUDA index>'
TORCH_SPEC ?= torch==2.13.0
PIP := $(BIN)/python -m pip
# the versions `make test` last passed with (constraints.txt): a release tomorrow cannot break an install
CONSTRAINTS := -c constraints.txt

.PHONY: install install-dev test test-fast lint demo demo-dalle2 docker bench-compare clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(PIP) install -q $(TORCH_SPEC)
	touch $@

install: $(VENV)/.torch
	$(PIP) install -q $(CONSTRAINTS) -e .

# The engines need special build settings, so scripts install them (an extra only declares requirements):
# Horovod builds from source against the installed torch (~2-3 min once, then pip's wheel cache);
# DeepSpeed installs after torch so its build sees it (~1 min with its shared-memory comm op).
$(VENV)/.horovod: $(VENV)/.torch
	bash scripts/install_horovod.sh $(BIN)/python
	touch $@

$(VENV)/.deepspeed: $(VENV)/.torch
	sh install_deepspeed.sh $(BIN)/python
	touch $@

# YouTokenToMe (--bpe_path x.model) has no wheel and builds only against Cython < 3.
$(VENV)/.yttm: | $(BIN)/python
	bash scripts/install_yttm.sh $(BIN)/python
	touch $@

# a stamp, not a pip run on every call: `make test` in the image (whose venv is root's) installs nothing
$(VENV)/.dev: $(VENV)/.torch $(VENV)/.horovod $(VENV)/.deepspeed $(VENV)/.yttm setup.py pyproject.toml constraints.txt
	$(PIP) install -q $(CONSTRAINTS) -e '.[dev]'
	touch $@

install-dev: $(VENV)/.dev

test: install-dev
	$(BIN)/python -m pytest -m 'slow or not slow' --durations=15

test-fast: install-dev
	$(BIN)/python -m pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# `make demo SHAPES=two` (and demo-dalle2): train and judge on the two-shape captions instead
SHAPES ?= one
demo: install
	SHAPES=$(SHAPES) bash scripts/demo.sh $(BIN)/python runs/demo$(if $(filter two,$(SHAPES)),-two)

# DALL-E 2 on the same data, prompts and judge: CLIP -> prior -> decoder -> generated grids
demo-dalle2: install
	SHAPES=$(SHAPES) bash scripts/demo_dalle2.sh $(BIN)/python runs/demo-dalle2$(if $(filter two,$(SHAPES)),-two)

# The GPU image (docker/README.md). DALLE-pytorch builds with `docker build -t dalle docker`; this image
# installs through the Makefile and the install scripts, so its build context is the repository root.
docker:
	docker build -f docker/Dockerfile -t dalle .

# DALLE-pytorch 1.6.6 side by side (bench/RESULTS.md): its own venv under bench/, then ~5-15 min on 2 cores
bench-compare:
	bash bench/setup_dalle_pytorch.sh
	bench/.venv-dalle-pytorch/bin/python bench/compare_dalle_pytorch.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
