# uMedGround — see README.md. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
SYNTHCXR := ln_data/synthcxr
TINY := pretrained/tiny
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PYTHONHASHSEED := 0

.PHONY: install data tiny demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-torch.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-torch.txt
	$(VPY) -m pip install -q -r requirements.txt
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

test: install
	$(VPY) -m pytest -q tests

test-fast: install
	$(VPY) -m pytest -q -m "not slow" tests

clean:
	rm -rf runs/demo $(SYNTHCXR) $(TINY)
