"""`python -m mts_kernels info [--json]`: what was built, what is running, and
which backend serves CPU and CUDA tensors (and why the others cannot)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch


def collect() -> dict:
    import mts_kernels
    from mts_kernels import _extension
    from mts_kernels.ops import _backend

    build = _extension.BUILD_INFO or {}
    gpu = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gpu = {"index": index, "count": torch.cuda.device_count(), "name": props.name,
               "capability": f"{props.major}.{props.minor}",
               "memory_GiB": round(props.total_memory / 2**30, 1),
               "compiled_for_it": _arch_coverage(build.get("cuda_archs", []), props.major, props.minor)}
    backends = {}
    for device in ("cpu", "cuda"):
        dev = torch.device(device)
        avail = {}
        for name in ("cpu", "cuda", "triton", "reference"):
            why = _backend.why_unavailable(name, "leaky_integrate_fwd", dev, torch.float32)
            avail[name] = "available" if why is None else why
        try:
            auto = _backend.resolve("auto", "leaky_integrate_fwd", dev, torch.float32)
        except _backend.BackendUnavailableError as e:
            auto = f"none ({e})"
        backends[device] = {"auto": auto, "backends": avail}
    return {
        "version": mts_kernels.__version__,
        "built_against": {
            "torch": build.get("torch"),
            "cuda": build.get("torch_cuda"),
            "python": build.get("python"),
            "py_limited_api": build.get("py_limited_api"),
            "nvcc": build.get("nvcc"),
            "cuda_archs": build.get("cuda_archs", []),
            # torch's stable ABI: the build serves every torch from torch_target on
            "stable_abi": bool(build.get("stable_abi")),
            "torch_target": build.get("torch_target"),
        },
        "running": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "location": os.path.dirname(os.path.abspath(mts_kernels.__file__)),
        "compiled_kernels": "loaded" if _extension.COMPILED else _extension.UNAVAILABLE_REASON,
        "fallback": _extension.FALLBACK,
        "triton": _triton_version(),
        "triton_interpret": _backend.triton_interpreted(),
        "gpu": gpu,
        "backends": backends,
    }


def _arch_coverage(archs, major: int, minor: int) -> str:
    """How the compiled CUDA kernels run on a GPU of compute capability major.minor."""
    if not archs:
        return "no CUDA kernels were compiled"
    cc = major * 10 + minor

    def num(a):  # "sm_86" -> 86, "compute_90" -> 90
        digits = "".join(ch for ch in a.split("_", 1)[-1] if ch.isdigit())
        return int(digits) if digits else -1

    # A binary for sm_XY runs on X.Z for Z >= Y; PTX for compute_XY is JIT-compiled on any cc >= XY.
    sass = [a for a in archs if a.startswith("sm_") and num(a) // 10 == major and num(a) <= cc]
    if sass:
        return f"yes ({max(sass, key=num)} binary)"
    ptx = [a for a in archs if a.startswith("compute_") and 0 <= num(a) <= cc]
    if ptx:
        return f"yes, by JIT from {max(ptx, key=num)} PTX (slow first call)"
    return (f"no: compiled for {', '.join(archs)} only; rebuild with "
            f"MTS_KERNELS_CUDA_ARCHS={major}.{minor}")


def _triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _print_text(info: dict) -> None:
    b, r = info["built_against"], info["running"]
    print(f"mts_kernels {info['version']}")
    if b["torch"] is None:
        print("  built against: nothing (not compiled)")
    else:
        abi3 = f" ({b['py_limited_api']}-abi3)" if b["py_limited_api"] else ""
        nvcc = f", nvcc {b['nvcc']}" if b["nvcc"] else ""
        cuda = b["cuda"] or "none (CPU-only build)"
        print(f"  built against: torch {b['torch']}, CUDA {cuda}{nvcc}, Python {b['python']}{abi3}")
        if b["stable_abi"]:
            print(f"  torch ABI:     stable, serves torch >= {b['torch_target']}"
                  + (" with the same CUDA major" if b["cuda"] else ""))
    print(f"  running on:    torch {r['torch']}, CUDA {r['cuda']}, Python {r['python']} ({r['platform']})")
    archs = ", ".join(b["cuda_archs"]) or "none (CPU-only build)"
    print(f"  CUDA archs:    {archs}")
    print(f"  location:      {info['location']}")
    print(f"  compiled:      {info['compiled_kernels']}")
    if info["fallback"]:
        print(f"  fallback:      {info['fallback']}")
    print(f"  triton:        {info['triton'] or 'not installed'}"
          + ("  (TRITON_INTERPRET=1)" if info["triton_interpret"] else ""))
    gpu = info["gpu"]
    if gpu:
        print(f"  GPU:           cuda:{gpu['index']} of {gpu['count']}: {gpu['name']} "
              f"(sm {gpu['capability']}, {gpu['memory_GiB']} GiB); compiled kernels for it: "
              f"{gpu['compiled_for_it']}")
    else:
        print("  GPU:           none")
    for device, d in info["backends"].items():
        print(f"  {device} tensors: auto -> {d['auto']}")
        for name, status in d["backends"].items():
            print(f"    {name:<10} {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mts_kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, compiled architectures and available backends")
    p_info.add_argument("--json", action="store_true", help="print the same as JSON, for bug reports")
    args = parser.parse_args(argv)
    if args.command == "info":
        info = collect()
        if args.json:
            json.dump(info, sys.stdout, indent=2)
            print()
        else:
            _print_text(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
