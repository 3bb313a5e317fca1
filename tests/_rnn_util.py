"""Helpers shared by the recurrent-cell tests."""

import torch


def grads(out, h_n, inputs, seed=0):
    """Gradients of a random linear function of (output, h_n) with respect to inputs."""
    gen = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    g_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    return torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), inputs)
