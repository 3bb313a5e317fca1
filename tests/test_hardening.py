"""Unusual but legal arguments and direct op calls: the reference's answer or a
clear error, with memory and time that follow the work (never a crash)."""

import math

import pytest
import torch

import mts_kernels
from mts_kernels import ClockworkRNN, LeakyRNN, reference


def _grads(out, inputs):
    return torch.autograd.grad(out.square().sum(), inputs)


@pytest.mark.parametrize("delay", [10**6, 2**40, 2**62, 2**63 - 1])
@pytest.mark.parametrize("kind", ["dilation", "skip"])
@pytest.mark.parametrize("reverse", [False, True])
def test_huge_delays(delay, kind, reverse):
    """A delay longer than T reads h0 at every step: costs what T costs."""
    gen = torch.Generator().manual_seed(0)
    T, B, H = 5, 2, 3
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    kw = dict(dilation=delay) if kind == "dilation" else dict(skip=delay, weight_skip=w)
    kw.update(reverse=reverse, lengths=[5, 3])
    out = mts_kernels.leaky_rnn(p, w, h0, **kw)
    ref = reference.leaky_rnn(p, w, h0, **kw)
    torch.testing.assert_close(out, ref)
    for a, b in zip(_grads(out, [p, w, h0]), _grads(ref, [p, w, h0])):
        torch.testing.assert_close(a, b)


def test_huge_delay_direct_op_call():
    T, B, H = 5, 2, 3
    p, w = torch.randn(T, B, H), torch.randn(H, H)
    for d in (2**62, 2**63 - 1):
        h, u = torch.ops.mts_kernels.leaky_rnn_fwd(p, w, None, None, None, 0, d, "tanh", False)
        grads = torch.ops.mts_kernels.leaky_rnn_bwd(torch.ones_like(h), w, h, u, None, None, None, 0, d,
                                                    "tanh", False)
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("period", [2_000_000, 2**40, 2**63 + 5])
@pytest.mark.parametrize("t0", [0, 7, 2**62])
def test_huge_clockwork_periods(period, t0):
    """A period longer than T costs what T costs (no n * P hold expansion)."""
    gen = torch.Generator().manual_seed(1)
    T, B = 20, 2
    p = torch.randn(T, B, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(6, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    kw = dict(periods=[1, period], module_sizes=[3, 3], t0=t0)
    out = mts_kernels.clockwork_rnn(p, w, **kw)
    ref = reference.clockwork_rnn(p, w, None, kw["periods"], kw["module_sizes"], t0=t0)
    torch.testing.assert_close(out, ref)
    for a, b in zip(_grads(out, [p, w]), _grads(ref, [p, w])):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("which", ["grad_h", "u"])
def test_rnn_bwd_checks_dtypes(which):
    """leaky_rnn_bwd reads grad_h and u with h's element type: a mismatch raises."""
    T, B, H = 4, 2, 3
    p, w, alpha = torch.randn(T, B, H), torch.randn(H, H), torch.rand(H)
    h, u = torch.ops.mts_kernels.leaky_rnn_fwd(p, w, None, alpha, None, 0, 1, "tanh", False)
    g = torch.ones_like(h)
    if which == "grad_h":
        g = g.double()
    else:
        u = u.double()
    with pytest.raises(RuntimeError, match=f"leaky_rnn_bwd: {which} must be Float of shape"):
        torch.ops.mts_kernels.leaky_rnn_bwd(g, w, h, u, None, alpha, None, 0, 1, "tanh", False)


@pytest.mark.parametrize("tau_range", [(1, float("inf")), (float("nan"), 2.0), (1, True)])
@pytest.mark.parametrize("cls", [LeakyRNN, ClockworkRNN])
def test_tau_range_must_be_finite(tau_range, cls):
    with pytest.raises(ValueError, match="tau_range"):
        cls(3, 4, leak="learned", tau_range=tau_range)
    assert math.isfinite(cls(3, 4, leak="learned", tau_range=(1.0, 5.0)).tau_range[1])


def test_relu_nan_alpha_matches_reference():
    """relu's zero derivative masks a NaN leak's gradient as torch does."""
    gen = torch.Generator().manual_seed(2)
    T, B, H = 4, 2, 3
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64)
    alpha = torch.tensor([0.5, float("nan"), 0.2], dtype=torch.float64)
    kw = dict(alpha=alpha, nonlinearity="relu")
    dp = torch.autograd.grad(mts_kernels.leaky_rnn(p, w, **kw)[:, :, 0].sum(), p)[0]
    dp_ref = torch.autograd.grad(reference.leaky_rnn(p, w, **kw)[:, :, 0].sum(), p)[0]
    torch.testing.assert_close(dp, dp_ref, equal_nan=True)


@pytest.mark.parametrize("layout", ["expanded", "permuted", "sliced"])
@pytest.mark.parametrize("cls", ["ClockworkRNN", "LeakyRNN", "DeepTransitionRNN"])
def test_non_contiguous_output_gradient(cls, layout):
    """The backward kernels take grad_h in any layout (y.sum() hands them an
    expanded one, a batch-first head a transposed one; the CPU kernels copy it
    into a cached block): the same gradients, bitwise, as its contiguous copy.
    T * B * H * 4 bytes is above the block cache's 2 MiB threshold."""
    torch.manual_seed(0)
    make = {"ClockworkRNN": lambda: ClockworkRNN(5, 64, periods=[1, 3, 7]),
            "LeakyRNN": lambda: LeakyRNN(5, 64, leak=0.5),
            "DeepTransitionRNN": lambda: mts_kernels.DeepTransitionRNN(5, 64, shortcut=True)}[cls]
    model = make()
    x = torch.randn(2100, 4, 5)
    T, B, H = 2100, 4, 64
    g = {"expanded": lambda: torch.randn(H).expand(T, B, H),
         "permuted": lambda: torch.randn(B, T, H).transpose(0, 1),
         "sliced": lambda: torch.randn(T, B, 2 * H)[..., ::2]}[layout]()
    assert not g.is_contiguous()
    params = list(model.parameters())
    got = torch.autograd.grad(model(x)[0], params, g)
    want = torch.autograd.grad(model(x)[0], params, g.contiguous())
    for a, b in zip(got, want):
        assert torch.equal(a, b)
