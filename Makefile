# jizhi — two entry points: `make run` (the main job on the bundled example) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU build of torch is installed first so that nothing else pulls the multi-GB CUDA wheels.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install services run test lint typecheck unit bench clean

$(STAMP): pyproject.toml setup.py simulator/_cache.pyx simulator/_zipf.pyx
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(STAMP)

# Servers the integration tests start themselves on loopback (Redis, Prometheus + promtool).
services:
	./scripts/install-services.sh

run: install
	$(BIN)/jizhi tune examples/ctr.yaml --trials 30 --out runs/tune

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -m "not integration"

test: services lint typecheck
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/simulator_speed.py

clean:
	rm -rf $(VENV) build *.egg-info simulator/_cache.cpp simulator/*.so
