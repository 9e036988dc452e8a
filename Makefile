# Two commands a newcomer needs: `make repro` (run the DAG) and `make test`. Both create .venv if missing.
# `make demo-weights` regenerates the demo CLIP's shipped weights (data/demo/backbone; ~45 min on 2 cores), which
# `make repro` only reads.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: repro test lint bench gpu-check demo-weights clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned: torch 2.14.1 with its matching torchvision.
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

repro: $(STAMP)
	test -d .dvc || $(BIN)/dvc init --quiet
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

demo-weights: $(STAMP)
	$(BIN)/ship pretrain-demo --out data/demo/backbone

test: $(STAMP)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline stages tests benchmarks
	$(BIN)/ruff format --check pipeline stages tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/extraction_efficiency.py
	$(BIN)/python benchmarks/finetune_neighbour.py
	$(BIN)/python benchmarks/cached_vs_reference_vitb16.py

# Run first on a GPU machine: the project's extraction (AMP vs float32), generator and fine-tuning on the device, one
# table, exit 1 on a failure (benchmarks/gpu_check.py; ~1-3 min on one H100). Without a GPU: ARGS="--device cpu --tiny".
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py $(ARGS)

clean-venv:
	rm -rf $(VENV)
