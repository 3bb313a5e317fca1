"""Training integration of the ops: autocast, higher-order and forward-mode
derivatives, torch.func transforms (mts_kernels/ops/_transforms.py)."""

import importlib

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.autograd import gradcheck, gradgradcheck

import mts_kernels as mk
from mts_kernels import reference

F64 = torch.float64


def _scan_case(leaky, per_channel, seed=0, B=3, T=6, D=2, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=gen, dtype=dtype)
    shape = (D,) if per_channel else (B, T, D)
    a = torch.rand(shape, generator=gen, dtype=dtype) * 0.9 + (0.05 if leaky else -0.45)
    h0 = torch.randn(B, D, generator=gen, dtype=dtype)
    return x, a, h0


def _scan_fn(leaky, backend, reverse, lengths):
    if leaky:
        return lambda x, a, h0: mk.leaky_integrate(x, a, h0, reverse=reverse, lengths=lengths,
                                                   backend=backend)
    return lambda x, a, h0: mk.linear_scan(a, x, h0, reverse=reverse, lengths=lengths,
                                           backend=backend)


SCAN_CASES = [(leaky, per_channel, reverse, lengths)
              for leaky in (False, True) for per_channel in (False, True)
              for reverse in (False, True) for lengths in (None, [6, 0, 1])]


def _id(case):
    leaky, per_channel, reverse, lengths = case
    return (f"{'leaky' if leaky else 'linear'}-{'chan' if per_channel else 'step'}-"
            f"{'rev' if reverse else 'fwd'}-{'lens' if lengths else 'full'}")


@pytest.mark.parametrize("case", SCAN_CASES, ids=_id)
def test_scan_gradgradcheck(case, backend="cpu"):
    leaky, per_channel, reverse, lengths = case
    x, a, h0 = (t.requires_grad_() for t in _scan_case(leaky, per_channel))
    f = _scan_fn(leaky, backend, reverse, lengths)
    assert gradcheck(f, (x, a, h0))
    assert gradgradcheck(f, (x, a, h0))


# The Triton interpreter runs a call in about 0.1 s: gradgradcheck's hundreds of
# calls run on the CPU kernels, and Triton is checked on a few second-order
# products against the reference (the derivative formulas are shared).
TRITON_CASES = [(False, False, True, [6, 0, 1]), (True, True, False, [6, 0, 1]),
                (True, False, True, None)]


@pytest.mark.parametrize("backend,case", [("cpu", c) for c in SCAN_CASES]
                         + [("triton", c) for c in TRITON_CASES],
                         ids=lambda v: v if isinstance(v, str) else _id(v))
def test_scan_second_order_matches_reference_with_nan_padding(case, backend):
    """Hessian-vector products against the reference loop. NaN in the padded
    steps of every input changes nothing, to second order (the reference loop
    is not NaN-safe there at second order: it gets finite padding)."""
    leaky, per_channel, reverse, lengths = case
    x, a, h0 = _scan_case(leaky, per_channel, seed=1)
    xn, an = x, a
    if lengths is not None:
        pad = (torch.arange(x.size(1)).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)).unsqueeze(-1)
        xn = x.masked_fill(pad, float("nan"))
        if not per_channel:
            an = a.masked_fill(pad, float("nan"))
    w = torch.randn(x.shape, dtype=F64)

    def hvp(fn, *inputs):
        args = tuple(t.clone().requires_grad_() for t in inputs)
        loss = (fn(*args).tanh() * w).sum()
        g = torch.autograd.grad(loss, args, create_graph=True)
        v = sum((gi * torch.ones_like(gi).cumsum(-1)).sum() for gi in g)
        return torch.autograd.grad(v, args, allow_unused=True)

    ours = hvp(_scan_fn(leaky, backend, reverse, lengths), xn, an, h0)
    ref = hvp(_scan_fn(leaky, "reference", reverse, lengths), x, a, h0)
    for name, o, r in zip(("x", "decay", "h0"), ours, ref):
        o = torch.zeros_like(r) if o is None else o
        torch.testing.assert_close(o, r, msg=name)


@pytest.mark.parametrize("backend,case", [("cpu", c) for c in SCAN_CASES]
                         + [("triton", c) for c in TRITON_CASES],
                         ids=lambda v: v if isinstance(v, str) else _id(v))
def test_scan_jvp_and_forward_ad(case, backend):
    leaky, per_channel, reverse, lengths = case
    x, a, h0 = _scan_case(leaky, per_channel, seed=2)
    tangents = tuple(torch.randn_like(t) for t in (x, a, h0))
    f = _scan_fn(leaky, backend, reverse, lengths)
    _, ours = torch.func.jvp(f, (x, a, h0), tangents)
    _, ref = torch.func.jvp(_scan_fn(leaky, "reference", reverse, lengths), (x, a, h0), tangents)
    torch.testing.assert_close(ours, ref)
    assert ours.abs().sum() > 0
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in zip((x, a, h0), tangents)]
        tangent = fwAD.unpack_dual(f(*duals)).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, ref)


@pytest.mark.parametrize("case", [c for c in SCAN_CASES if c[2] == (c[3] is None)], ids=_id)
def test_scan_torch_func(case):
    leaky, per_channel, reverse, lengths = case
    x, a, h0 = _scan_case(leaky, per_channel, seed=3)
    f = _scan_fn(leaky, "cpu", reverse, lengths)
    r = _scan_fn(leaky, "reference", reverse, lengths)
    loss = lambda fn: (lambda x, a, h0: fn(x, a, h0).sin().sum())
    for o, e in zip(torch.func.grad(loss(f), argnums=(0, 1, 2))(x, a, h0),
                    torch.func.grad(loss(r), argnums=(0, 1, 2))(x, a, h0)):
        torch.testing.assert_close(o, e)
    # per-sample gradients: the vmapped samples fold into the kernel's batch
    xs = torch.randn(4, *x.shape, dtype=F64)
    per_sample = torch.func.vmap(torch.func.grad(loss(f), argnums=1), in_dims=(0, None, None))
    expect = torch.stack([torch.func.grad(loss(r), argnums=1)(xs[i], a, h0) for i in range(4)])
    torch.testing.assert_close(per_sample(xs, a, h0), expect)
    # a decay per vmapped sample, with h0 batched too
    as_ = torch.stack([a * s for s in (0.5, 1.0, 1.1)])
    h0s = torch.randn(3, *h0.shape, dtype=F64)
    batched = torch.func.vmap(f, in_dims=(None, 0, 0))(x, as_, h0s)
    torch.testing.assert_close(batched, torch.stack([r(x, as_[i], h0s[i]) for i in range(3)]))
    jr = torch.func.jacrev(lambda a: f(x, a, h0))(a)
    torch.testing.assert_close(jr, torch.func.jacrev(lambda a: r(x, a, h0))(a))
    torch.testing.assert_close(torch.func.jacfwd(lambda a: f(x, a, h0))(a), jr)
    hess = torch.func.hessian(lambda h0: f(x, a, h0).pow(3).sum())(h0)
    torch.testing.assert_close(hess, torch.func.hessian(lambda h0: r(x, a, h0).pow(3).sum())(h0))


# --------------------------------------------------------------------------- recurrent cells

def _rnn_case(seed=0, T=7, B=3, H=4):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=F64) * scale)
    return (r(T, B, H), r(H, H, scale=0.4), r(B, H), torch.rand(H, generator=gen, dtype=F64),
            r(H, H, scale=0.3))


RNN_KW = [dict(skip=2, reverse=True, lengths=[7, 3, 0]), dict(dilation=2, nonlinearity="relu"),
          dict(skip=3, dilation=2)]


def _rnn(backend, skip=None, **kw):
    def f(p, w, h0, alpha, ws):
        return mk.leaky_rnn(p, w, h0, alpha=alpha, weight_skip=ws if skip else None, skip=skip,
                            backend=backend, **kw)
    return f


@pytest.mark.parametrize("kw", RNN_KW)
def test_leaky_rnn_torch_func_first_order(kw):
    args = _rnn_case()
    f, r = _rnn("cpu", **kw), _rnn("reference", **kw)
    n = len(args)
    loss = lambda fn: (lambda *a: fn(*a).tanh().sum())
    for o, e in zip(torch.func.grad(loss(f), argnums=tuple(range(n)))(*args),
                    torch.func.grad(loss(r), argnums=tuple(range(n)))(*args)):
        torch.testing.assert_close(o, e)
    p, w, h0, alpha, ws = args
    # per-sample gradients of shared weights: the forward folds the samples into
    # the batch, the backward runs per sample
    ps = torch.randn(3, *p.shape, dtype=F64)
    per_sample = torch.func.vmap(torch.func.grad(lambda p, w: loss(f)(p, w, h0, alpha, ws), argnums=1),
                                 in_dims=(0, None))(ps, w)
    expect = torch.stack([torch.func.grad(lambda w: loss(r)(ps[i], w, h0, alpha, ws))(w)
                          for i in range(3)])
    torch.testing.assert_close(per_sample, expect)
    # an ensemble: a weight per vmapped sample
    ws_ = torch.stack([w * s for s in (0.5, 1.0)])
    ens = torch.func.vmap(lambda w: f(p, w, h0, alpha, ws))(ws_)
    torch.testing.assert_close(ens, torch.stack([r(p, wi, h0, alpha, ws) for wi in ws_]))
    jr = torch.func.jacrev(lambda alpha: f(p, w, h0, alpha, ws))(alpha)
    torch.testing.assert_close(jr, torch.func.jacrev(lambda alpha: r(p, w, h0, alpha, ws))(alpha))


JVP_KW = [dict(), dict(skip=2, dilation=2, reverse=True, lengths=[7, 3, 0]),
          dict(skip=9, nonlinearity="relu", lengths=[2, 7, 5]), dict(dilation=3, reverse=True)]


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("kw", JVP_KW)
def test_leaky_rnn_jvp_and_reverse_over_forward(kw, leak):
    p, w, h0, alpha, ws = _rnn_case(seed=7)
    alpha = alpha if leak else None
    f, r = _rnn("cpu", **kw), _rnn("reference", **kw)
    prim = (p, w, h0) + ((alpha,) if leak else ())
    call = lambda fn: (lambda p, w, h0, alpha=None: fn(p, w, h0, alpha, ws))
    tangents = tuple(torch.randn_like(t) for t in prim)
    _, ours = torch.func.jvp(call(f), prim, tangents)
    _, ref = torch.func.jvp(call(r), prim, tangents)
    torch.testing.assert_close(ours, ref)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, d) for t, d in zip(prim, tangents)]
        torch.testing.assert_close(fwAD.unpack_dual(call(f)(*duals)).tangent, ref)
    # Hessians as reverse over forward, through every argument
    for i in range(len(prim)):
        def loss(x, fn):
            args = list(prim)
            args[i] = x
            return call(fn)(*args).pow(2).sum()
        hess = torch.func.jacrev(torch.func.jacfwd(lambda x: loss(x, f)))(prim[i])
        torch.testing.assert_close(hess, torch.func.hessian(lambda x: loss(x, r))(prim[i]))


def _second_order_grads(fn, args):
    """d/dargs of |d fn(args).tanh().sum() / dargs|^2: reverse over reverse."""
    args = [a.detach().requires_grad_() for a in args]
    g = torch.autograd.grad(fn(*args).tanh().sum(), args, create_graph=True)
    return torch.autograd.grad(sum((gi * gi).sum() for gi in g), args)


SECOND_ORDER_KW = [dict(), dict(skip=2, reverse=True, lengths=[7, 3, 0]),
                   dict(dilation=2, nonlinearity="relu", lengths=[2, 7, 5]), dict(skip=3, dilation=2)]


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("kw", SECOND_ORDER_KW)
def test_leaky_rnn_reverse_over_reverse(kw, leak):
    p, w, h0, alpha, ws = _rnn_case(seed=3)
    alpha = alpha * 0.9 if leak else None
    ws = ws if kw.get("skip") else None
    args = [t for t in (p, w, h0, alpha, ws) if t is not None]
    def call(fn):
        def g(p, w, h0, *rest):
            rest = list(rest)
            a = rest.pop(0) if leak else None
            return fn(p, w, h0, a, rest.pop(0) if rest else None)
        return g
    f, r = call(_rnn("cpu", **kw)), call(_rnn("reference", **kw))
    for o, e in zip(_second_order_grads(f, args), _second_order_grads(r, args)):
        torch.testing.assert_close(o, e)
    if leak:  # the numerical check (slow) on half the cases; the reference covers all
        assert gradgradcheck(f, tuple(a.requires_grad_() for a in args))


def test_leaky_rnn_beyond_second_order_raises_clearly():
    args = tuple(t.requires_grad_() for t in _rnn_case())
    f = _rnn("cpu", skip=2)
    g = torch.autograd.grad(f(*args).sum(), args[1], create_graph=True)[0]
    gg = torch.autograd.grad(g.pow(2).sum(), args[1], create_graph=True)[0]
    with pytest.raises(RuntimeError, match="third-order.*jacrev.*backend='reference'"):
        torch.autograd.grad(gg.sum(), args[1])
    with pytest.raises(RuntimeError, match="forward over reverse.*jacfwd"):
        torch.func.hessian(lambda w: f(args[0], w, *args[2:]).sum())(args[1].detach())
    # the workaround the message names works
    r = _rnn("reference", skip=2)
    w = args[1].detach()
    hess = torch.func.jacrev(torch.func.jacfwd(lambda w: f(args[0], w, *args[2:]).tanh().sum()))(w)
    torch.testing.assert_close(hess, torch.func.hessian(lambda w: r(args[0], w, *args[2:]).tanh().sum())(w))


@pytest.mark.parametrize("path", ["fused", "decomposed"])
@pytest.mark.parametrize("kw", [dict(periods=[1, 3], t0=1, lengths=[9, 4, 0]),
                                dict(periods=[2, 5], nonlinearity="relu"),
                                dict(periods=[1, 4], t0=3, lengths=[3, 9, 6])])
@pytest.mark.parametrize("leak", [False, True])
def test_clockwork_rnn_reverse_over_reverse(monkeypatch, path, kw, leak):
    monkeypatch.setenv(importlib.import_module("mts_kernels.ops.clockwork_rnn").PATH_ENV_VAR, path)
    gen = torch.Generator().manual_seed(11)
    T, B, H = 9, 3, 6
    args = [torch.randn(T, B, H, generator=gen, dtype=F64),
            torch.randn(H, H, generator=gen, dtype=F64) * 0.4, torch.randn(B, H, generator=gen, dtype=F64)]
    if leak:
        args.append(torch.rand(H, generator=gen, dtype=F64) * 0.9)
    kw = dict(kw)
    periods = kw.pop("periods")
    f = lambda p, w, h0, *a: mk.clockwork_rnn(p, w, h0, periods=periods, module_sizes=[4, 2],
                                              alpha=a[0] if a else None, **kw)
    r = lambda p, w, h0, *a: reference.clockwork_rnn(p, w, h0, periods, [4, 2],
                                                     alpha=a[0] if a else None, **kw)
    for o, e in zip(_second_order_grads(f, args), _second_order_grads(r, args)):
        torch.testing.assert_close(o, e)
    if path == "fused" and leak:  # the numerical check (slow) on a quarter of the cases
        assert gradgradcheck(f, tuple(a.requires_grad_() for a in args))


def test_clockwork_rnn_func_grad_and_third_order_error():
    gen = torch.Generator().manual_seed(4)
    T, B, H = 9, 2, 6
    p = torch.randn(T, B, H, generator=gen, dtype=F64)
    w = torch.randn(H, H, generator=gen, dtype=F64) * 0.4
    kw = dict(periods=[1, 3], module_sizes=[4, 2], t0=1, lengths=[9, 5])
    f = lambda p, w: mk.clockwork_rnn(p, w, **kw).tanh().sum()
    r = lambda p, w: reference.clockwork_rnn(p, w, None, [1, 3], [4, 2], t0=1, lengths=[9, 5]).tanh().sum()
    for o, e in zip(torch.func.grad(f, argnums=(0, 1))(p, w), torch.func.grad(r, argnums=(0, 1))(p, w)):
        torch.testing.assert_close(o, e)
    tangents = (torch.randn_like(p), torch.randn_like(w))
    torch.testing.assert_close(torch.func.jvp(f, (p, w), tangents)[1], torch.func.jvp(r, (p, w), tangents)[1])
    w = w.requires_grad_()
    g = torch.autograd.grad(f(p, w), w, create_graph=True)[0]
    gg = torch.autograd.grad(g.pow(2).sum(), w, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="third-order"):
        torch.autograd.grad(gg.sum(), w)


# --------------------------------------------------------------------------- autocast

@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
def test_scan_autocast_cpu(leaky, per_channel):
    x, a, h0 = _scan_case(leaky, per_channel, seed=5, B=4, T=64, D=8, dtype=torch.float32)
    f = _scan_fn(leaky, "cpu", False, None)
    xs = tuple(t.clone().requires_grad_() for t in (x, a, h0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = f(*xs)
    assert h.dtype == torch.bfloat16
    # exactly the op run on inputs cast to bfloat16
    torch.testing.assert_close(h, f(*(t.bfloat16() for t in (x, a, h0))), rtol=0, atol=0)
    h.float().pow(2).sum().backward()
    for t in xs:
        assert t.grad.dtype == torch.float32 and torch.isfinite(t.grad).all()
    # float64 is never cast by autocast, and mixing it in is a clear error
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(x.double(), a.double(), h0.double()).dtype == F64
        with pytest.raises(TypeError, match="autocast"):
            f(x.double(), a, h0)
    # the reference backend follows the same rule
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _scan_fn(leaky, "reference", False, None)(x, a, h0).dtype == torch.bfloat16


def _module_pair(kind):
    torch.manual_seed(6)
    if kind == "leaky":
        ours = mk.LeakyRNN(8, 16, num_layers=2, leak="learned", skip=2)
        return ours, None
    if kind == "rnn":
        ours = mk.LeakyRNN(8, 16, num_layers=2, nonlinearity="tanh")
        theirs = torch.nn.RNN(8, 16, num_layers=2)
        theirs.load_state_dict(ours.state_dict())
        return ours, theirs
    return mk.ClockworkRNN(8, 16, periods=[1, 2, 4, 8], module_sizes=[4, 4, 4, 4]), None


@pytest.mark.parametrize("kind", ["rnn", "leaky", "clockwork"])
def test_modules_autocast_cpu_bf16(kind):
    ours, theirs = _module_pair(kind)
    x = torch.randn(40, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, h_n = ours(x)
    expected_dtype = torch.bfloat16
    if theirs is not None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_t, _ = theirs(x)
        expected_dtype = y_t.dtype
    assert y.dtype == expected_dtype and h_n.dtype == expected_dtype
    y.float().sum().backward()
    for name, prm in ours.named_parameters():
        assert prm.grad is not None and prm.grad.dtype == prm.dtype, name
    # accuracy: against float64, at most about twice the error of the same
    # network run by PyTorch in bfloat16 (flash-attention's rule)
    y64, _ = ours.double()(x.double())
    err = (y.double() - y64).abs().max().item()
    if theirs is not None:
        y_ref = y_t.double()
    else:  # PyTorch's own bfloat16 computation: the reference loop in bfloat16
        ours.backend = "reference"
        y_ref, _ = ours.to(torch.bfloat16)(x.bfloat16())
        y_ref = y_ref.double()
    ref_err = (y_ref - y64).abs().max().item()
    assert err <= 2 * ref_err + 1e-3, (err, ref_err)


def test_autocast_under_compile():
    model = mk.LeakyRNN(4, 8, leak=0.5)
    x = torch.randn(5, 2, 4)
    step = torch.compile(lambda x: model(x)[0], fullgraph=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = step(x)
        y_eager = model(x)[0]
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_eager)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["rnn", "leaky", "clockwork"])
def test_modules_autocast_cuda_gradscaler(kind, dtype):
    ours, theirs = _module_pair(kind)
    ours = ours.cuda()
    x = torch.randn(40, 4, 8, device="cuda")
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    before = [p.detach().clone() for p in ours.parameters()]
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            y, h_n = ours(x)
            loss = y.float().pow(2).mean()
        assert y.dtype == dtype
        if theirs is not None:
            with torch.autocast("cuda", dtype=dtype):
                y_t, _ = theirs.cuda()(x)
            assert y_t.dtype == y.dtype
        scaler.scale(loss).backward()
        for prm in ours.parameters():
            assert prm.grad.dtype == torch.float32 and torch.isfinite(prm.grad).all()
        scaler.step(opt)
        scaler.update()
    assert any(not torch.equal(b, p) for b, p in zip(before, ours.parameters()))


@pytest.mark.parametrize("op", ["leaky_rnn", "clockwork_rnn", "deep_transition_rnn"])
def test_backward_materializes_no_zero_grads_for_saved_outputs(op):
    # The cells' ops return a second, non-differentiable (T, B, H)-sized output (u,
    # or DeepTransitionRNN's sub-layer states s) that the backward reads; autograd
    # must not build a zero gradient for it (a fill of 64 MiB per step at B=32,
    # T=1024, H=256, 2 layers), nor for an unused h.
    T, B, H = 6, 3, 8
    gen = torch.Generator().manual_seed(3)
    p = torch.randn(T, B, H, generator=gen, requires_grad=True)
    w = (torch.randn(H, H, generator=gen) * H ** -0.5).requires_grad_()
    alpha = torch.full((H,), 0.5)
    if op == "leaky_rnn":
        run = lambda: mk.leaky_rnn(p, w, alpha=alpha)  # noqa: E731
    elif op == "clockwork_rnn":
        run = lambda: mk.clockwork_rnn(p, w, periods=[1, 2], module_sizes=[4, 4], alpha=alpha)  # noqa: E731
    else:
        w2 = (torch.randn(2, H, H, generator=gen) * H ** -0.5).requires_grad_()
        run = lambda: mk.deep_transition_rnn(p, w2, alpha=alpha)  # noqa: E731
    h = run()
    g = torch.randn(h.shape, generator=gen)
    with torch.profiler.profile(record_shapes=True) as prof:
        torch.autograd.grad(h, p, g)
    big = [e for e in prof.events() if e.name in ("aten::fill_", "aten::zero_", "aten::zeros_like")
           and any(s and torch.Size(s).numel() >= T * B * H for s in e.input_shapes)]
    assert not big, [(e.name, e.input_shapes) for e in big]
    # and the gradient is still right
    torch.testing.assert_close(torch.autograd.grad(run(), p, g)[0],
                               torch.autograd.grad(run(), p, g)[0], rtol=0, atol=0)
