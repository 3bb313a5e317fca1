"""Benchmarks of a second order through the RNN cells, float32 on the CPU.

create_graph=True through the fused backward, then backward() of a function of
that gradient (a Hessian-vector product with respect to W_hh, as in gradient
penalties or MAML): "fused" runs the tangent of each op as its fused op
(leaky_rnn_tangent, whose per-step keep also serves clockwork_rnn;
deep_transition_rnn_tangent), whose registered gradient is a fused adjoint;
"loop" (role "reference") forces the PyTorch step loop the ops take under
torch.func. Shape: T=512, B=16, H=128, with a leak; clockwork 4 modules with
periods 1, 2, 4, 8; deep transition depth 2 with shortcut. Reported, not asserted.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mts_kernels

T, B, H = 512, 16, 128
OPS = {
    "leaky_rnn": (lambda p, w, a: mts_kernels.leaky_rnn(p, w, alpha=a), "mts_kernels.ops.leaky_rnn"),
    "clockwork_rnn": (lambda p, w, a: mts_kernels.clockwork_rnn(p, w, periods=[1, 2, 4, 8],
                                                                module_sizes=[32] * 4, alpha=a),
                      "mts_kernels.ops.leaky_rnn"),
    "deep_transition_rnn": (lambda p, w, a: mts_kernels.deep_transition_rnn(
        p, w, weight_shortcut=w[0] * 0.5, alpha=a), "mts_kernels.ops.deep_transition_rnn"),
}


@pytest.mark.parametrize("kind", ["fused", "loop"])
@pytest.mark.parametrize("op", list(OPS))
def test_cpu_second_order(measure, monkeypatch, op, kind):
    fn, module = OPS[op]
    if kind == "loop":
        monkeypatch.setattr(importlib.import_module(module), "_fused_tangent", lambda *t: False)
        if op == "clockwork_rnn":  # it reads leaky_rnn's through its own import
            monkeypatch.setattr(importlib.import_module("mts_kernels.ops.clockwork_rnn"), "_fused_tangent",
                                lambda *t: False)
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(T, B, H, generator=gen)
    shape = (2, H, H) if op == "deep_transition_rnn" else (H, H)
    w = (torch.randn(*shape, generator=gen) * (0.7 / H ** 0.5)).requires_grad_()
    a = torch.rand(H, generator=gen) * 0.9

    def step():
        g, = torch.autograd.grad(fn(p, w, a).tanh().sum(), w, create_graph=True)
        return torch.autograd.grad(g.square().sum(), w)

    slow = kind == "loop"
    rounds = dict(min_rounds=1, max_rounds=3, warmup_rounds=1) if slow else dict(min_rounds=3, max_rounds=30)
    info = dict(op=f"{op} second order", shape=(B, T, H), dtype=torch.float32, direction="fwd+bwd",
                backend=kind, role="reference" if slow else "kernel", variant="hvp wrt W_hh, leak")
    measure(step, device="cpu", info=info, **rounds)
