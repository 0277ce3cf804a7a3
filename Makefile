# Two targets do everything on a fresh machine (Debian, Python 3.11):
#   make demo   set up, then run the demo campaign (workflows/demo.yaml)
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch installs from the machine's wheel store; on a GPU machine
# install the CUDA build of the same version first (see README) and this step is a no-op.
TORCH  ?= torch==2.13.0
# GPAW is built from source here, against this environment's MPICH (never a cached serial
# wheel); the pin matches pyproject.toml's dft extra.
GPAW   ?= gpaw==26.7.0

# GPAW (the DFT code of the validate stage) compiles against these Debian packages.
SYSDEPS := libxc-dev libopenblas-dev libfftw3-dev

.PHONY: setup sysdeps browser-deps demo demo-dft test test-heavy test-dft test-mpi test-browser test-slurm test-all lint bench wheelhouse clean

# Installs the system libraries GPAW builds against when run as root on Debian/Ubuntu;
# elsewhere it says what is missing (install them, or the equivalents, yourself).
sysdeps:
	@if command -v dpkg >/dev/null && ! dpkg -s $(SYSDEPS) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSDEPS) >/dev/null; \
	  else echo "GPAW needs: sudo apt-get install $(SYSDEPS)"; exit 1; fi; \
	fi

# The dashboard's end-to-end test drives a headless Chromium (only that test needs it).
browser-deps:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "the browser test needs: sudo apt-get install chromium chromium-driver"; exit 1; fi; \
	fi

# Set-up prints one line per step; everything the step prints (pip, compilers) goes to SETUP_LOG.
# A failed step names itself and the log, shows the log's last 30 lines and stops make.
SETUP_LOG ?= build/setup.log
STEP = sh -c 'what=$$1; shift; printf "%s ... " "$$what"; \
  if "$$@" >>"$(SETUP_LOG)" 2>&1; then echo done; else rc=$$?; echo FAILED; \
    echo "make setup: \"$$what\" failed (exit $$rc); full log: $(SETUP_LOG), last 30 lines:" >&2; \
    tail -n 30 "$(SETUP_LOG)" >&2; exit 1; fi' step

$(BIN)/hts: pyproject.toml
	@mkdir -p $(dir $(SETUP_LOG)) && echo "make setup: $$(date)" >$(SETUP_LOG)
	@echo "setting up $(VENV) (full output in $(SETUP_LOG))"
	@$(STEP) "system libraries for GPAW ($(SYSDEPS))" $(MAKE) --no-print-directory sysdeps
	@$(STEP) "creating the virtual environment $(VENV)" $(PYTHON) -m venv $(VENV)
	@$(STEP) "upgrading pip" $(BIN)/pip install --upgrade pip
	@$(STEP) "installing $(TORCH) and MPICH" $(BIN)/pip install "$(TORCH)" mpich==5.0.2
	@$(STEP) "building $(GPAW) against MPICH (about a minute)" \
	  env GPAW_CONFIG=$(CURDIR)/containers/gpaw/siteconfig.py GPAW_MPICXX=$(CURDIR)/$(BIN)/mpicxx \
	  $(BIN)/pip install --no-cache-dir --no-binary gpaw "$(GPAW)"
	@$(STEP) "building icet==4.0 from its sdist (C++, about a minute)" $(BIN)/pip install icet==4.0
	@$(STEP) "installing hts and its dependencies (.[test,dft,browser])" \
	  $(BIN)/pip install -e ".[test,dft,browser]"
	@touch $@
	@echo "set up: $(VENV)"

setup: $(BIN)/hts

demo: setup
	$(BIN)/hts run

demo-dft: setup
	$(BIN)/hts run workflows/demo-dft.yaml

# the default suite in TEST_WORKERS processes (pytest-xdist): one per core of a 2-core machine
TEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check hts tests benchmarks
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# end-to-end runs whose code paths cheaper default tests also cover (real tiny distillations
# with SevenNet-0 labels); kept out of make test for its time, CI runs them
test-heavy: setup
	$(BIN)/python -m pytest -m heavy

# real DFT (GPAW) through the validate stage: slow for a unit test, so selected apart; CI runs it
test-dft: setup
	$(BIN)/python -m pytest -m dft

# MPI mode (mpiexec from the environment's MPICH) against the thread pool; CI runs it
test-mpi: setup
	$(BIN)/python -m pytest -m mpi

# the dashboard in a real headless Chromium against a running campaign; CI runs it
test-browser: setup browser-deps
	$(BIN)/python -m pytest -m browser

# hts submit against a real single-node Slurm (slurm-wlm + munge, installed as root if missing),
# brought up by .ci/slurm.sh and stopped by PID afterwards whatever the tests did; CI runs it
SLURM_DIR ?= /tmp/hts-slurm
test-slurm: setup
	@HTS_SLURM_DIR=$(SLURM_DIR) .ci/slurm.sh start
	@SLURM_CONF=$(SLURM_DIR)/slurm.conf $(BIN)/python -m pytest -m slurm; rc=$$?; \
	  HTS_SLURM_DIR=$(SLURM_DIR) .ci/slurm.sh stop; exit $$rc

test-all: setup
	$(BIN)/python -m pytest -m ""

lint: setup
	$(BIN)/ruff check hts tests benchmarks

bench: setup
	$(BIN)/python benchmarks/scale.py
	$(BIN)/python benchmarks/overhead.py

# A folder of wheels that installs hts where there is no package index (a cluster's GPU
# nodes); built here, where there is one (scripts/wheelhouse.py says how):
#   make wheelhouse PY=3.12 PLATFORM=manylinux_2_28_x86_64 OUT=wheelhouse
#   (there)  pip install --no-index --find-links wheelhouse hts
# PY and PLATFORM default to this machine's. torch is left out (the target has its own CUDA
# build) unless WITH_TORCH=yes, from TORCH_INDEX if given (a CUDA variant's index, e.g.
# https://download.pytorch.org/whl/cu128). EXTRAS=test,browser adds extras (not dft: GPAW is
# built on the target). SKIP names packages the target has, or @file of them
# (scripts/gpu-image.skip: the project's GPU machine, for benchmarks/gpu.sh).
PY          ?=
PLATFORM    ?=
OUT         ?= wheelhouse
EXTRAS      ?=
WITH_TORCH  ?= no
TORCH_INDEX ?=
SKIP        ?=
wheelhouse:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) scripts/wheelhouse.py --out "$(OUT)" \
	  --torch $(WITH_TORCH) $(if $(PY),--python $(PY)) $(if $(PLATFORM),--platform $(PLATFORM)) \
	  $(if $(EXTRAS),--extras $(EXTRAS)) $(if $(TORCH_INDEX),--torch-index $(TORCH_INDEX)) \
	  $(if $(SKIP),--skip $(SKIP))

clean:
	rm -rf demo.zarr demo.zarr.parsl demo-dft.zarr demo-dft.zarr.parsl demo-dft.zarr.dft export runinfo
