# Quick start: `make demo` and `make test` create .venv when needed and install what they need.
# torch is pinned: an unpinned torch pulls gigabytes of CUDA packages; 2.13.0 resolves to a CPU
# wheel here. GPU users install their CUDA build of torch first; `pip install -e .` keeps it.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# The suite runs in JOBS worker processes of one thread each (tests/conftest.py): its tests are small tensors and
# subprocesses, which one thread runs about as fast as two, so two workers use both cores of a 2-core machine.
# The long tests go first (tests/conftest.py); xdist's default scheduling deals the first tests out in turn.
JOBS ?= 2

test: $(STAMP)
	$(PY) -m pytest tests -n $(JOBS)

demo: $(STAMP)
	$(VENV)/bin/simclr demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf runs .pytest_cache build *.egg-info src/*.egg-info
