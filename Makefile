# uMedGround — see README.md. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
SYNTHCXR := ln_data/synthcxr
TINY := pretrained/tiny
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PYTHONHASHSEED := 0

.PHONY: install data tiny demo demo-seeds bench bench-device app test test-fast lint clean

install: $(VENV)/.installed

# The last step builds DeepSpeed's shared-memory communication op, which its CPU backend would
# otherwise compile (~40 s on 2 cores) when training first starts (into TORCH_EXTENSIONS_DIR;
# nothing to build on GPUs).
$(VENV)/.installed: requirements.txt requirements-torch.txt requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-torch.txt
	$(VPY) -m pip install -q -r requirements.txt
	$(VPY) -m pip install -q -r requirements-dev.txt
	$(VPY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	touch $@

data: $(SYNTHCXR)/pretrain/meta.json

# One command writes the benchmark and its pretraining set (meta.json last).
$(SYNTHCXR)/pretrain/meta.json: $(VENV)/.installed
	$(VPY) -m utils.synthcxr --out $(SYNTHCXR) --seed 0

tiny: $(TINY)/sam_tiny.pth

# Pretrains the tiny LM and SAM on the pretraining set; figures in $(TINY)/pretraining.json.
$(TINY)/sam_tiny.pth: $(SYNTHCXR)/pretrain/meta.json
	$(VPY) -m utils.tiny_checkpoints --data $(SYNTHCXR) --out $(TINY)

demo: tiny
	bash scripts/demo.sh

demo-seeds: tiny
	for seed in 0 1 2; do DEMO_SEED=$$seed DEMO_RUN=runs/demo_seed$$seed bash scripts/demo.sh; done

DEVICE ?= cpu
# With DEVICE=cuda, bench-device refuses at once (before data and tiny are built) when torch
# sees no GPU.
bench: $(if $(filter cuda,$(DEVICE)),bench-device) tiny
	$(VPY) -m utils.bench --out runs/bench --device $(DEVICE) $(if $(BENCH_QUICK),--quick)

bench-device: install
	$(VPY) -m utils.bench --device $(DEVICE) --check_device

app: install
	test -f runs/demo/hf/config.json || { echo "runs/demo/hf is missing: run make demo first"; exit 1; }
	$(VPY) -m pip install -q -r requirements-app.txt
	$(VPY) app.py --version runs/demo/hf --examples_dir $(SYNTHCXR)

test: install
	$(VPY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

test-fast: install
	$(VPY) -m pytest -q -m "not slow" tests

clean:
	rm -rf runs/demo runs/demo_seed0 runs/demo_seed1 runs/demo_seed2 runs/bench $(SYNTHCXR) $(TINY)
