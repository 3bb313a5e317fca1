"""Benchmarks of mts_kernels.leaky_integrate (per-step alpha).

    h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t

Memory floor per (B, T, D) element: the forward reads alpha, v and writes h (3
elements); the backward reads g, alpha, h, v and writes dv, dalpha (6); forward +
backward moves 9. GB/s in extra_info is that floor divided by the median time,
and fraction_of_copy compares it with a large dst.copy_(src) on the same device.

CPU, float32, against the reference loop a user would write (a Python loop over
unbind(1): mts_kernels.reference.leaky_integrate, gradients through autograd):
  small (B=4, T=4096, D=64) and large (B=32, T=1024, D=512), forward + backward
  and forward only. Targets (recorded in extra_info, reported, not asserted):
  fused fwd+bwd >= 100x the reference (small), >= 4x (large); fused forward
  >= 50% of the copy bandwidth.
GPU (marker cuda): forward and backward separately at (B=8, T=65536, D=1536),
  float32 and bfloat16, backends cuda and triton where available.
Sweep (marker sweep): fwd+bwd over T at fixed B, D, for the plots of bench/report.py.
"""

from __future__ import annotations

import pytest
import torch

import mts_kernels
from mts_kernels import reference
from mts_kernels.ops import _backend

OP = "leaky_integrate"
VARIANT = "alpha=per-step"
BYTES_PER_ELEMENT = {"fwd": 3, "bwd": 6, "fwd+bwd": 9}

CPU_REGIMES = {"small": (4, 4096, 64), "large": (32, 1024, 512)}
CPU_TARGET_SPEEDUP = {"small": 100.0, "large": 4.0}
CPU_TARGET_FWD_FRACTION_OF_COPY = 0.5
CPU_SWEEP_T = (256, 1024, 16384)  # with the small regime's T=4096: B=4, D=64
GPU_SHAPE = (8, 65536, 1536)
GPU_SWEEP_T = (4096, 16384)       # with GPU_SHAPE's T=65536: B=8, D=1536
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _op(backend):
    if backend == "reference":
        return reference.leaky_integrate  # what a user writes; no dispatch in between
    return lambda v, alpha: mts_kernels.leaky_integrate(v, alpha, backend=backend)


def _skip_unavailable(backend, device, dtype, directions):
    if backend == "reference":
        return
    for direction in directions:
        why = _backend.why_unavailable(backend, f"{OP}_{direction}", torch.device(device), dtype)
        if why is not None:
            pytest.skip(f"backend {backend!r}: {why}")


def _inputs(shape, dtype, device, requires_grad, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    v = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    # leaks in [0.8, 0.99): a stable, typical multiple-time-scale range
    alpha = torch.rand(shape, generator=gen, device=device, dtype=dtype).mul_(0.19).add_(0.8)
    g = torch.randn(shape, generator=gen, device=device, dtype=dtype)
    if requires_grad:
        v.requires_grad_()
        alpha.requires_grad_()
    return v, alpha, g


def _info(shape, dtype, direction, backend, **extra):
    info = dict(op=OP, shape=shape, dtype=dtype, direction=direction, backend=backend,
                role="reference" if backend == "reference" else "kernel", variant=VARIANT)
    info.update(extra)
    return info


def _nbytes(shape, dtype, direction):
    B, T, D = shape
    return BYTES_PER_ELEMENT[direction] * B * T * D * torch.empty((), dtype=dtype).element_size()


def _rounds(backend):
    # The reference loop is slow (a Python step per time step): few rounds, one warm-up.
    if backend == "reference":
        return dict(min_rounds=3, max_rounds=5, warmup_rounds=1)
    return dict(min_rounds=10, max_rounds=200, warmup_rounds=2)


def _bench_fwd_bwd(measure, shape, dtype, device, backend, **extra):
    _skip_unavailable(backend, device, dtype, ("fwd", "bwd"))
    v, alpha, g = _inputs(shape, dtype, device, requires_grad=True)
    op = _op(backend)

    def step():
        h = op(v, alpha)
        return torch.autograd.grad(h, (v, alpha), g)

    measure(step, device=device, bytes_moved=_nbytes(shape, dtype, "fwd+bwd"),
            info=_info(shape, dtype, "fwd+bwd", backend, **extra), **_rounds(backend))


def _bench_fwd(measure, shape, dtype, device, backend, **extra):
    _skip_unavailable(backend, device, dtype, ("fwd",))
    v, alpha, _ = _inputs(shape, dtype, device, requires_grad=False)
    op = _op(backend)
    measure(lambda: op(v, alpha), device=device, bytes_moved=_nbytes(shape, dtype, "fwd"),
            info=_info(shape, dtype, "fwd", backend, **extra), **_rounds(backend))


def _bench_bwd(measure, shape, dtype, device, backend, **extra):
    """The backward alone: one forward graph, autograd.grad(retain_graph=True) each round."""
    _skip_unavailable(backend, device, dtype, ("fwd", "bwd"))
    v, alpha, g = _inputs(shape, dtype, device, requires_grad=True)
    h = _op(backend)(v, alpha)
    measure(lambda: torch.autograd.grad(h, (v, alpha), g, retain_graph=True),
            device=device, bytes_moved=_nbytes(shape, dtype, "bwd"),
            info=_info(shape, dtype, "bwd", backend, **extra), **_rounds(backend))


# --------------------------------------------------------------------------- CPU


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("regime", list(CPU_REGIMES))
def test_fwd_bwd_cpu(measure, regime, backend):
    targets = {"speedup_vs_reference": CPU_TARGET_SPEEDUP[regime]} if backend != "reference" else {}
    _bench_fwd_bwd(measure, CPU_REGIMES[regime], torch.float32, "cpu", backend,
                   regime=regime, targets=targets)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("regime", list(CPU_REGIMES))
def test_fwd_cpu(measure, regime, backend):
    targets = {"fraction_of_copy": CPU_TARGET_FWD_FRACTION_OF_COPY} if backend != "reference" else {}
    _bench_fwd(measure, CPU_REGIMES[regime], torch.float32, "cpu", backend,
               regime=regime, targets=targets)


@pytest.mark.sweep
@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("T", CPU_SWEEP_T)
def test_sweep_fwd_bwd_cpu(measure, T, backend):
    B, _, D = CPU_REGIMES["small"]
    _bench_fwd_bwd(measure, (B, T, D), torch.float32, "cpu", backend, regime="sweep")


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_cuda(measure, direction, dtype, backend):
    bench = _bench_fwd if direction == "fwd" else _bench_bwd
    bench(measure, GPU_SHAPE, DTYPES[dtype], "cuda", backend, regime="gpu")


@pytest.mark.cuda
@pytest.mark.sweep
@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
@pytest.mark.parametrize("T", GPU_SWEEP_T)
def test_sweep_cuda(measure, T, direction, dtype, backend):
    B, _, D = GPU_SHAPE
    bench = _bench_fwd if direction == "fwd" else _bench_bwd
    bench(measure, (B, T, D), DTYPES[dtype], "cuda", backend, regime="sweep")
