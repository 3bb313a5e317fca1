"""Whether the in-place mts_kernels build can be reused on this GPU machine.

    python bench/prebuilt.py stamp     # after a build: record the sources it was built from
    python bench/prebuilt.py check     # exit 0: reuse it; else print why not (exit 1)

bench/prebuild_gpu.sh builds the extension on a machine without a GPU (against the torch
stable-ABI floor, for the GPU's architecture) and stamps it; the built files travel with
the working tree to the GPU machine, where bench/gpu_check.sh runs `check` and builds only
when it fails. `stamp` appends SOURCE_HASH (sha256 of setup.py and every file under csrc/)
to mts_kernels/_build_info.py. `check` passes when all of these hold:
  - mts_kernels/_C*.so and _build_info.py exist, and SOURCE_HASH matches the tree's sources
    (a build from other sources is stale even if it loads);
  - the build suits the running torch (mts_kernels._extension's own rule: for a stable-ABI
    build, torch >= its floor and the same CUDA major) and this GPU's architecture is among
    its cuda_archs as machine code (sm_XY, not only PTX to be compiled at load);
  - importing mts_kernels loads _C with a CUDA kernel for linear_scan, and a chunked
    linear_scan on the GPU matches the reference loop.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INFO = ROOT / "mts_kernels" / "_build_info.py"


def source_hash(root: Path = ROOT) -> str:
    h = hashlib.sha256()
    files = [root / "setup.py"] + sorted(p for p in (root / "csrc").rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def read_info(path: Path = INFO) -> dict:
    scope: dict = {}
    exec(compile(path.read_text(), str(path), "exec"), scope)
    return scope


def stamp(path: Path = INFO, root: Path = ROOT) -> str:
    text = path.read_text()
    text = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("SOURCE_HASH"))
    digest = source_hash(root)
    if not text.endswith("\n"):
        text += "\n"
    path.write_text(text + f"SOURCE_HASH = {digest!r}\n")
    return digest


def why_not(root: Path = ROOT) -> str | None:
    """None when the in-place build can be reused here, else the reason."""
    info_path = root / "mts_kernels" / "_build_info.py"
    if not info_path.exists() or not list((root / "mts_kernels").glob("_C*.so")):
        return "no prebuilt mts_kernels/_C*.so and _build_info.py in the tree"
    scope = read_info(info_path)
    info = scope.get("BUILD_INFO") or {}
    if scope.get("SOURCE_HASH") != source_hash(root):
        return "the prebuilt extension was built from other sources (SOURCE_HASH differs or is missing)"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    from mts_kernels import _extension  # the package import itself tolerates a mismatch (warns)

    why = _extension._mismatch(info)
    if why:
        return f"the prebuilt extension does not suit torch {torch.__version__}: {why}"
    arch = "sm_%d%d" % torch.cuda.get_device_capability()
    if arch not in info.get("cuda_archs", []):
        return f"the prebuilt extension has no {arch} code (cuda_archs {info.get('cuda_archs')})"
    if not _extension.COMPILED or not _extension.has_kernel("linear_scan_fwd", "CUDA"):
        return f"mts_kernels._C did not load with CUDA kernels: {_extension.UNAVAILABLE_REASON}"
    import mts_kernels
    from mts_kernels import reference

    g = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 300, 8, generator=g) * 0.9).double()  # B * D = 16, T >= 64: chunked
    x = torch.randn(2, 300, 8, generator=g).double()
    h = mts_kernels.linear_scan(a.float().cuda(), x.float().cuda(), backend="cuda").cpu().double()
    ref = reference.linear_scan(a, x)
    err = ((h - ref).norm() / ref.norm()).item()
    if not err < 1e-5:
        return f"the prebuilt extension's CUDA linear_scan is wrong (relative error {err:.2e})"
    return None


def main(argv):
    if argv[1:] == ["stamp"]:
        print(f"SOURCE_HASH {stamp()} written to {INFO}")
        return 0
    if argv[1:] == ["check"]:
        try:
            reason = why_not()
        except Exception as e:  # noqa: BLE001 (any failure means: build instead)
            reason = f"{type(e).__name__}: {e}"
        if reason is None:
            info = read_info(INFO)["BUILD_INFO"]
            print(f"prebuilt extension usable: {info.get('version')}, built with torch {info.get('torch')}, "
                  f"archs {info.get('cuda_archs')}")
            return 0
        print(f"prebuilt extension not used: {reason}")
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.pop("MTS_KERNELS_BACKEND", None)
    sys.exit(main(sys.argv))
