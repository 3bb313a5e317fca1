"""Helpers shared by the recurrent-cell tests."""

import torch


def grads(out, h_n, inputs, seed=0):
    """Gradients of a random linear function of (output, h_n) with respect to inputs."""
    gen = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    g_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    return torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), inputs)


def clockwork_case(seed, T, B, sizes, dtype=torch.float64, leak=False, with_h0=True, device="cpu"):
    """(p, weight_hh, h0, alpha) of a clockwork_rnn call: random, drawn in float64."""
    gen = torch.Generator().manual_seed(seed)
    H = sum(sizes)
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * (0.9 / H ** 0.5)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64) if with_h0 else None
    alpha = torch.rand(H, generator=gen, dtype=torch.float64) * 0.9 if leak else None
    return [None if t is None else t.to(dtype).to(device) for t in (p, w, h0, alpha)]


def grads_wrt(out, ins, g):
    """d(out . g) / d ins for the given (non-None) inputs, zeros where unused."""
    ins = [t for t in ins if t is not None]
    return torch.autograd.grad(out, ins, g, allow_unused=True, materialize_grads=True)


def record_clockwork_path(monkeypatch, cw_ops):
    """The path decisions clockwork_rnn makes from now on (True: the fused op)."""
    calls = []
    real = cw_ops._use_fused
    monkeypatch.setattr(cw_ops, "_use_fused", lambda *a: (calls.append(real(*a)), calls[-1])[1])
    return calls
