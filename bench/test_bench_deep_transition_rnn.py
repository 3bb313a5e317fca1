"""Benchmarks of DeepTransitionRNN / deep_transition_rnn, forward + backward, float32.

    s^1_t = tanh(W_1 h_{t-1} + W_ih x_t + b_ih + b_1),  s^l_t = tanh(W_l s^{l-1}_t + b_l),
    (shortcut: s^L_t also + U h_{t-1}),  h_t = s^L_t

Against the same cell as a plain PyTorch loop (role "reference": mts_kernels.reference
through DeepTransitionRNN's backend="reference", one F.linear-like product per
sub-layer and step, autograd through the loop) and, in the large regime,
torch.nn.RNN of the same size (role "torch": MKL/oneDNN on the CPU). GFLOP/s
counts each model's own GEMMs: 2 * T * B * H * (I + L*H [+ H for the shortcut])
forward, twice that backward (nn.RNN: L = 1).

Targets (reported, not asserted):
  CPU small B=4 T=2048 I=32 H=64, depth 2 with shortcut: >= 20x the PyTorch loop.
  CPU large B=32 T=1024 I=H=256, depth 2: at most 1.2x nn.RNN(256, 256)'s time
  (speedup_vs_torch >= 1/1.2), for about 1.5x its FLOPs.
  GPU (marker cuda): both shapes reported against cuDNN.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mts_kernels import DeepTransitionRNN

import benchlib  # noqa: F401  (bench/ is on sys.path: conftest.py's folder)

OP = "DeepTransitionRNN"
CPU_SMALL = dict(B=4, T=2048, I=32, H=64, depth=2, shortcut=True)
CPU_LARGE = dict(B=32, T=1024, I=256, H=256, depth=2, shortcut=False)


def _bench(measure, cfg, kind, targets=None, device="cpu", label=None):
    B, T, I, H, L, sc = cfg["B"], cfg["T"], cfg["I"], cfg["H"], cfg["depth"], cfg["shortcut"]
    torch.manual_seed(0)
    if kind == "torch":
        model, products = nn.RNN(I, H), 1
    else:
        model = DeepTransitionRNN(I, H, transition_depth=L, shortcut=sc)
        products = L + sc
        if kind in ("reference", "triton", "cuda"):
            model.backend = kind
    model = model.to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, I, generator=gen).to(device).requires_grad_()
    params = [x] + list(model.parameters())
    g = torch.randn(T, B, H, generator=gen).to(device)

    def step():
        out, _ = model(x)
        return torch.autograd.grad(out, params, g)

    slow = kind == "reference"
    rounds = dict(min_rounds=1, max_rounds=3, warmup_rounds=1) if slow else dict(min_rounds=3, max_rounds=50)
    info = dict(op=OP, shape=(B, T, H), dtype=torch.float32, direction="fwd+bwd",
                backend=label or {"torch": "torch.nn.RNN"}.get(kind, kind),
                role={"torch": "torch", "reference": "reference"}.get(kind, "kernel"),
                variant=f"I={I}, depth {L}{' + shortcut' if sc else ''}", targets=targets or {})
    measure(step, device=device, flops=3 * 2 * T * B * H * (I + products * H), info=info, **rounds)


@pytest.mark.parametrize("kind", ["fused", "reference"])
def test_cpu_small(measure, kind):
    _bench(measure, CPU_SMALL, kind, targets={"speedup_vs_reference": 20.0} if kind == "fused" else None)


@pytest.mark.parametrize("kind", ["fused", "torch"])
def test_cpu_large(measure, kind):
    _bench(measure, CPU_LARGE, kind, targets={"speedup_vs_torch": 1 / 1.2} if kind == "fused" else None)


# GPU rows (bench/gpu_check.sh): "triton" the persistent Triton kernel (H <= 128),
# "cuda" the persistent CUDA kernel of csrc/deep/deep_persistent.h (one block per
# batch block at H=64, the grid-synchronised plan at H=256), "cuda-loop" the
# cuBLAS loop of csrc/deep/deep_loop.h (per step L GEMMs and L pointwise
# kernels: MTS_KERNELS_RNN_PERSISTENT=0), against cuDNN's nn.RNN of the same size.
def _cuda_bench(measure, monkeypatch, cfg, kind):
    if kind == "cuda-loop":
        monkeypatch.setenv("MTS_KERNELS_RNN_PERSISTENT", "0")
    else:
        monkeypatch.delenv("MTS_KERNELS_RNN_PERSISTENT", raising=False)
    _bench(measure, cfg, "cuda" if kind == "cuda-loop" else kind, device="cuda", label=kind)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["triton", "cuda", "cuda-loop", "torch"])
def test_cuda_small(measure, monkeypatch, kind):
    _cuda_bench(measure, monkeypatch, CPU_SMALL, kind)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["cuda", "cuda-loop", "torch"])
def test_cuda_large(measure, monkeypatch, kind):
    _cuda_bench(measure, monkeypatch, CPU_LARGE, kind)
