# Two commands on a fresh machine: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DEB := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_OUT ?= runs/demo

.PHONY: install dataset test test-all lint demo bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Fashion-MNIST from Debian's package (idx .gz files); skipped when present or when a root is given.
dataset:
	@if [ -n "$$SEMMAE_FASHION_MNIST" ] || [ -f $(FMNIST_DEB) ]; then exit 0; fi; \
	if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	else \
	  echo "Fashion-MNIST not found: run 'sudo apt-get install dataset-fashion-mnist' or set SEMMAE_FASHION_MNIST=DIR"; exit 1; \
	fi

test: install dataset
	$(PY) -m pytest -q

test-all: install dataset
	$(PY) -m pytest -q -m ""

lint: install
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

demo: install dataset
	$(PY) -m semmae pipeline --config configs/pipeline_fmnist.yaml --out $(DEMO_OUT) --resume

bench: install dataset
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_masking.py
	$(PY) benchmarks/bench_attention.py

# On one CUDA GPU, <= 8 min: CUDA tests, ViT-B/16 pretraining/fine-tuning img/s, MFU, loader; writes
# results/gpu_check_<gpu-name>.json. `benchmarks/gpu_check.py --smoke` runs the same paths on the CPU.
gpu-check: install
	$(PY) benchmarks/gpu_check.py

# The environment and caches only: runs/ holds users' runs (the demo's included) and is never deleted.
clean:
	rm -rf $(VENV) .pytest_cache
