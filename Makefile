# medseg-bench: `make demo` installs and runs the benchmark loop on Task04_Hippocampus; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned here (the install step), not in pyproject.toml: users install the build that fits their GPU.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SHARED_TASK := ../shared/data/Task04_Hippocampus
DEMO_RESULTS ?= results
DEMO_SWEEP := --task Task04_Hippocampus --arch unet --loss dice_ce --aug none --epochs 8 --iters-per-epoch 50
DEMO_FETCH := $(if $(wildcard $(SHARED_TASK)/dataset.json),--source $(SHARED_TASK),)

.PHONY: install demo test test-slow test-faults lint bench clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medseg-bench fetch Task04_Hippocampus $(DEMO_FETCH)
	$(BIN)/medseg-bench sweep $(DEMO_SWEEP) --results-dir $(DEMO_RESULTS)
	$(BIN)/medseg-bench report --results-dir $(DEMO_RESULTS) --task Task04_Hippocampus

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

# Fault injection (kill -9 loops, disk full, bad checkpoints) and a real one-node SLURM cluster: needs root.
test-faults: install
	$(BIN)/python -m pytest -q -m "faults or slurm"

lint: install
	$(BIN)/ruff check medseg_bench tests bench
	$(BIN)/mypy medseg_bench
	$(BIN)/vermin -q --no-tips -t=3.10- --violations --eval-annotations medseg_bench tests bench

bench: install
	$(BIN)/python bench/sweep.py --repeats 3
	$(BIN)/python bench/metrics.py --repeats 5 --skip-medpy
	$(BIN)/python bench/preprocess.py
	$(BIN)/python bench/preprocess_memory.py
	$(BIN)/python bench/inference_memory.py
	$(BIN)/python bench/held_memory.py
	$(BIN)/python bench/nnunet_parity.py
	$(BIN)/python bench/results_scale.py --repeats 3
	$(BIN)/python bench/train.py --cases 24 --epochs 3 --iters 15 --repeats 4

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
