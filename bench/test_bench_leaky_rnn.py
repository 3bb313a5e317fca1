"""Benchmarks of LeakyRNN / leaky_rnn, forward + backward, float32.

    z_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   h_t = alpha * h_{t-1} + (1 - alpha) * tanh(z_t)

Against torch.nn.RNN (role "torch": MKL/oneDNN on the CPU, cuDNN on the GPU) and,
in the small regime, the reference loop (mts_kernels.reference through LeakyRNN's
backend="reference"). GFLOP/s counts the GEMMs: 2 * T * B * H * (I + H) forward,
twice that backward.

Targets (reported, not asserted):
  CPU, B=32 T=1024 I=256 H=256: leak=None at most 0.8x nn.RNN's time (speedup_vs_torch
  >= 1.25); leak="learned" at most 1.0x. Small B=4 T=2048 I=32 H=64: >= 20x the reference.
  GPU (marker cuda) B=64 T=1024 H=256 float32/bfloat16: at most 1.0x cuDNN; H=1024: 1.2x.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mts_kernels import LeakyRNN

import benchlib  # bench/ is on sys.path (conftest.py's folder)

OP = "LeakyRNN"
CPU_LARGE = dict(B=32, T=1024, I=256, H=256)
CPU_SMALL = dict(B=4, T=2048, I=32, H=64)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}



def _model(kind, I, H, device, dtype):
    torch.manual_seed(0)
    if kind == "torch":
        return nn.RNN(I, H).to(device, dtype)
    leak = "learned" if kind == "learned" else None
    model = LeakyRNN(I, H, leak=leak, device=device, dtype=dtype)
    if kind == "reference":
        model.backend = "reference"
    return model


def _bench(measure, cfg, kind, device="cpu", dtype=torch.float32, targets=None, slow=False):
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    model = _model(kind, I, H, device, dtype)
    backend = {"torch": "torch.nn.RNN", "reference": "reference", "learned": "fused, leak=learned"}.get(kind, "fused")
    role = {"torch": "torch", "reference": "reference"}.get(kind, "kernel")
    info = dict(op=OP, shape=(B, T, H), dtype=dtype, direction="fwd+bwd", backend=backend, role=role,
                variant=f"I={I}", targets=targets or {})
    benchlib.rnn_fwd_bwd(measure, model, B, T, I, H, device, dtype, info, slow=slow)


@pytest.mark.parametrize("kind", ["fused", "learned", "torch"])
def test_cpu_large(measure, kind):
    goal = {"fused": 1 / 0.8, "learned": 1.0}.get(kind)
    _bench(measure, CPU_LARGE, kind, targets={"speedup_vs_torch": goal} if goal else None)


@pytest.mark.parametrize("kind", ["fused", "torch", "reference"])
def test_cpu_small(measure, kind):
    targets = {"speedup_vs_reference": 20.0} if kind == "fused" else None
    _bench(measure, CPU_SMALL, kind, targets=targets, slow=kind == "reference")


@pytest.mark.cuda
@pytest.mark.parametrize("H", [256, 1024])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["fused", "torch"])
def test_cuda(measure, H, dtype, kind):
    goal = {256: 1.0, 1024: 1 / 1.2}[H]
    cfg = dict(B=64, T=1024, I=H, H=H)
    _bench(measure, cfg, kind, device="cuda", dtype=DTYPES[dtype],
           targets={"speedup_vs_torch": goal} if kind == "fused" else None)
