# Two targets do everything on a fresh machine (Debian, Python 3.11):
#   make demo   set up, then run the demo campaign (workflows/demo.yaml)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch installs from the machine's wheel store; on a GPU machine
# install the CUDA build of the same version first (see README) and this step is a no-op.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-all lint bench clean

$(BIN)/hts: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/hts

demo: setup
	$(BIN)/hts run

test: setup
	$(BIN)/ruff check hts tests benchmarks
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ""

lint: setup
	$(BIN)/ruff check hts tests benchmarks

bench: setup
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/overhead.py

clean:
	rm -rf demo.zarr demo.zarr.parsl export runinfo
