# petseg: every entry point installs into .venv first, so a fresh machine needs only `make <target>`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision pinned to the wheels on disk; a resolver must never pick another build.
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install train demo test test-all lint format summary bench export gpu-check clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(PY) -m petseg.train $(ARGS)

demo: $(STAMP)
	$(PY) -m petseg.train data=synthetic trainer.max_epochs=2 data.image_size=64 $(ARGS)

test: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -m "not gpu" $(ARGS)

test-gpu: $(STAMP)
	WANDB_MODE=disabled $(PY) -m pytest -m gpu $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check petseg tests
	$(VENV)/bin/ruff format --check petseg tests

format: $(STAMP)
	$(VENV)/bin/ruff check --fix petseg tests
	$(VENV)/bin/ruff format petseg tests

summary: $(STAMP)
	$(PY) -m petseg.summary $(ARGS)

bench: $(STAMP)
	$(PY) -m petseg.bench $(ARGS)

export: $(STAMP)
	$(PY) -m petseg.export $(ARGS)

# Every GPU path in one run of < 6 min (petseg/gpucheck.py): outputs/gpu-check/latest.{json,md};
# without a GPU, a CPU dry run at tiny sizes. ARGS=--dry-run forces that.
gpu-check: $(STAMP)
	WANDB_MODE=disabled $(PY) -m petseg.gpucheck $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
