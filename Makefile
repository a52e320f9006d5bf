# Every target sets up what it needs on a fresh machine: a .venv with pinned
# dependencies (torch==2.13.0, CPU) and, for tests, the real helm and Prometheus.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_STAMP := .tools/.installed
export PATH := $(CURDIR)/$(BIN):$(CURDIR)/.tools/helm:$(CURDIR)/.tools/kubectl:$(PATH)
# Two CPU cores here; keep torch from oversubscribing them when tests run processes.
export OMP_NUM_THREADS ?= 2

.PHONY: all venv tools kubernetes cluster cluster-down demo test bench lint images crd clean
all: test

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[trainer,operator,runner,dev]'
	touch $@

venv: $(STAMP)

$(TOOLS_STAMP): scripts/install_tools.sh
	bash scripts/install_tools.sh
	touch $@

tools: $(TOOLS_STAMP)

## kubernetes: build the pinned upstream control plane into ~/.cache/adamw-operator (idempotent)
kubernetes:
	bash scripts/install_kubernetes.sh

## cluster: start a local control plane + virtual kubelet under .cluster/ (no Docker)
cluster: $(STAMP) $(TOOLS_STAMP) kubernetes
	$(BIN)/python -m adamw_operator.cluster up

## cluster-down: stop it and remove .cluster/
cluster-down:
	$(BIN)/python -m adamw_operator.cluster down

## demo: run the quickstart training job locally on CPU (no cluster needed)
demo: $(STAMP)
	$(BIN)/python scripts/demo.py

## test: the whole test suite (what CI runs)
test: $(STAMP) $(TOOLS_STAMP) kubernetes
	$(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

## bench: benchmarks; results go to BENCHMARKS.md
bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

lint: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/ruff check trainer_image operator tests scripts benchmarks
	$(BIN)/hadolint --no-color Dockerfile trainer_image/Dockerfile

## crd: regenerate crds/ and the chart's copy from the pydantic models
crd: $(STAMP)
	$(BIN)/python -m adamw_operator.crd.generate --write

images:
	docker build -t adamw-operator:dev -f Dockerfile .
	docker build -t adamw-trainer:dev -f trainer_image/Dockerfile .

clean:
	rm -rf $(VENV) .tools .pytest_cache
