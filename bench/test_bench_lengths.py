"""Benchmarks of variable-length batches (lengths), forward + backward.

LeakyRNN on a PackedSequence against torch.nn.RNN on the same PackedSequence
(MKL/oneDNN on the CPU, cuDNN on the GPU), and the same batch padded with
`lengths=` against the same batch at full length (the time should follow the
work: lengths uniform in [T/2, T] are about 3/4 of it).

Targets (reported, not asserted):
  CPU, B=32 T<=1024 lengths ~ U[512, 1024], I=H=256: packed at most 0.8x nn.RNN's
  time (speedup_vs_torch >= 1.25); lengths= about 3/4 of the full-length time.
  GPU (marker cuda) B=64, H=256, float32/bfloat16: against cuDNN on the same
  PackedSequence.
GFLOP/s counts the GEMMs over the valid steps only: 2 * sum(L) * H * (I + H)
forward, twice that backward.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from mts_kernels import LeakyRNN

OP = "LeakyRNN lengths"
CPU = dict(B=32, T=1024, I=256, H=256)
CUDA = dict(B=64, T=1024, I=256, H=256)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _lengths(B, T):
    gen = torch.Generator().manual_seed(0)
    L = torch.randint(T // 2, T + 1, (B,), generator=gen)
    L[0] = T  # the batch's padded length is T
    return L


def _model(kind, I, H, device, dtype):
    torch.manual_seed(0)
    if kind == "torch":
        return nn.RNN(I, H).to(device, dtype)
    return LeakyRNN(I, H, device=device, dtype=dtype)


def _bench(measure, cfg, kind, mode, device="cpu", dtype=torch.float32, targets=None):
    """mode: "packed" (a PackedSequence), "lengths" (padded with lengths=) or "full"
    (the same padded batch with every sequence at length T)."""
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    model = _model(kind, I, H, device, dtype)
    L = _lengths(B, T)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(T, B, I, generator=gen, device=device, dtype=dtype, requires_grad=True)
    params = [x] + list(model.parameters())
    g = torch.randn(T, B, H, generator=gen, device=device, dtype=dtype)
    if mode == "packed":
        g = pack_padded_sequence(g, L, enforce_sorted=False).data

        def step():
            out, _ = model(pack_padded_sequence(x, L, enforce_sorted=False))
            return torch.autograd.grad(out.data, params, g)
    else:
        kw = dict(lengths=L) if mode == "lengths" else {}

        def step():
            out, _ = model(x, **kw)
            return torch.autograd.grad(out, params, g)

    steps = int(L.sum()) if mode != "full" else B * T
    variant = {"packed": "PackedSequence, L~U[T/2,T]", "lengths": "padded, lengths= vs full length",
               "full": "padded, lengths= vs full length"}[mode]
    backend = {"torch": "torch.nn.RNN"}.get(kind, "fused") + ("" if mode != "full" else ", full length")
    info = dict(op=OP, shape=(B, T, H), dtype=dtype, direction="fwd+bwd", backend=backend,
                role="torch" if kind == "torch" else "kernel", variant=variant, targets=targets or {})
    measure(step, device=device, flops=3 * 2 * steps * H * (I + H), info=info, min_rounds=3, max_rounds=30)


@pytest.mark.parametrize("kind", ["fused", "torch"])
def test_cpu_packed(measure, kind):
    _bench(measure, CPU, kind, "packed",
           targets={"speedup_vs_torch": 1 / 0.8} if kind == "fused" else None)


@pytest.mark.parametrize("mode", ["lengths", "full"])
def test_cpu_lengths_vs_full(measure, mode):
    _bench(measure, CPU, "fused", mode)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["fused", "torch"])
def test_cuda_packed(measure, dtype, kind):
    _bench(measure, CUDA, kind, "packed", device="cuda", dtype=DTYPES[dtype])
