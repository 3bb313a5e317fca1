"""Benchmarks of mts_kernels::input_projection (the recurrent layers' input
projection and its gradients, csrc/projection/), forward + backward:

    out[t, b] = x[t, b] W^T + b_ih + b_hh   (t < L_b; 0 at padded steps)

against what the modules ran before it, F.linear and an add (role "torch"), on
the same padded batch: every step, and lengths ~ U[T/2, T] (77% of the steps
valid; F.linear multiplies the padded steps too, the op does not). CPU, float32,
B=32, T=1024, I=H=256 (the LeakyRNN lengths benchmark's shape), and a narrow
input, B=4, T=4096, I=8, H=64 (ClockworkRNN's small benchmark), where dx and dW
have 8 columns: a BLAS's worst shape, which the op computes with its own
register-tiled loop (csrc/cpu_vec.h narrow_matmul_acc). Reported, not asserted:
the op should take about the valid fraction of F.linear's time with lengths, and
no more than F.linear without. GFLOP/s counts the valid rows only: 2 * sum(L) * I
* H per GEMM, three GEMMs (forward, dx, dW).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mts_kernels import _extension

OP = "input_projection"
SHAPES = {"wide": (32, 1024, 256, 256), "narrow": (4, 4096, 8, 64)}  # B, T, I, H

pytestmark = pytest.mark.skipif(not _extension.COMPILED, reason="needs the compiled extension")


def _lengths(B, T):
    gen = torch.Generator().manual_seed(0)
    L = torch.randint(T // 2, T + 1, (B,), generator=gen)
    L[0] = T
    return L


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("lengths", ["none", "U[T/2,T]"])
@pytest.mark.parametrize("kind", ["fused", "torch"])
def test_cpu(measure, kind, lengths, shape):
    B, T, I, H = SHAPES[shape]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=gen, requires_grad=True)
    w = torch.randn(H, I, generator=gen).requires_grad_()
    b1 = torch.randn(H, generator=gen).requires_grad_()
    b2 = torch.randn(H, generator=gen).requires_grad_()
    g = torch.randn(T, B, H, generator=gen)
    L = _lengths(B, T) if lengths != "none" else None
    leaves = [x, w, b1, b2]
    if kind == "fused":
        def step():
            return torch.autograd.grad(torch.ops.mts_kernels.input_projection(x, w, b1, b2, L), leaves, g)
    else:
        def step():
            return torch.autograd.grad(F.linear(x, w, b1) + b2, leaves, g)
    rows = int(L.sum()) if L is not None else B * T
    info = dict(op=OP, shape=(B, T, H), dtype=torch.float32, direction="fwd+bwd",
                backend="fused" if kind == "fused" else "F.linear", role="kernel" if kind == "fused" else "torch",
                variant=f"I={I}, lengths {lengths}")
    measure(step, device="cpu", flops=3 * 2 * rows * I * H, info=info, min_rounds=5, max_rounds=40)
