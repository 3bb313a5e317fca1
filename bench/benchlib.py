"""Helpers shared by the benchmarks (bench/conftest.py, bench/test_bench_*.py),
bench/run.py and bench/report.py: machine naming, copy bandwidth, device sync.

Only torch and the standard library: this runs on the GPU machines as is.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Callable, Dict, Optional

import torch

# --------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo ("model name"), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    if name:
                        return re.sub(r"\s+", " ", name)
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_name() -> Optional[str]:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return None


def cpu_description() -> str:
    n = cpu_count()
    return f"{cpu_model()} ({n} CPU{'s' if n != 1 else ''})"


def machine_name() -> str:
    """The GPU name and the CPU (GPU machines), or the CPU model and core count."""
    gpu = gpu_name()
    return f"{gpu} / {cpu_description()}" if gpu else cpu_description()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def machine_slug() -> str:
    """File-name key of this machine: the GPU name where there is one, else the CPU."""
    gpu = gpu_name()
    return slugify(gpu if gpu else cpu_description())


def device_name(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def machine_info() -> Dict[str, object]:
    """What bench/report.py needs to title a machine's section (stable across runs, so
    pytest-benchmark's --benchmark-compare does not warn about it)."""
    info = {
        "mts_machine": machine_name(),
        "mts_machine_slug": machine_slug(),
        "mts_cpu": cpu_description(),
        "mts_gpu": gpu_name(),
        "mts_torch": torch.__version__,
        "mts_torch_cuda": torch.version.cuda,
        "mts_torch_threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["mts_triton"] = triton.__version__
    except Exception:  # noqa: BLE001 - absent or broken: not our concern here
        info["mts_triton"] = None
    try:
        import mts_kernels

        info["mts_kernels"] = mts_kernels.__version__
    except Exception:  # noqa: BLE001
        info["mts_kernels"] = None
    return info


# --------------------------------------------------------------------------- timing


def synchronizer(device: torch.device) -> Callable[[], None]:
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


_COPY_CACHE: Dict[str, Dict[str, float]] = {}


def copy_bandwidth(device, nbytes: Optional[int] = None, repeats: int = 10) -> Dict[str, float]:
    """Copy bandwidth of `device` in GB/s (1e9 bytes/s), counting read + write:
    `dst.copy_(src)` of a large float32 tensor, median (and best) of `repeats`.
    Measured once per device and process."""
    device = torch.device(device)
    key = str(device)
    if key in _COPY_CACHE:
        return _COPY_CACHE[key]
    if nbytes is None:
        env = os.environ.get("MTS_BENCH_COPY_MB")
        if env:
            nbytes = int(float(env) * 2**20)
        elif device.type == "cuda":
            nbytes = 2 * 2**30   # far beyond the L2 of any GPU
        else:
            nbytes = 256 * 2**20  # far beyond the last-level cache of the CPU
    n = nbytes // 4
    src = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src).fill_(0.0)  # fault the pages in before timing
    sync = synchronizer(device)
    for _ in range(2):
        dst.copy_(src)
    times = [time_call(lambda: dst.copy_(src), sync) for _ in range(repeats)]
    moved = 2 * n * 4
    med = statistics.median(times)
    result = {
        "copy_GBps": moved / med / 1e9,
        "copy_GBps_best": moved / min(times) / 1e9,
        "copy_bytes": moved,
    }
    del src, dst
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _COPY_CACHE[key] = result
    return result


# --------------------------------------------------------------------------- recurrent models


def rnn_fwd_bwd(measure, model, B: int, T: int, I: int, H: int, device, dtype, info: dict,
                slow: bool = False) -> None:
    """Times model(x) forward and backward for a time-major (T, B, I) input, with a
    fixed output gradient (as for every op here: the rounds time the model's forward
    and backward, not a loss's elementwise passes). GFLOP/s counts the GEMMs:
    2 * T * B * H * (I + H) forward, twice that backward. `slow`: a few rounds
    (the reference loops)."""
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(T, B, I, generator=gen, device=device, dtype=dtype, requires_grad=True)
    params = [x] + list(model.parameters())
    g = torch.randn(T, B, H, generator=gen, device=device, dtype=dtype)

    def step():
        out, _ = model(x)
        return torch.autograd.grad(out, params, g)

    rounds = dict(min_rounds=1, max_rounds=3, warmup_rounds=1) if slow else dict(min_rounds=3, max_rounds=50)
    measure(step, device=device, flops=3 * 2 * T * B * H * (I + H), info=info, **rounds)
