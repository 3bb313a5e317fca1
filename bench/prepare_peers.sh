#!/usr/bin/env bash
# bench/prepare_peers.sh [ACCELERATED_SCAN_GIT_DIR] [FLA_GIT_DIR]
#
# The peers bench/peers.py compares against, as pure-Python wheels in .whl/
# (ignored by git; carried to the GPU machine, which has no network, and
# installed there with pip --no-deps --target, see bench/README.md):
#   accelerated-scan       (github:proger/accelerated-scan; hatchling build)
#   flash-linear-attention (github:fla-org/flash-linear-attention; setuptools)
# Each argument is a git directory holding that repository (default: the
# mirrors the workplace's fetch tool leaves in /work/.mirror); its HEAD is
# exported with git archive and built with
#   pip wheel --no-deps --no-build-isolation
# by PYTHON (default .venv/bin/python, else python3). hatchling, which
# accelerated-scan's build needs, is installed into a throwaway --target
# folder when PYTHON lacks it. .whl/PEERS.txt records each wheel's commit.
# Their own dependencies on the GPU machine: torch and triton (both there);
# flash-linear-attention also wants transformers and einops (both in that
# machine's image, KINDS.md).
set -eu -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
AS_GIT=${1:-/work/.mirror/proger+accelerated-scan/repo}
FLA_GIT=${2:-/work/.mirror/fla-org+flash-linear-attention/repo}
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p .whl
rm -f .whl/accelerated_scan-*.whl .whl/flash_linear_attention-*.whl
: > .whl/PEERS.txt
if ! "$PY" -c 'import hatchling' 2>/dev/null; then
    "$PY" -m pip install -q --target "$WORK/tools" hatchling
    export PYTHONPATH="$WORK/tools${PYTHONPATH:+:$PYTHONPATH}"
fi
build() { # build NAME GIT_DIR
    local name=$1 git=$2
    mkdir -p "$WORK/$name"
    git -C "$git" archive HEAD | tar x -C "$WORK/$name"
    (cd "$WORK/$name" && "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$ROOT/.whl" .)
    echo "$name $(git -C "$git" rev-parse HEAD) $(git -C "$git" log -1 --format=%cs HEAD)" >> .whl/PEERS.txt
}
build accelerated-scan "$AS_GIT"
build flash-linear-attention "$FLA_GIT"
ls -l .whl
cat .whl/PEERS.txt
