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


# ------------------------------------------- the fused tangent op and its adjoint
import importlib  # noqa: E402

dt_ops = importlib.import_module("mts_kernels.ops.deep_transition_rnn")
OPS = torch.ops.mts_kernels
TANGENT_CASES = [  # L, shortcut, keep, start, reverse, lengths
    (1, False, False, False, False, None),
    (2, True, True, True, True, [T, 0, 2]),
    (3, True, True, False, False, [2, T, 1]),
    (2, False, False, True, True, None),
]


def _tangent_args(seed, L, shortcut, keep, start, reverse, lengths, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return (r(T, B, H), r(L, T, B, H).sigmoid(), r(L, H, H, scale=0.6), r(H).sigmoid() if keep else None,
            r(H, H, scale=0.6) if shortcut else None, r(B, H) if start else None, reverse,
            None if lengths is None else torch.tensor(lengths))


@pytest.mark.parametrize("case", TANGENT_CASES, ids=str)
def test_tangent_op_gradcheck_and_opcheck(case):
    args = _tangent_args(7, *case)
    diff = [i for i in range(6) if args[i] is not None]
    xs = [args[i].clone().requires_grad_() for i in diff]

    def f(*ys):
        full = list(args)
        for i, y in zip(diff, ys):
            full[i] = y
        return OPS.deep_transition_rnn_tangent(*full)[0]

    assert torch.autograd.gradcheck(f, xs)
    torch.library.opcheck(OPS.deep_transition_rnn_tangent, tuple(xs[diff.index(i)] if i in diff else a
                                                                 for i, a in enumerate(args)))
    h, a = OPS.deep_transition_rnn_tangent(*args)
    g = torch.randn_like(h)
    torch.library.opcheck(OPS.deep_transition_rnn_tangent_bwd, (g, *args[1:6], h, a, *args[6:]))


@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[5]], ids=["d2-shortcut-lengths", "d3-float-reverse"])
def test_second_order_runs_the_fused_tangent(monkeypatch, config):
    """The second order through the fused op equals the one through the step loop
    (and the reference's, test_hessian_vector_products), and the op ran."""
    depth, shortcut, leak, h0, reverse, lengths, nl = config
    leaves, idx = _case(8, depth, shortcut, leak, h0)
    gen = torch.Generator().manual_seed(9)
    vs = [torch.randn(leaves[i].shape, generator=gen, dtype=torch.float64) for i in idx]

    def hvp():
        xs = [leaves[i].clone().requires_grad_() for i in idx]
        gs = torch.autograd.grad(_fn(leaves, idx, "cpu", reverse, lengths, nl)(*xs).tanh().sum(), xs,
                                 create_graph=True)
        return torch.autograd.grad(sum((g * v).sum() for g, v in zip(gs, vs)), xs)

    calls = []
    real = dt_ops._fused_tangent
    monkeypatch.setattr(dt_ops, "_fused_tangent", lambda *t: (calls.append(real(*t)), calls[-1])[1])
    fused = hvp()
    assert calls and all(calls)
    monkeypatch.setattr(dt_ops, "_fused_tangent", lambda *t: False)
    torch.testing.assert_close(fused, hvp(), **F64)


def test_tangent_op_third_order_and_bad_input():
    args = _tangent_args(10, 2, True, True, True, False, None)
    w = args[2].clone().requires_grad_()
    h, _ = OPS.deep_transition_rnn_tangent(args[0], args[1], w, *args[3:])
    g, = torch.autograd.grad(h.square().sum(), w, create_graph=True)  # a second order of the op: fine
    with pytest.raises(RuntimeError, match="deep_transition_rnn: a third-order gradient"):
        torch.autograd.grad(g.sum(), w)
    with pytest.raises(RuntimeError, match=r"gains must have shape \[2, 4, 3, 3\]"):
        OPS.deep_transition_rnn_tangent(args[0], args[1][:1], *args[2:])
    with pytest.raises(RuntimeError, match="weight_shortcut needs a transition depth L >= 2"):
        OPS.deep_transition_rnn_tangent(args[0], args[1][:1], args[2][:1], *args[3:])


@pytest.mark.cuda
@pytest.mark.parametrize("case", TANGENT_CASES, ids=str)
def test_cuda_tangent_ops_match_cpu(case):
    args = _tangent_args(11, *case)
    dev = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    h, a = OPS.deep_transition_rnn_tangent(*args)
    h_c, a_c = OPS.deep_transition_rnn_tangent(*dev)
    torch.testing.assert_close(h_c.cpu(), h, **F64)
    g = torch.randn_like(h)
    want = OPS.deep_transition_rnn_tangent_bwd(g, *args[1:6], h, a, *args[6:])
    got = OPS.deep_transition_rnn_tangent_bwd(g.cuda(), *dev[1:6], h_c, a_c, *dev[6:])
    for x, y in zip(got, want):
        torch.testing.assert_close(x.cpu(), y, **F64)


def test_tangent_op_flop_count():
    from torch.utils.flop_counter import FlopCounterMode
    args = _tangent_args(12, 2, True, True, True, False, None)
    with FlopCounterMode(display=False) as counter:
        h, a = OPS.deep_transition_rnn_tangent(*args)
    assert counter.get_total_flops() == 2 * T * B * H * H * 3
    with FlopCounterMode(display=False) as counter:
        OPS.deep_transition_rnn_tangent_bwd(torch.ones_like(h), *args[1:6], h, a, *args[6:])
    assert counter.get_total_flops() == 2 * 2 * T * B * H * H * 3


def test_transforms_take_the_fused_tangent(monkeypatch):
    """Under torch.func, jvp, jacrev(jacfwd) and vmap of jvp run the tangent's fused
    op (through _TangentFunction) and equal the reference loop's."""
    calls = []
    real = dt_ops._TangentFunction.apply
    monkeypatch.setattr(dt_ops._TangentFunction, "apply", lambda *a: (calls.append(1), real(*a))[1])
    depth, shortcut, leak, h0, reverse, lengths, nl = CONFIGS[5]
    leaves, idx = _case(13, depth, shortcut, leak, h0)
    rest = [leaves[i] for i in idx[2:]]

    def f(backend):
        g = _fn(leaves, idx, backend, reverse, lengths, nl)
        return lambda p, w: g(p, w, *rest).tanh().sum()

    gen = torch.Generator().manual_seed(14)
    tw = torch.randn(leaves[1].shape, generator=gen, dtype=torch.float64)
    jv = torch.func.jvp(lambda w: f("cpu")(leaves[0], w), (leaves[1],), (tw,))
    torch.testing.assert_close(jv, torch.func.jvp(lambda w: f("reference")(leaves[0], w), (leaves[1],), (tw,)),
                               **F64)
    assert calls
    calls.clear()
    hess = lambda be: torch.func.jacrev(torch.func.jacfwd(lambda w: f(be)(leaves[0], w)))(leaves[1])  # noqa: E731
    torch.testing.assert_close(hess("cpu"), hess("reference"), **F64)
    assert calls
    calls.clear()
    ps = torch.randn(2, *leaves[0].shape, generator=gen, dtype=torch.float64)
    vj = lambda be: torch.func.vmap(lambda p: torch.func.jvp(  # noqa: E731
        lambda w: f(be)(p, w), (leaves[1],), (tw,))[1])(ps)
    torch.testing.assert_close(vj("cpu"), vj("reference"), **F64)
    assert calls
