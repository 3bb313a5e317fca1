#!/usr/bin/env bash
# bench/prebuild_gpu.sh [ARCHS]
#
# Builds mts_kernels in place for the GPU machine (default ARCHS 9.0: the H200)
# on this machine, which needs nvcc but no GPU, so bench/gpu_check.sh there
# reuses it instead of spending device time compiling. Every host source is
# built against torch's stable ABI with the floor setup.py names (TORCH_TARGET,
# 2.11), so the binary built here with a newer torch loads under the GPU
# machine's torch 2.11 (CUDA 13 there and here: a stable-ABI build needs the
# same CUDA major). Objects go to build/prebuild-sm<ARCHS> so the regular build's
# stay; the resulting mts_kernels/_C.abi3.so (debug info stripped, to travel
# light) and _build_info.py (stamped with the sources' hash by bench/prebuilt.py)
# replace the in-place build, which serves this machine's CPU tests all the same.
# Carry both to the device (bench/README.md gives the call).
# Environment: PYTHON (default .venv/bin/python, else python3), CUDA_HOME
# (default /usr/local/cuda), MAX_JOBS (default 2).
set -eu -o pipefail
cd "$(dirname "$0")/.."
ARCHS=${1:-9.0}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-2}
export MTS_KERNELS_CUDA_ARCHS=$ARCHS MTS_KERNELS_FORCE_CUDA=1
TAG=$(echo "$ARCHS" | tr -cd '0-9;' | tr ';' '_')
"$PY" setup.py build_ext --inplace --build-temp "build/prebuild-sm$TAG"
strip --strip-debug mts_kernels/_C.abi3.so
"$PY" bench/prebuilt.py stamp
ls -l mts_kernels/_C.abi3.so
tail -n 2 mts_kernels/_build_info.py
