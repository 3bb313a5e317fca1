# make test   : set up .venv, build (CPU + CUDA kernels when a toolkit is found), run the tests
# make bench  : the benchmarks; JSON under bench/results/, summary in bench/RESULTS.md
# make build  : (re)build the extension in place
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# pip on the CI machine takes the cu130 build of this torch from local disk.
TORCH_SPEC ?= torch==2.14.1
DEPS := ninja numpy pytest pytest-benchmark setuptools wheel matplotlib tqdm
MAX_JOBS ?= 2
export MAX_JOBS
# torch's own guess (/usr/local) is wrong where the toolkit lives in /usr/local/cuda only.
ifeq ($(origin CUDA_HOME),undefined)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME := /usr/local/cuda
endif
endif

.PHONY: venv build test bench clean

$(VENV)/.deps-installed:
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)" $(DEPS)
	touch $@

venv: $(VENV)/.deps-installed

build: venv
	$(VPY) -m pip install -q --no-build-isolation -e .
	$(VPY) -m mts_kernels info

test: build
	$(VPY) -m pytest -q tests

bench: build
	$(VPY) bench/run.py

clean:
	rm -rf build dist *.egg-info mts_kernels/_C*.so mts_kernels/_build_info.py
