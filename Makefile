# make demo   : set up .venv, build, train the sequence-generation and copy-memory demos (demo/;
#               within 5 min on 2 cores)
# make test   : set up .venv, build (CPU + CUDA kernels when a toolkit is found), run the tests
# make test-asan : the CPU kernels built with ASan + UBSan in build-asan/ (the regular build
#               untouched), and the CPU test subset ASAN_TESTS run against them
# make bench  : the benchmarks; JSON under bench/results/, summary in bench/RESULTS.md
# make build  : (re)build the extension in place
# make sdist  : source distribution into dist/ (builds with `pip install --no-build-isolation`)
# make wheel  : binary wheel into dist/, built from that sdist: CPU kernels, plus the CUDA
#               kernels for MTS_KERNELS_CUDA_ARCHS when a toolkit is found (no GPU needed)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
# pip on the CI machine takes the cu130 build of this torch from local disk.
TORCH_SPEC ?= torch==2.14.1
DIST ?= dist
# e.g. PIP_WHEEL_FLAGS=-v to see the compiler run
PIP_WHEEL_FLAGS ?=
DEPS := ninja numpy pytest pytest-benchmark hypothesis setuptools wheel matplotlib tqdm onnx onnxruntime onnxscript
MAX_JOBS ?= 2
export MAX_JOBS
# torch's own guess (/usr/local) is wrong where the toolkit lives in /usr/local/cuda only.
ifeq ($(origin CUDA_HOME),undefined)
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME := /usr/local/cuda
endif
endif

.PHONY: venv build test test-asan bench demo sdist wheel clean

$(VENV)/.deps-installed:
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q "$(TORCH_SPEC)" $(DEPS)
	touch $@

venv: $(VENV)/.deps-installed

build: venv
	$(VPY) -m pip install -q --no-build-isolation -e .
	$(VPY) -m mts_kernels info

# --durations: the slowest tests in the log, to keep the suite within its 30 minutes
test: build
	$(VPY) -m pytest -q --durations=25 tests

# The sanitizer build: a copy of the package in $(ASAN_DIR)/pkg with a _C compiled
# with -fsanitize=address,undefined (setup.py, MTS_KERNELS_SANITIZE=1; CPU kernels
# only). Python itself is not instrumented, so the runtimes are preloaded; leak
# checking is off (the interpreter's own allocations are never freed). python -P:
# the checkout's in-place package must not shadow the copy (conftest.py checks);
# --capture=sys: a sanitizer's report on fd 2 reaches the log.
ASAN_DIR ?= build-asan
ASAN_TESTS ?= tests/test_lengths.py tests/test_hardening.py tests/test_properties.py \
	tests/test_scan_bad_input.py tests/test_scan_registration.py tests/test_clockwork_rnn.py \
	tests/test_scan.py tests/test_leaky_rnn.py tests/test_deep_transition_rnn.py \
	tests/test_leaky_rnn_tangent.py tests/test_clockwork_fused.py \
	tests/test_deep_transition_rnn_higher_order.py tests/test_deep_transition_rnn_persistent.py \
	tests/test_clockwork_rnn_persistent.py tests/test_input_projection.py \
	tests/test_clockwork_projection.py
ASAN_SELECT ?= not triton and not cuda
test-asan: venv
	rm -rf $(ASAN_DIR)/pkg && mkdir -p $(ASAN_DIR)/pkg
	cp -r mts_kernels $(ASAN_DIR)/pkg/
	rm -rf $(ASAN_DIR)/pkg/mts_kernels/_C*.so $(ASAN_DIR)/pkg/mts_kernels/_build_info.py
	find $(ASAN_DIR)/pkg -name __pycache__ -prune -exec rm -rf {} +
	MTS_KERNELS_SANITIZE=1 $(VPY) setup.py -q build_ext --build-lib $(ASAN_DIR)/pkg \
		--build-temp $(ASAN_DIR)/tmp
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	PYTHONPATH=$(ASAN_DIR)/pkg MTS_KERNELS_EXPECT_PACKAGE=$(ASAN_DIR)/pkg \
	$(VPY) -P -m pytest -q -p no:cacheprovider --capture=sys $(ASAN_TESTS) -k "$(ASAN_SELECT)"

bench: build
	$(VPY) bench/run.py

demo: build
	$(VPY) demo/sequence_generation.py
	$(VPY) demo/copy_memory.py

# build_sdist returns the archive's name; $(DIST)/.sdist keeps it for the wheel step.
sdist: venv
	mkdir -p $(DIST)
	$(VPY) -c "from setuptools import build_meta as b; n = b.build_sdist('$(DIST)'); open('$(DIST)/.sdist', 'w').write(n)"
	@echo "sdist: $(DIST)/$$(cat $(DIST)/.sdist)"

# From the sdist, in a temporary directory (what `python -m build` does): the wheel
# holds exactly what the sdist ships, and the in-place build (build/, mts_kernels/_C*.so,
# _build_info.py) is left alone.
wheel: sdist
	$(VPY) -m pip wheel --no-build-isolation --no-deps --no-index --no-cache-dir $(PIP_WHEEL_FLAGS) \
		-w $(DIST) "$(DIST)/$$(cat $(DIST)/.sdist)"
	@ls -1t $(DIST)/*.whl | head -1

clean:
	rm -rf build build-asan dist *.egg-info mts_kernels/_C*.so mts_kernels/_build_info.py
