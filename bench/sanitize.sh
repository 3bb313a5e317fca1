#!/usr/bin/env bash
# bench/sanitize.sh OUTDIR [SECONDS]
#
# compute-sanitizer over bench/gpu_extra_checks.py's workload (tiny shapes over
# every CUDA path of the scans and leaky_rnn; see that file): memcheck on the
# full workload, racecheck and synccheck on its --core subset (they are the slow
# tools). Only mts_kernels' own kernels are instrumented (--kernel-name
# kns=mts: their names hold the mts namespace; torch's and cuBLAS's are not
# ours to check and would multiply the time); if this compute-sanitizer rejects
# that filter, the tool runs unfiltered. Each tool's log is OUTDIR/sanitize-TOOL.log;
# a tool that reports an error, a workload check that fails, or a tool cut off
# by its share of SECONDS (default 150) makes the exit status nonzero.
# Environment: PYTHON (default python, else python3); compute-sanitizer from
# CUDA_HOME/bin, else PATH.
set -u -o pipefail
OUT=${1:?usage: $0 OUTDIR [SECONDS]}
TOTAL=${2:-150}
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 2
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif command -v python >/dev/null 2>&1; then PY=python
else PY=python3
fi
CS=${CUDA_HOME:+$CUDA_HOME/bin/}compute-sanitizer
command -v "$CS" >/dev/null 2>&1 || CS=compute-sanitizer
if ! command -v "$CS" >/dev/null 2>&1; then
    echo "sanitize: compute-sanitizer not found"; exit 2
fi
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SECONDS=0
STATUS=0
TOOLS=(memcheck racecheck synccheck)
for i in "${!TOOLS[@]}"; do
    tool=${TOOLS[$i]}
    left=$(( TOTAL - SECONDS ))
    share=$(( left / (${#TOOLS[@]} - i) ))
    if [ "$share" -lt 20 ]; then
        echo "sanitize: $tool skipped, ${left}s left"; STATUS=1; continue
    fi
    args=(workload)
    [ "$tool" != memcheck ] && args+=(--core)
    log="$OUT/sanitize-$tool.log"
    run() { timeout --kill-after=10 "$share" "$CS" --tool "$tool" --error-exitcode 3 --print-limit 20 \
                "$@" "$PY" bench/gpu_extra_checks.py "${args[@]}" > "$log" 2>&1; }
    run --kernel-name kns=mts
    rc=$?
    if [ $rc -ne 0 ] && grep -q -i -E "unrecognized|invalid.*kernel-name|unknown option" "$log"; then
        echo "sanitize: $tool rejected --kernel-name kns=mts; unfiltered"
        run; rc=$?
    fi
    summary=$(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|gpu_extra_checks workload" "$log" | tr '\n' ' ')
    case $rc in
        0) echo "sanitize: $tool ok ($summary)";;
        124|137) echo "sanitize: $tool TIMED OUT after ${share}s ($summary)"; STATUS=1;;
        3) echo "sanitize: $tool FOUND ERRORS ($summary; log $log)"; STATUS=1;;
        *) echo "sanitize: $tool exit $rc ($summary; log $log)"; STATUS=1;;
    esac
done
exit $STATUS
