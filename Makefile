# Two commands: `make run` (the dashboard) and `make test` (the whole suite). Both bootstrap .venv and install the
# project into it in editable mode (pyproject.toml; runtime pins in requirements.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# The dashboard listens on this machine only. Sharing it on a network is explicit: `make run HOST=0.0.0.0`
# (only a make command-line setting counts; a HOST in the environment, e.g. zsh's host name, is ignored).
ifneq ($(origin HOST),command line)
HOST := 127.0.0.1
endif
# optional integrations the suite exercises (pyproject.toml [project.optional-dependencies])
TEST_EXTRAS := test,onnx,hf,torchao,pruning,ray

.PHONY: run test venv venv-test system-deps cli-demo bench

# runtime only: `make run` never installs test tools
$(VENV)/.installed: pyproject.toml requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml requirements.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(TEST_EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

venv-test: $(VENV)/.installed-test

run: venv
	$(VENV)/bin/compression-explorer-app --server.address $(HOST) --server.port $(PORT)

system-deps:
	bash scripts/system-deps.sh

test: venv-test system-deps
	$(PY) -m pytest

cli-demo: venv
	$(VENV)/bin/compression-explorer sweep --model lenet5 --dataset mnist --bits 2,4,8,32 --sparsity 0,0.5,0.9

bench: venv
	$(PY) benchmarks/sweep_speed.py
	$(PY) benchmarks/explore_latency.py
