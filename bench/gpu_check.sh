#!/usr/bin/env bash
# bench/gpu_check.sh OUTDIR
#
# One command for a machine with an NVIDIA GPU, torch and triton installed and no
# network (bench/README.md gives the device call). From the repository root
# (wherever it is called from):
#   0. installs the peers' wheels from .whl/ when there (pip --no-index --no-deps
#      --target), and starts compiling accelerated-scan's CUDA kernel in the
#      background (it builds at first import through torch's cpp_extension);
#   1. reuses the in-place build when bench/prebuilt.py check accepts it (built by
#      bench/prebuild_gpu.sh from these very sources, for this torch's stable-ABI
#      floor, CUDA major and GPU architecture; it runs a CUDA scan to be sure);
#      otherwise builds mts_kernels in place for this GPU's architecture only
#      (MTS_KERNELS_CUDA_ARCHS=<capability>, MTS_KERNELS_FORCE_CUDA=1,
#      `python setup.py build_ext --inplace`; CUDA_HOME: $CUDA_HOME, else nvcc on
#      PATH, else /usr/local/cuda),
#   2. prints `python -m mts_kernels info` (a failure there is reported, not fatal),
#   3. runs the CUDA tests: `python -m pytest -m cuda tests`,
#   4. bench/gpu_extra_checks.py all: every CUDA path on tiny shapes, CUDA-graph
#      capture and replay, the chunked scan beside a long kernel on another stream,
#   5. bench/sanitize.sh: compute-sanitizer memcheck, racecheck, synccheck,
#   6. bench/peers.py: ours against accelerated-scan, fla's HGRN and cuDNN,
#   7. the GPU benchmarks: `bench/run.py -m cuda` (JSON, PNGs and a RESULTS.md
#      holding this machine's section, starting from bench/RESULTS.md, all in
#      OUTDIR); the peers' table is appended to that RESULTS.md.
# Every step logs into OUTDIR (summary: OUTDIR/gpu_check.log). A failing step does
# not stop the later ones; the exit status is nonzero if the build, the tests, the
# extra checks, the sanitizers, the peers' run or the benchmarks failed. Each step
# runs under `timeout`, with a share of the overall budget MTS_GPU_CHECK_BUDGET_S
# (default 530 s, so that one device call of at most 9 minutes holds it all with
# the prebuilt extension; a build on the device takes 2-3 minutes of it, and the
# later steps get less). The sequence-length sweep runs only with 240 s left.
# Environment: PYTHON (default: python3, else python, whichever has torch), MAX_JOBS (default 8),
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

# The first interpreter that has torch (on the GPU machine python3 is the one).
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    for c in python3 python; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import torch' 2>/dev/null; then PY=$c; break; fi
    done
    PY=${PY:-python3}
fi
export PYTHON=$PY

BUDGET=${MTS_GPU_CHECK_BUDGET_S:-530}
SECONDS=0
STATUS=0
SUMMARY="$OUT/gpu_check.log"
: > "$SUMMARY"

log() { echo "[gpu_check +${SECONDS}s] $*" | tee -a "$SUMMARY"; }
# MTS_GPU_CHECK_STEPS: the steps after the build to run (names as below: tests extra
# sanitize peers bench; default all), e.g. for a short second call.
STEPS=" ${MTS_GPU_CHECK_STEPS:-tests extra sanitize peers bench} "
want() { case "$STEPS" in *" $1 "*) return 0;; esac; log "$1: not in MTS_GPU_CHECK_STEPS, skipped"; return 1; }
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

# ----------------------------------------------------------------------------- 0. peers
PEERS_SITE=${TMPDIR:-/tmp}/mts_peers_site
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/mts_torch_extensions}
if compgen -G ".whl/*.whl" >/dev/null; then
    if step peers_install 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$PEERS_SITE" .whl/*.whl; then
        export PYTHONPATH="$PEERS_SITE${PYTHONPATH:+:$PYTHONPATH}"
        [ -f .whl/PEERS.txt ] && sed 's/^/  [peers] /' .whl/PEERS.txt | tee -a "$SUMMARY"
        # accelerated_scan.warp compiles its kernel (nvcc, about a minute) at first
        # import: start it now, beside the build and the tests; peers.py waits on
        # torch's lock file if it is not finished by then.
        ( timeout 300 "$PY" -c 'import accelerated_scan.warp' > "$OUT/peer_compile.log" 2>&1;
          echo "exit $?" >> "$OUT/peer_compile.log" ) &
    else
        log "peers: wheels in .whl/ did not install; peers.py will skip them"
    fi
else
    log "peers: no .whl/ (bench/prepare_peers.sh makes it); peers.py will skip the missing peers"
fi

# ----------------------------------------------------------------------------- 1. build
if step prebuilt 90 "$PY" bench/prebuilt.py check; then
    log "build: reusing the prebuilt extension ($(tail -n 1 "$OUT/prebuilt.log"))"
else
    log "build: $(tail -n 1 "$OUT/prebuilt.log"); building here"
    if [ -z "$CUDA_HOME" ]; then
        log "build: no CUDA toolkit (no nvcc on PATH, no /usr/local/cuda); the CUDA kernels cannot be built"
    fi
    if step build "$(cap 360 $(( $(left) - 150 )))" "$PY" setup.py build_ext --inplace; then
        log "build: ok ($(cat mts_kernels/_build_info.py 2>/dev/null | grep BUILD_INFO))"
    else
        log "build: FAILED"
        STATUS=1
    fi
fi

# ----------------------------------------------------------------------------- 2. info
step info 60 "$PY" -m mts_kernels info || log "info: failed (tolerated)"

# ----------------------------------------------------------------------------- 3. tests
# pytest-xdist and pytest-timeout where installed (the GPU machine's image has both):
# test processes side by side on the 16 cores (Triton compiles, host-side checks), and
# no single test (a hung look-back, say) can take the whole step.
PYTEST_EXTRA=()
"$PY" -c 'import xdist' 2>/dev/null && PYTEST_EXTRA+=(-n 6)
"$PY" -c 'import pytest_timeout' 2>/dev/null && PYTEST_EXTRA+=(--timeout 90)
if want tests; then
    step tests "$(cap 150 $(( $(left) - 330 )))" "$PY" -m pytest -m cuda tests -q -rs -p no:cacheprovider \
        "${PYTEST_EXTRA[@]}"
    rc=$?
    if [ $rc -eq 5 ]; then
        log "tests: no CUDA-marked tests collected"
    elif [ $rc -ne 0 ]; then
        log "tests: FAILED"
        STATUS=1
    fi
fi

# ----------------------------------------------------------------------------- 4. extra checks
if want extra && ! step extra_checks "$(cap 60 $(( $(left) - 280 )))" "$PY" bench/gpu_extra_checks.py all; then
    log "extra checks: FAILED"
    STATUS=1
fi

# ----------------------------------------------------------------------------- 5. sanitizers
SAN=$(cap 150 $(( $(left) - 220 )))
if want sanitize && ! step sanitize $(( SAN + 20 )) bench/sanitize.sh "$OUT" "$SAN"; then
    log "sanitize: FAILED (or cut short)"
    STATUS=1
fi

# ----------------------------------------------------------------------------- 6. peers
if want peers && ! step peers "$(cap 150 $(( $(left) - 90 )))" "$PY" bench/peers.py --out "$OUT"; then
    log "peers: FAILED"
    STATUS=1
fi

# ----------------------------------------------------------------------------- 7. benchmarks
[ -f bench/RESULTS.md ] && [ ! -f "$OUT/RESULTS.md" ] && cp bench/RESULTS.md "$OUT/RESULTS.md"
MARK="cuda"
if [ "$(left)" -lt 240 ]; then
    MARK="cuda and not sweep"
    log "bench: $(left)s left, skipping the sequence-length sweep"
fi
if want bench && ! step bench "$(cap 600 $(( $(left) - 5 )))" "$PY" bench/run.py --results-dir "$OUT" --md "$OUT/RESULTS.md" \
        --no-autosave -m "$MARK" -p no:cacheprovider; then
    log "bench: FAILED"
    STATUS=1
fi
if [ -f "$OUT/peers.md" ]; then
    { echo; cat "$OUT/peers.md"; } >> "$OUT/RESULTS.md"
fi

log "done in ${SECONDS}s, exit $STATUS; files in $OUT:"
ls -l "$OUT" | tee -a "$SUMMARY"
grep -E "^\[gpu_check" "$SUMMARY" | grep -E ": exit|FAILED|TIMED OUT|reusing|building here" | tail -n 20
exit $STATUS
