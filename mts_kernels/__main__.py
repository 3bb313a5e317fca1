"""`python -m mts_kernels info [--json]`: what was built, what is running, and
which backend serves CPU and CUDA tensors (and why the others cannot)."""

from __future__ import annotations

import argparse
import json
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
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "capability": f"{props.major}.{props.minor}",
               "memory_GiB": round(props.total_memory / 2**30, 1)}
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
            "cuda_archs": build.get("cuda_archs", []),
        },
        "running": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "compiled_kernels": "loaded" if _extension.COMPILED else _extension.UNAVAILABLE_REASON,
        "triton": _triton_version(),
        "triton_interpret": _backend.triton_interpreted(),
        "gpu": gpu,
        "backends": backends,
    }


def _triton_version():
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _print_text(info: dict) -> None:
    b, r = info["built_against"], info["running"]
    print(f"mts_kernels {info['version']}")
    print(f"  built against: torch {b['torch']}, CUDA {b['cuda']}, Python {b['python']}")
    print(f"  running on:    torch {r['torch']}, CUDA {r['cuda']}, Python {r['python']} ({r['platform']})")
    archs = ", ".join(b["cuda_archs"]) or "none (CPU-only build)"
    print(f"  CUDA archs:    {archs}")
    print(f"  compiled:      {info['compiled_kernels']}")
    print(f"  triton:        {info['triton'] or 'not installed'}"
          + ("  (TRITON_INTERPRET=1)" if info["triton_interpret"] else ""))
    gpu = info["gpu"]
    print(f"  GPU:           {gpu['name']} (sm {gpu['capability']}, {gpu['memory_GiB']} GiB)" if gpu
          else "  GPU:           none")
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
