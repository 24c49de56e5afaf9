# petseg: every entry point installs into .venv first, so a fresh machine needs only `make <target>`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned to the wheels on disk; a resolver must never pick another build.
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: help install train demo test test-gpu lint format summary bench export gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[dev]'
	touch $(STAMP)

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(STAMP)  ## create .venv and install petseg with torch pinned

train: $(STAMP)  ## python -m petseg.train $(ARGS)
	$(PY) -m petseg.train $(ARGS)

demo: $(STAMP)  ## 2 epochs on a generated dataset, 64 px
	$(PY) -m petseg.train data=synthetic trainer.max_epochs=2 data.image_size=64 $(ARGS)

test: $(STAMP)  ## the suite (all but gpu tests)
	WANDB_MODE=disabled $(PY) -m pytest -m "not gpu" $(ARGS)

test-gpu: $(STAMP)  ## the tests that need a CUDA device
	WANDB_MODE=disabled $(PY) -m pytest -m gpu $(ARGS)

lint: $(STAMP)  ## ruff check + format check
	$(VENV)/bin/ruff check petseg tests
	$(VENV)/bin/ruff format --check petseg tests

format: $(STAMP)  ## ruff fix + format
	$(VENV)/bin/ruff check --fix petseg tests
	$(VENV)/bin/ruff format petseg tests

summary: $(STAMP)  ## parameters and mult-adds of every model
	$(PY) -m petseg.summary $(ARGS)

bench: $(STAMP)  ## speed ratios (pipeline, Lightning vs plain loop, models)
	$(PY) -m petseg.bench $(ARGS)

export: $(STAMP)  ## python -m petseg.export $(ARGS) (ONNX)
	$(PY) -m petseg.export $(ARGS)

# Every GPU path in one run of < 6 min (petseg/gpucheck.py): outputs/gpu-check/latest.{json,md};
# without a GPU, a CPU dry run at tiny sizes. ARGS=--dry-run forces that.
gpu-check: $(STAMP)  ## every GPU path in one run (< 6 min); a CPU dry run without a GPU
	WANDB_MODE=disabled $(PY) -m petseg.gpucheck $(ARGS)

clean:  ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache
