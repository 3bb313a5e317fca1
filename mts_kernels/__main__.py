"""`python -m mts_kernels info [--json]`: what was built, what is running, and
which backend serves CPU and CUDA tensors (and why the others cannot)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Optional

import torch


# The forward ops a backend is chosen for (clockwork_rnn runs leaky_rnn_fwd per module).
OPS = {"linear_scan": "linear_scan_fwd", "leaky_integrate": "leaky_integrate_fwd",
       "leaky_rnn": "leaky_rnn_fwd", "clockwork_rnn": "leaky_rnn_fwd",
       "deep_transition_rnn": "deep_transition_rnn_fwd"}


class BadBackendError(ValueError):
    """MTS_KERNELS_BACKEND names no backend (info exits with status 2)."""


def _gpu_missing(device: torch.device) -> Optional[str]:
    """Why no kernel can run on `device` in this process, or None."""
    if device.type == "cuda" and not torch.cuda.is_available():
        why = ("the running torch is a CPU-only build" if torch.version.cuda is None
               else "no CUDA GPU is visible (torch.cuda.is_available() is False)")
        return f"cannot run: {why}"
    return None


def _backends_for(device: torch.device, requested: str) -> dict:
    """Per backend: "available", or why not; per op: the backend that serves its
    float32 calls under `requested` (MTS_KERNELS_BACKEND), or "none (why)".

    why_unavailable only looks at what was built; a built CUDA or Triton backend
    still cannot run CUDA tensors without a visible GPU, and is never reported
    "available" then."""
    from mts_kernels.ops import _backend

    no_gpu = _gpu_missing(device)
    status = {}
    for name in ("cpu", "cuda", "triton", "reference"):
        why = _backend.why_unavailable(name, "leaky_integrate_fwd", device, torch.float32)
        if why is None and no_gpu is not None and name != "reference":
            why = f"compiled, but {no_gpu}" if name == "cuda" else f"installed, but {no_gpu}"
        status[name] = "available" if why is None else why
    serves = {}
    for op, fwd in OPS.items():
        try:
            be = _backend.resolve(requested, fwd, device, torch.float32)
        except _backend.BackendUnavailableError as e:
            serves[op] = f"none ({e})"
            continue
        if be != "reference" and no_gpu is not None:
            serves[op] = f"none ({be}: {no_gpu})"
        else:
            serves[op] = be
    try:
        auto = _backend.resolve("auto", "leaky_integrate_fwd", device, torch.float32)
        if no_gpu is not None:
            auto = f"none ({no_gpu})"
    except _backend.BackendUnavailableError as e:
        auto = f"none ({e})"
    return {"auto": auto, "serves": serves, "backends": status}


def _cpu_info() -> dict:
    """CPU model, the vector extensions it has (of those the kernels and torch's
    BLAS care about) and torch's threads."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware", "cpu model") and model is None:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux
        pass
    model = model or platform.processor() or platform.machine() or "unknown"
    known = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "neon", "asimd", "sve", "sve2")
    ext = [x for x in known if x in flags]
    if platform.machine() in ("aarch64", "arm64") and "neon" not in ext:
        ext.insert(0, "neon")  # every AArch64 core has it (cpuinfo calls it asimd)
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    return {"model": model, "machine": platform.machine(), "vector_extensions": ext,
            "torch_cpu_capability": capability, "torch_threads": torch.get_num_threads(),
            "logical_cpus": os.cpu_count()}


def collect() -> dict:
    import mts_kernels
    from mts_kernels import _extension
    from mts_kernels.ops import _backend

    requested = os.environ.get(_backend.ENV_VAR) or "auto"
    if requested not in _backend.BACKENDS:
        raise BadBackendError(f"{_backend.ENV_VAR}={requested!r} is not a backend; expected one of "
                              f"{', '.join(_backend.BACKENDS)} (or unset for auto)")

    build = _extension.BUILD_INFO or {}
    gpu = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        gpu = {"index": index, "count": torch.cuda.device_count(), "name": props.name,
               "capability": f"{props.major}.{props.minor}",
               "memory_GiB": round(props.total_memory / 2**30, 1),
               "compiled_for_it": _arch_coverage(build.get("cuda_archs", []), props.major, props.minor)}
    backends = {device: _backends_for(torch.device(device), requested) for device in ("cpu", "cuda")}
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
        "cpu": _cpu_info(),
        "requested_backend": requested,
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
    c = info["cpu"]
    cap = f"; torch kernels: {c['torch_cpu_capability']}" if c["torch_cpu_capability"] else ""
    print(f"  CPU:           {c['model']} ({c['machine']}, {c['logical_cpus']} logical CPUs)")
    print(f"  vector ext.:   {' '.join(c['vector_extensions']) or 'none found'}{cap}")
    print(f"  torch threads: {c['torch_threads']}")
    print(f"  MTS_KERNELS_BACKEND: {info['requested_backend']}")
    for device, d in info["backends"].items():
        print(f"  {device} tensors (float32): automatic choice -> {d['auto']}")
        for op, be in d["serves"].items():
            print(f"    {op:<19} served by {be}")
        print("    backends:")
        for name, status in d["backends"].items():
            print(f"      {name:<10} {status}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mts_kernels")
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="versions, compiled architectures and available backends")
    p_info.add_argument("--json", action="store_true", help="print the same as JSON, for bug reports")
    args = parser.parse_args(argv)
    if args.command == "info":
        try:
            info = collect()
        except BadBackendError as e:
            print(f"python -m mts_kernels info: {e}", file=sys.stderr)
            return 2
        if args.json:
            json.dump(info, sys.stdout, indent=2)
            print()
        else:
            _print_text(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
