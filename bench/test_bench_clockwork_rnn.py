"""Benchmarks of ClockworkRNN / clockwork_rnn, forward + backward, float32.

"fused" is ClockworkRNN as it runs by default (on the CPU the fused clockwork_rnn
op, csrc/clockwork/), "decomposed" the same module forced onto the per-module
decomposition (MTS_KERNELS_CLOCKWORK_PATH=decomposed); against the reference
loop (mts_kernels.reference), a masked-dense PyTorch
implementation (the full H x H product every step, then inactive modules hold:
what one writes without a clockwork kernel) and torch.nn.RNN of the same hidden
size (role "torch"). GFLOP/s counts the GEMMs of a dense RNN of the same size,
2 * T * B * H * (I + H) forward and twice that backward, so it compares like with like.

Targets (reported, not asserted):
  CPU large H=512, 8 modules with periods 1..128, B=32, T=1024, I=64: >= 4x faster
  than torch.nn.RNN(64, 512). Small H=64, 4 modules, B=4, T=4096, I=8: >= 100x the
  masked-dense loop and >= 10x the decomposition (the recorded target is the
  report's speedup over the reference loop, >= 100x). GPU (marker cuda): the large
  case >= 2x cuDNN's nn.RNN, float32 and bfloat16; the small case reported for the
  CUDA op, the Triton loop, the decomposition and cuDNN.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mts_kernels import ClockworkRNN
from mts_kernels.ops.clockwork_rnn import PATH_ENV_VAR

import benchlib  # bench/ is on sys.path (conftest.py's folder)

OP = "ClockworkRNN"
LARGE = dict(B=32, T=1024, I=64, H=512, periods=[2 ** i for i in range(8)])
SMALL = dict(B=4, T=4096, I=8, H=64, periods=[1, 2, 4, 8])
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class MaskedDense(nn.Module):
    """The clockwork cell written plainly: a dense step, then hold inactive units."""

    def __init__(self, cw: ClockworkRNN):
        super().__init__()
        self.cw = cw

    def forward(self, x):
        cw = self.cw
        w = cw.weight_hh * cw.block_mask()
        p = F.linear(x, cw.weight_ih, cw.bias_ih + cw.bias_hh)
        unit_period = torch.repeat_interleave(torch.tensor(cw.periods, device=x.device),
                                              torch.tensor(cw.module_sizes, device=x.device))
        h = x.new_zeros(x.size(1), cw.hidden_size)
        out = []
        for t in range(x.size(0)):
            active = (t % unit_period) == 0
            h = torch.where(active, torch.tanh(p[t] + h @ w.t()), h)
            out.append(h)
        return torch.stack(out), h



def _bench(measure, cfg, kind, device="cpu", dtype=torch.float32, targets=None):
    B, T, I, H = cfg["B"], cfg["T"], cfg["I"], cfg["H"]
    torch.manual_seed(0)
    if kind == "torch":
        model = nn.RNN(I, H).to(device, dtype)
    else:
        model = ClockworkRNN(I, H, periods=cfg["periods"], device=device, dtype=dtype)
        if kind in ("reference", "triton"):
            model.backend = kind
        elif kind == "masked-dense":
            model = MaskedDense(model)
    slow = kind in ("reference", "masked-dense")
    backend = {"torch": "torch.nn.RNN"}.get(kind, kind)
    role = {"torch": "torch", "reference": "reference"}.get(kind, "kernel")
    info = dict(op=OP, shape=(B, T, H), dtype=dtype, direction="fwd+bwd", backend=backend, role=role,
                variant=f"I={I}, {len(cfg['periods'])} modules", targets=targets or {})
    benchlib.rnn_fwd_bwd(measure, model, B, T, I, H, device, dtype, info, slow=slow)


def _path(monkeypatch, kind):
    # the path switch is read at every call, so it holds for the measured rounds
    monkeypatch.setenv(PATH_ENV_VAR, "decomposed" if kind == "decomposed" else "auto")


@pytest.mark.parametrize("kind", ["fused", "decomposed", "torch", "masked-dense", "reference"])
def test_cpu_large(measure, monkeypatch, kind):
    _path(monkeypatch, kind)
    _bench(measure, LARGE, kind, targets={"speedup_vs_torch": 4.0} if kind == "fused" else None)


@pytest.mark.parametrize("kind", ["fused", "decomposed", "reference", "masked-dense"])
def test_cpu_small(measure, monkeypatch, kind):
    _path(monkeypatch, kind)
    _bench(measure, SMALL, kind, targets={"speedup_vs_reference": 100.0} if kind == "fused" else None)


# On the GPU "fused" is the CUDA op (backend "cuda": the persistent kernel of
# csrc/clockwork/clockwork_persistent.h where it fits, one block per batch block
# at H=64, the grid-synchronised plan at H=512), "fused-loop" the same op's
# cuBLAS loop (per-step GEMMs of the active modules plus one pointwise kernel:
# MTS_KERNELS_RNN_PERSISTENT=0), "triton" the persistent Triton loop (H <= 128
# only), "decomposed" the per-module decomposition over the CUDA leaky_rnn kernels.
def _cuda_path(monkeypatch, kind):
    _path(monkeypatch, kind)
    if kind == "fused-loop":
        monkeypatch.setenv("MTS_KERNELS_RNN_PERSISTENT", "0")
    else:
        monkeypatch.delenv("MTS_KERNELS_RNN_PERSISTENT", raising=False)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("kind", ["fused", "fused-loop", "decomposed", "torch"])
def test_cuda_large(measure, monkeypatch, dtype, kind):
    _cuda_path(monkeypatch, kind)
    _bench(measure, LARGE, kind, device="cuda", dtype=DTYPES[dtype],
           targets={"speedup_vs_torch": 2.0} if kind == "fused" else None)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["fused", "fused-loop", "triton", "decomposed", "torch"])
def test_cuda_small(measure, monkeypatch, kind):
    _cuda_path(monkeypatch, kind)
    _bench(measure, SMALL, kind, device="cuda")
