# Two commands do everything on a fresh machine (Python 3.11):
#   make pretrain   MAE pre-training of ViT-Tiny on the built-in dataset (CPU, a few minutes)
#   make test       the test suite (CPU; installs the test-only torch/timm too)
# Both create the virtual environment $(VENV) on first use.

VENV ?= .venv
PYTHON ?= $(shell command -v python3.11 || command -v python3)
PY := $(VENV)/bin/python
WORKDIR ?= runs/mae_tiny_cpu
CONFIG ?= configs/mae_tiny.py:cpu
ARGS ?=
# test processes: whole test files are spread over them (module fixtures share compiled code)
TEST_WORKERS ?= 2

.PHONY: pretrain test venv venv-test benchmark clean

$(VENV)/.core: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	# the package itself, editable (its dependencies are the pinned ones above)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.core requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	# timm's own dependency list asks for torchvision (no CPU build for torch 2.13 here); the
	# tests stub it, so timm goes in without dependencies (its real ones are in the file above).
	$(PY) -m pip install -q --no-deps timm==1.0.31
	touch $@

venv: $(VENV)/.core
venv-test: $(VENV)/.test

pretrain: $(VENV)/.core
	$(PY) scripts/pretrain.py --config $(CONFIG) --workdir $(WORKDIR) $(ARGS)

test: $(VENV)/.test
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests $(ARGS)

benchmark: $(VENV)/.test
	$(PY) scripts/benchmark.py $(ARGS)

clean:
	rm -rf $(VENV) runs
