# uMedGround — see README.md. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3.11
VENV := .venv
VPY := $(VENV)/bin/python
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export PYTHONHASHSEED := 0

.PHONY: install demo test test-fast data tiny clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-torch.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-torch.txt
	$(VPY) -m pip install -q -r requirements.txt
	touch $@

data: install
	$(VPY) -m utils.synthcxr --out ln_data/synthcxr --seed 0

tiny: data
	$(VPY) -m utils.tiny_checkpoints --data ln_data/synthcxr --out pretrained/tiny

demo: tiny
	bash scripts/demo.sh

test: install
	$(VPY) -m pytest -q tests

test-fast: install
	$(VPY) -m pytest -q -m "not slow" tests

clean:
	rm -rf runs/demo ln_data/synthcxr pretrained/tiny
