"""Shared fixtures of the benchmarks (pytest-benchmark).

- `copy_bandwidth`: session fixture; `copy_bandwidth(device)` measures once per
  device and session the bandwidth of a large `dst.copy_(src)` (bytes = read +
  write), the ceiling every bandwidth-bound kernel is compared against.
- `measure`: times a callable with `benchmark.pedantic`, synchronising the device
  around every round on CUDA, and fills `benchmark.extra_info` with what
  bench/report.py needs (op, shape, dtype, direction, backend, baseline group,
  bytes moved, achieved GB/s, copy_GBps and fraction_of_copy).
- Benchmarks marked `cuda` are skipped without a CUDA GPU.

Environment knobs: MTS_BENCH_BUDGET_S (seconds of timed rounds per benchmark,
default 2), MTS_BENCH_COPY_MB (size of the copy-bandwidth tensor).
"""

from __future__ import annotations

import gc
import math
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the in-place build in the checkout, not some other install
    sys.path.insert(0, str(ROOT))

import benchlib  # noqa: E402  (bench/ is on sys.path: pytest puts a conftest's folder there)

BENCH_DIR = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped otherwise)")
    config.addinivalue_line("markers", "sweep: sequence-length sweep for the plots (deselect with -m 'not sweep')")


def _in_bench(item) -> bool:
    try:
        return BENCH_DIR in Path(str(item.fspath)).resolve().parents
    except Exception:  # noqa: BLE001
        return False


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if _in_bench(item) and item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(benchlib.machine_info())


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if benchlib._COPY_CACHE:
        terminalreporter.write_sep("-", "copy bandwidth (dst.copy_(src), read + write)")
        for dev, r in benchlib._COPY_CACHE.items():
            terminalreporter.write_line(
                f"{dev:>8}: {r['copy_GBps']:8.1f} GB/s median, {r['copy_GBps_best']:8.1f} GB/s best "
                f"({r['copy_bytes'] / 2**20:.0f} MiB moved per copy)")


@pytest.fixture(scope="session")
def copy_bandwidth():
    """`copy_bandwidth(device)` -> {"copy_GBps", "copy_GBps_best", "copy_bytes"}, measured
    lazily (a CPU-only selection never touches the GPU and vice versa) and once."""
    return benchlib.copy_bandwidth


@pytest.fixture(autouse=True)
def _release_memory():
    yield
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _budget_s() -> float:
    return float(os.environ.get("MTS_BENCH_BUDGET_S", "2"))


@pytest.fixture
def measure(benchmark, copy_bandwidth):
    """measure(fn, device=..., bytes_moved=..., info={...}, ...) -> the last result of fn.

    bytes_moved (memory-bound ops) and/or flops (GEMM-bound ops) give the achieved
    GB/s / GFLOP/s. info: op, shape (B, T, D) (D: channels or hidden size), dtype, direction ("fwd" | "bwd" | "fwd+bwd"), backend,
    role ("kernel" | "reference" | "torch": the report's speedup columns divide the
    reference / torch row of the same group by this one), variant (e.g. "alpha=per-step"),
    optional targets ({"speedup_vs_reference": 100, "fraction_of_copy": 0.5}).
    Rounds: enough to fill MTS_BENCH_BUDGET_S, clamped to [min_rounds, max_rounds],
    after `warmup_rounds` untimed calls and one call that estimates the time of a round.
    """

    def _measure(fn, *, device, bytes_moved=0, info, flops=0, min_rounds=5, max_rounds=100,
                 warmup_rounds=1, budget_s=None):
        device = torch.device(device)
        sync = benchlib.synchronizer(device)
        B, T, D = info["shape"]
        dtype = str(info["dtype"]).replace("torch.", "")
        extra = dict(info)
        extra.update(
            shape=f"{B}x{T}x{D}", B=B, T=T, D=D, dtype=dtype, device=device.type,
            device_name=benchlib.device_name(device), bytes_moved=int(bytes_moved), flops=int(flops),
            group="|".join([info["op"], device.type, f"{B}x{T}x{D}", dtype, info["direction"],
                            info.get("variant", "")]),
        )
        benchmark.group = f"{info['op']} {device.type} {B}x{T}x{D} {dtype} {info['direction']}"
        benchmark.extra_info.update(extra)

        if benchmark.disabled:  # --benchmark-disable: run once as a smoke test
            return benchmark.pedantic(fn, rounds=1, iterations=1)

        for _ in range(warmup_rounds):  # first calls: allocation, page faults, JIT, autotuning
            benchlib.time_call(fn, sync)
        dt = benchlib.time_call(fn, sync)  # the estimate that sets the number of rounds
        budget = _budget_s() if budget_s is None else budget_s
        rounds = int(min(max_rounds, max(min_rounds, math.floor(budget / max(dt, 1e-9)))))

        def target():
            out = fn()
            sync()
            return out

        last = benchmark.pedantic(target, setup=sync, rounds=rounds, warmup_rounds=0, iterations=1)

        cb = copy_bandwidth(device)
        extra = {"copy_GBps": cb["copy_GBps"], "copy_GBps_best": cb["copy_GBps_best"], "rounds": rounds}
        stats = getattr(benchmark, "stats", None)
        if stats is not None:
            median = stats.stats.median
            if bytes_moved:  # memory-bound ops: bytes of the memory floor
                gbps = bytes_moved / median / 1e9
                extra.update(GBps=gbps, fraction_of_copy=gbps / cb["copy_GBps"])
            if flops:  # compute-bound ops (the recurrences): useful FLOPs
                extra.update(GFLOPs=flops / median / 1e9)
        benchmark.extra_info.update(extra)
        return last

    return _measure
