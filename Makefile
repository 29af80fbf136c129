# The README's commands. Each creates .venv on first use and reuses it afterwards.
VENV ?= .venv
PYTHON ?= python3
# On a machine without CUDA, torch is installed first so that pip keeps the CPU build
# (a plain `torch` requirement would pull a multi-GB CUDA build). Override to choose another.
TORCH_CPU ?= torch==2.13.0
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home

STAMP := $(VENV)/.installed

.PHONY: demo test test-fast dev

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	command -v nvidia-smi >/dev/null 2>&1 || $(VENV)/bin/python -m pip install --quiet "$(TORCH_CPU)"
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/raft-assets run --config data/demo_run_config.yaml

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n auto

# The suite without the tests marked `slow` (torchrun, dagster dev, the browser, whole-graph and resume runs, and
# the other tests over about 10 s): for the edit-test loop, 83 to 144 s on 2 cores (README, Development).
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -n auto -m "not slow"

dev: $(STAMP)
	$(VENV)/bin/python -m raft_assets.defs.instance
	$(VENV)/bin/dagster dev -h 127.0.0.1 -p 3000
