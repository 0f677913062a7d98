# Two commands: `make run` (the dashboard) and `make test` (the whole suite). Both bootstrap .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8501
# The dashboard listens on this machine only. Sharing it on a network is explicit: `make run HOST=0.0.0.0`
# (only a make command-line setting counts; a HOST in the environment, e.g. zsh's host name, is ignored).
ifneq ($(origin HOST),command line)
HOST := 127.0.0.1
endif

.PHONY: run test venv system-deps cli-demo bench

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

run: venv
	$(PY) -m streamlit run dashboard/app.py --server.address $(HOST) --server.port $(PORT) --server.headless true

system-deps:
	bash scripts/system-deps.sh

test: venv system-deps
	$(PY) -m pytest

cli-demo: venv
	$(PY) -m compression_core sweep --model lenet5 --dataset mnist --bits 2,4,8,32 --sparsity 0,0.5,0.9

bench: venv
	$(PY) benchmarks/sweep_speed.py
	$(PY) benchmarks/explore_latency.py
