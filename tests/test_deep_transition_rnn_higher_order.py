"""deep_transition_rnn (CPU fused op): forward-mode AD and second-order gradients
against the reference loop (differentiable in every order), gradgradcheck over the
configurations, and the third order's refusal."""

import pytest
import torch
import torch.autograd.forward_ad as fwAD

import mts_kernels
from test_deep_transition_rnn import F64, _operands

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.mts_kernels, "deep_transition_rnn_fwd"),
                                reason="the compiled C++ kernels are unavailable")

T, B, H = 4, 3, 3
# (depth, shortcut, leak, h0, reverse, lengths, nonlinearity); lengths hold 0 and T
CONFIGS = [
    (1, False, None, False, False, None, "tanh"),
    (1, False, "learned", True, True, [T, 0, 2], "tanh"),
    (2, True, None, True, False, [2, T, 0], "tanh"),
    (2, False, "learned", False, True, None, "relu"),
    (3, True, "learned", True, False, None, "tanh"),
    (3, True, "float", True, True, [0, 3, T], "tanh"),
]


def _case(seed, depth, shortcut, leak, h0):
    gen = torch.Generator().manual_seed(seed)
    leaves = _operands(gen, T, B, H, depth, shortcut=shortcut, leak=leak, h0=h0)
    if leak == "float":
        leaves[5] = torch.rand(H, generator=gen, dtype=torch.float64) * 0.8  # a differentiable tensor
    idx = [i for i, t in enumerate(leaves) if t is not None]
    return leaves, idx


def _fn(leaves, idx, backend, reverse, lengths, nonlinearity):
    """h as a function of the operands that are present (positions idx)."""
    def f(*xs):
        args = list(leaves)
        for i, x in zip(idx, xs):
            args[i] = x
        p, w, h0, b, u, a = args
        return mts_kernels.deep_transition_rnn(p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a,
                                               nonlinearity=nonlinearity, reverse=reverse,
                                               lengths=lengths, backend=backend)
    return f


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_forward_mode(config):
    depth, shortcut, leak, h0, reverse, lengths, nl = config
    leaves, idx = _case(1, depth, shortcut, leak, h0)
    prims = tuple(leaves[i] for i in idx)
    gen = torch.Generator().manual_seed(2)
    tans = tuple(torch.randn(x.shape, generator=gen, dtype=x.dtype) for x in prims)
    ours = torch.func.jvp(_fn(leaves, idx, "cpu", reverse, lengths, nl), prims, tans)
    ref = torch.func.jvp(_fn(leaves, idx, "reference", reverse, lengths, nl), prims, tans)
    torch.testing.assert_close(ours, ref, **F64)
    assert ours[1].abs().max() > 1e-3  # a tangent that could be wrong
    with fwAD.dual_level():
        duals = [fwAD.make_dual(x, t) for x, t in zip(prims, tans)]
        out = _fn(leaves, idx, "cpu", reverse, lengths, nl)(*duals)
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, ref[1], **F64)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(map(str, c)))
def test_gradgradcheck(config):
    depth, shortcut, leak, h0, reverse, lengths, nl = config
    leaves, idx = _case(3, depth, shortcut, leak, h0)
    xs = [leaves[i].clone().requires_grad_() for i in idx]
    assert torch.autograd.gradgradcheck(_fn(leaves, idx, "cpu", reverse, lengths, nl), xs)


@pytest.mark.parametrize("config", [CONFIGS[1], CONFIGS[5]], ids=["d1-leak", "d3-shortcut"])
def test_hessian_vector_products(config):
    """reverse over reverse (create_graph=True) and reverse over forward
    (jacrev(jacfwd)) equal the reference loop's."""
    depth, shortcut, leak, h0, reverse, lengths, nl = config
    leaves, idx = _case(4, depth, shortcut, leak, h0)
    gen = torch.Generator().manual_seed(5)
    target = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    vs = [torch.randn(leaves[i].shape, generator=gen, dtype=torch.float64) for i in idx]

    def hvp(backend):
        xs = [leaves[i].clone().requires_grad_() for i in idx]
        loss = (_fn(leaves, idx, backend, reverse, lengths, nl)(*xs) - target).square().sum()
        gs = torch.autograd.grad(loss, xs, create_graph=True)
        return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), xs)

    ours, ref = hvp("cpu"), hvp("reference")
    torch.testing.assert_close(ours, ref, **F64)
    assert all(r.abs().max() > 1e-3 for r in ref)

    def scalar(backend):  # of p and weight_hh only: a small Hessian
        f = _fn(leaves, idx, backend, reverse, lengths, nl)
        rest = [leaves[i] for i in idx[2:]]
        return lambda p, w: (f(p, w, *rest) - target).square().sum()

    hess = torch.func.jacrev(torch.func.jacfwd(scalar("cpu"), argnums=(0, 1)), argnums=(0, 1))
    hess_ref = torch.func.hessian(scalar("reference"), argnums=(0, 1))
    torch.testing.assert_close(hess(leaves[0], leaves[1]), hess_ref(leaves[0], leaves[1]), **F64)


def test_third_order_raises():
    leaves, idx = _case(6, 2, True, "learned", True)
    xs = [leaves[i].clone().requires_grad_() for i in idx]
    h = _fn(leaves, idx, "cpu", False, None, "tanh")(*xs)
    g = torch.autograd.grad(h.square().sum(), xs[1], create_graph=True)[0]
    gg = torch.autograd.grad(g.square().sum(), xs[1], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="deep_transition_rnn: a third-order gradient.*backend='reference'"):
        torch.autograd.grad(gg.sum(), xs[1])
    with pytest.raises(RuntimeError, match="forward-mode AD of its gradient.*jacfwd"):
        torch.func.hessian(lambda w: _fn(leaves, idx, "cpu", False, None, "tanh")(
            leaves[0], w, *[leaves[i] for i in idx[2:]]).sum())(leaves[1])
