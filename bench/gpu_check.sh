#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR
#
# One command for a machine with an NVIDIA GPU, torch and triton installed and no
# network. From the repository root (wherever it is called from):
#   1. builds mts_kernels in place for this GPU's architecture only
#      (MTS_KERNELS_CUDA_ARCHS=<capability>, MTS_KERNELS_FORCE_CUDA=1,
#      `python setup.py build_ext --inplace`; CUDA_HOME: $CUDA_HOME, else nvcc on
#      PATH, else /usr/local/cuda),
#   2. prints `python -m mts_kernels info` (a failure there is reported, not fatal),
#   3. runs the CUDA tests: `python -m pytest -m cuda tests`,
#   4. runs the GPU benchmarks: `bench/run.py -m cuda` (JSON, PNGs and a RESULTS.md
#      holding this machine's section, starting from bench/RESULTS.md, all in OUTDIR).
# Every step logs into OUTDIR (summary: OUTDIR/gpu_check.log). A failing step does
# not stop the later ones; the exit status is nonzero if the build, the tests or
# the benchmarks failed. Each step runs under `timeout`, within an overall budget
# of MTS_GPU_CHECK_BUDGET_S seconds (default 570: under 10 minutes on an H100).
# The sequence-length sweep is skipped when less than 240 s are left for it.
# Environment: PYTHON (default python, else python3), MAX_JOBS (default 8),
# MTS_BENCH_BUDGET_S (timed seconds per benchmark, default 1 here).

set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif command -v python >/dev/null 2>&1; then PY=python
else PY=python3
fi

BUDGET=${MTS_GPU_CHECK_BUDGET_S:-570}
SECONDS=0
STATUS=0
SUMMARY="$OUT/gpu_check.log"
: > "$SUMMARY"

log() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - SECONDS )); }
cap() { # cap N M -> min(N, M), at least 10
    local n=$1 m=$2; [ "$m" -lt "$n" ] && n=$m; [ "$n" -lt 10 ] && n=10; echo "$n"; }

# step NAME LIMIT_S CMD...: runs CMD under timeout, output to OUTDIR/NAME.log (and the
# last lines to the terminal); returns CMD's status (124: timed out).
step() {
    local name=$1 limit=$2; shift 2
    log "== $name (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log" | sed "s/^/  [$name] /"
    [ $rc -eq 124 ] && log "$name: TIMED OUT after ${limit}s"
    log "$name: exit $rc (log: $OUT/$name.log)"
    return $rc
}

# ----------------------------------------------------------------------------- environment
# A toolkit root has bin/nvcc and the runtime headers (an nvcc wrapper script in
# /usr/local/bin does not make /usr/local a toolkit).
is_toolkit() { [ -n "$1" ] && [ -x "$1/bin/nvcc" ] && { [ -f "$1/include/cuda_runtime.h" ] ||
    compgen -G "$1/targets/*/include/cuda_runtime.h" >/dev/null; }; }
CANDIDATES=("${CUDA_HOME:-}")
if command -v nvcc >/dev/null 2>&1; then
    CANDIDATES+=("$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")")
fi
CANDIDATES+=(/usr/local/cuda)
FOUND=
for c in "${CANDIDATES[@]}"; do
    if is_toolkit "$c"; then FOUND=$c; break; fi
done
CUDA_HOME=$FOUND
if [ -n "$CUDA_HOME" ]; then
    export CUDA_HOME
    export PATH="$CUDA_HOME/bin:$PATH"
fi

ARCH=$("$PY" -c 'import torch;print("%d.%d"%torch.cuda.get_device_capability())' 2>/dev/null)
export MTS_KERNELS_CUDA_ARCHS=${ARCH:-9.0}
export MTS_KERNELS_FORCE_CUDA=1
export MAX_JOBS=${MAX_JOBS:-8}
export MTS_BENCH_BUDGET_S=${MTS_BENCH_BUDGET_S:-1}
export PYTHONDONTWRITEBYTECODE=1
unset TRITON_INTERPRET

log "repo $ROOT, python $(command -v "$PY"), CUDA_HOME=${CUDA_HOME:-<none>}, arch ${ARCH:-<unknown: torch sees no GPU>}, budget ${BUDGET}s"
step env 60 bash -c "
    nvidia-smi || true
    echo; command -v nvcc && nvcc --version || echo 'nvcc: not found'
    echo; '$PY' -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"available\", torch.cuda.is_available())'
    '$PY' -c 'import triton; print(\"triton\", triton.__version__)' || true
    '$PY' -m pip list 2>/dev/null | grep -i -E 'torch|triton|pytest|ninja|numpy|setuptools|matplotlib' || true
    git -C '$ROOT' log -1 --oneline 2>/dev/null; git -C '$ROOT' status --short 2>/dev/null | head -30
" || true

# ----------------------------------------------------------------------------- 1. build
if [ -z "$CUDA_HOME" ]; then
    log "build: no CUDA toolkit (no nvcc on PATH, no /usr/local/cuda); the CUDA kernels cannot be built"
fi
if step build "$(cap 360 $(( $(left) - 150 )))" "$PY" setup.py build_ext --inplace; then
    log "build: ok ($(cat mts_kernels/_build_info.py 2>/dev/null | tail -n 1))"
else
    log "build: FAILED"
    STATUS=1
fi

# ----------------------------------------------------------------------------- 2. info
step info 60 "$PY" -m mts_kernels info || log "info: failed (tolerated)"

# ----------------------------------------------------------------------------- 3. tests
step tests "$(cap 300 $(( $(left) - 150 )))" "$PY" -m pytest -m cuda tests -q -rs -p no:cacheprovider
rc=$?
if [ $rc -eq 5 ]; then
    log "tests: no CUDA-marked tests collected"
elif [ $rc -ne 0 ]; then
    log "tests: FAILED"
    STATUS=1
fi

# ----------------------------------------------------------------------------- 4. benchmarks
[ -f bench/RESULTS.md ] && [ ! -f "$OUT/RESULTS.md" ] && cp bench/RESULTS.md "$OUT/RESULTS.md"
MARK="cuda"
if [ "$(left)" -lt 240 ]; then
    MARK="cuda and not sweep"
    log "bench: $(left)s left, skipping the sequence-length sweep"
fi
if ! step bench "$(cap 600 $(( $(left) - 5 )))" "$PY" bench/run.py --results-dir "$OUT" --md "$OUT/RESULTS.md" \
        --no-autosave -m "$MARK" -p no:cacheprovider; then
    log "bench: FAILED"
    STATUS=1
fi

log "done in ${SECONDS}s, exit $STATUS; files in $OUT:"
ls -l "$OUT" | tee -a "$SUMMARY"
exit $STATUS
