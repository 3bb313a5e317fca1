"""leaky_rnn_tangent: the fused linearised leaky recurrence (leaky_rnn's tangent
and, through its registered gradient, the second order of leaky_rnn) against the
PyTorch step loop it replaces on the CPU, values and every gradient, float64."""

import importlib

import pytest
import torch

import mts_kernels

# the module (mts_kernels.ops.leaky_rnn is also the name of the function)
lr = importlib.import_module("mts_kernels.ops.leaky_rnn")

pytestmark = pytest.mark.skipif(not lr.TANGENT_COMPILED, reason="compiled CPU kernels needed")

CASES = [  # T, B, H, skip, dilation, reverse, lengths, keep, start
    (7, 3, 5, 0, 1, False, None, True, True),
    (9, 4, 6, 3, 1, False, [9, 0, 4, 1], True, True),
    (8, 3, 5, 0, 2, True, [8, 5, 2], False, True),
    (6, 2, 17, 2, 3, True, None, True, False),
    (5, 3, 4, 7, 6, False, [5, 3, 1], True, True),  # delays beyond some lengths and T
    (4, 40, 64, 1, 1, False, None, True, True),     # BLAS-sized steps (B*H*H > 2^17)
    (8, 3, 6, 0, 2, True, [8, 4, 0], "per step", True),  # clockwork's per-step keep
    (7, 4, 5, 2, 1, False, [7, 3, 5, 1], "per step", True),
    # BLAS-sized steps in two row groups, with lengths 0..T and a per-step keep
    (6, 33, 72, 2, 2, True, [6, 0, 1] + [i * 5 % 7 for i in range(30)], "per step", True),
]


def _inputs(T, B, H, skip, keep, start, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    return dict(drive=r(T, B, H), gain=r(T, B, H).abs(), w=r(H, H) / H ** 0.5,
                keep=(r(T, B, H) if keep == "per step" else r(H)).sigmoid() if keep else None, ws=r(H, H) / H ** 0.5 if skip else None,
                start=r(B, H) if start else None)


def _loop(a, skip, dilation, reverse, lengths):
    """The step loop in processing order, mapped back to time order."""
    lens = None if lengths is None else torch.tensor(lengths)
    order = lambda x: lr._processing_order(x, reverse, lens)
    T, B, H = a["drive"].shape
    live = None if lens is None else lr._live(a["drive"], lens)
    drive = order(a["drive"])
    if live is not None:
        drive = torch.where(live, drive, 0.0)
    start = a["start"] if a["start"] is not None else a["drive"].new_zeros(B, H)
    keep = a["keep"] if a["keep"] is None or a["keep"].dim() == 1 else order(a["keep"])
    out = lr._linear_loop(drive, order(a["gain"]), a["w"], keep, a["ws"], start, skip, dilation, live)
    return order(out)


def _fused(a, skip, dilation, reverse, lengths):
    lens = None if lengths is None else torch.tensor(lengths)
    return torch.ops.mts_kernels.leaky_rnn_tangent(a["drive"], a["gain"], a["w"], a["keep"], a["ws"],
                                                   a["start"], skip, dilation, False, reverse, lens)


@pytest.mark.parametrize("case", CASES)
def test_matches_loop_values_and_gradients(case):
    T, B, H, skip, dilation, reverse, lengths, keep, start = case
    a = _inputs(T, B, H, skip, keep, start)
    leaves = {k: v.requires_grad_() for k, v in a.items() if v is not None}
    want = _loop(a, skip, dilation, reverse, lengths)
    got = _fused(a, skip, dilation, reverse, lengths)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    c = torch.randn(T, B, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gw = torch.autograd.grad((want * c).sum(), list(leaves.values()))
    gg = torch.autograd.grad((got * c).sum(), list(leaves.values()))
    for name, x, y in zip(leaves, gg, gw):
        torch.testing.assert_close(x, y, rtol=1e-11, atol=1e-11, msg=lambda m: f"d{name}: {m}")


@pytest.mark.parametrize("case", CASES[:5] + CASES[6:8])  # not the BLAS-sized ones
def test_gradcheck(case):
    T, B, H, skip, dilation, reverse, lengths, keep, start = case
    a = _inputs(T, B, H, skip, keep, start, seed=2)
    names = [k for k, v in a.items() if v is not None]

    def f(*xs):
        b = dict(a, **dict(zip(names, xs)))
        return _fused(b, skip, dilation, reverse, lengths)

    assert torch.autograd.gradcheck(f, [a[k].requires_grad_() for k in names])


def test_float32_and_bad_input():
    a = _inputs(6, 3, 8, 0, True, True)
    a32 = {k: (v.float() if v is not None else None) for k, v in a.items()}
    torch.testing.assert_close(_fused(a32, 0, 1, False, None), _fused(a, 0, 1, False, None).float(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="gain must have shape"):
        torch.ops.mts_kernels.leaky_rnn_tangent(a["drive"], a["gain"][:2], a["w"], None, None, None, 0, 1,
                                                False, False, None)
    with pytest.raises(RuntimeError, match="weight_skip must be given exactly when skip > 0"):
        torch.ops.mts_kernels.leaky_rnn_tangent(a["drive"], a["gain"], a["w"], None, None, None, 2, 1,
                                                False, False, None)
    with pytest.raises(RuntimeError, match="lengths must be in"):
        torch.ops.mts_kernels.leaky_rnn_tangent(a["drive"], a["gain"], a["w"], None, None, None, 0, 1,
                                                False, False, torch.tensor([1, 7, 2]))


def _check_fused_second_order(monkeypatch, module, fused_fn, ref_fn, T, B, H, seed):
    """create_graph=True through fused_fn(p, w, alpha) reaches the fused tangent op
    (module's step loop is never called) and gives ref_fn's second order."""
    calls, fused = [], []
    real, real_fused = lr._linear_loop, lr._fused_tangent
    monkeypatch.setattr(module, "_linear_loop", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(module, "_fused_tangent", lambda *x: fused.append(real_fused(*x)) or fused[-1])
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, generator=gen, dtype=torch.float64) / 2).requires_grad_()
    alpha = torch.rand(H, generator=gen, dtype=torch.float64).requires_grad_()
    out = []
    for fn in (fused_fn, ref_fn):
        h = fn(p, w, alpha)
        g = torch.autograd.grad(h.square().sum(), (p, w, alpha), create_graph=True)
        out.append(torch.autograd.grad(sum((x * x).sum() for x in g), (p, w, alpha)))
    assert not calls and fused and all(fused)
    for x, y in zip(*out):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


def test_second_order_uses_the_fused_op(monkeypatch):
    kw = dict(dilation=2, lengths=[6, 3])
    _check_fused_second_order(monkeypatch, lr, lambda p, w, a: mts_kernels.leaky_rnn(p, w, alpha=a, **kw),
                              lambda p, w, a: mts_kernels.reference.leaky_rnn(p, w, alpha=a, **kw),
                              6, 2, 4, seed=3)


def test_clockwork_second_order_uses_the_fused_op(monkeypatch):
    """The fused clockwork op's tangent: the same op with a per-step keep."""
    cw = importlib.import_module("mts_kernels.ops.clockwork_rnn")
    clock = dict(periods=[1, 2, 3], module_sizes=[2, 3, 1], t0=1)
    lens = [9, 4, 6]
    _check_fused_second_order(
        monkeypatch, cw,
        lambda p, w, a: mts_kernels.clockwork_rnn(p, w, alpha=a, lengths=lens, **clock),
        lambda p, w, a: mts_kernels.reference.clockwork_rnn(p, w, None, clock["periods"], clock["module_sizes"],
                                                           alpha=a, t0=1, lengths=torch.tensor(lens)),
        9, 3, 6, seed=5)


@pytest.mark.parametrize("case", [CASES[1], CASES[2]])
def test_opcheck(case):
    T, B, H, skip, dilation, reverse, lengths, keep, start = case
    a = _inputs(T, B, H, skip, keep, start, seed=4)
    for v in a.values():
        if v is not None:
            v.requires_grad_()
    lens = None if lengths is None else torch.tensor(lengths)
    torch.library.opcheck(torch.ops.mts_kernels.leaky_rnn_tangent.default,
                          (a["drive"], a["gain"], a["w"], a["keep"], a["ws"], a["start"], skip, dilation,
                           False, reverse, lens))


def test_flop_count():
    from torch.utils.flop_counter import FlopCounterMode
    a = _inputs(5, 3, 8, 2, True, True)
    with FlopCounterMode(display=False) as fc:
        _fused(a, 2, 1, False, None)
    assert fc.get_total_flops() == 2 * 5 * 3 * 8 * 8 * 2


# ----------------------------------------------------------- the CUDA loop
# csrc/rnn/tangent_loop.h is the CUDA op's whole host loop; the test hook runs it
# on the CPU with CPU GEMMs on the same views and the kernel's per-element body
# (tangent_step.h) in a plain loop.
EMU = getattr(torch.ops.mts_kernels, "_leaky_rnn_tangent_gpu_loop_emulate", None)


def _op_args(a, skip, dilation, inside, reverse, lengths):
    lens = None if lengths is None else torch.tensor(lengths)
    return (a["drive"], a["gain"], a["w"], a["keep"], a["ws"], None if inside else a["start"], skip, dilation,
            inside, reverse, lens)


@pytest.mark.skipif(EMU is None, reason="needs the compiled test hook")
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("inside", [False, True])
def test_gpu_loop_matches_cpu_op(case, inside):
    T, B, H, skip, dilation, reverse, lengths, keep, start = case
    a = _inputs(T, B, H, skip, keep, start, seed=3)
    args = _op_args(a, skip, dilation, inside, reverse, lengths)
    want = torch.ops.mts_kernels.leaky_rnn_tangent(*args)
    assert want.abs().max() > 0
    torch.testing.assert_close(EMU(*args), want, rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(EMU is None, reason="needs the compiled test hook")
def test_gpu_loop_float32_and_bad_input():
    a = {k: (v.float() if v is not None else None) for k, v in _inputs(9, 4, 6, 2, True, True, seed=4).items()}
    args = _op_args(a, 2, 3, False, True, [9, 0, 4, 2])
    torch.testing.assert_close(EMU(*args), torch.ops.mts_kernels.leaky_rnn_tangent(*args), rtol=1e-5, atol=1e-6)
    bad = list(args)
    bad[8] = True  # gain_inside with a start state
    with pytest.raises(RuntimeError, match="gain_inside takes no start state"):
        EMU(*bad)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("inside", [False, True])
def test_cuda_op_matches_cpu_op(case, inside):
    T, B, H, skip, dilation, reverse, lengths, keep, start = case
    a = _inputs(T, B, H, skip, keep, start, seed=5)
    args = _op_args(a, skip, dilation, inside, reverse, lengths)
    dev = [x.cuda() if isinstance(x, torch.Tensor) else x for x in args]
    torch.testing.assert_close(torch.ops.mts_kernels.leaky_rnn_tangent(*dev).cpu(),
                               torch.ops.mts_kernels.leaky_rnn_tangent(*args), rtol=1e-11, atol=1e-11)


@pytest.mark.cuda
def test_cuda_second_order_takes_the_fused_op(monkeypatch):
    calls = []
    real = lr._fused_tangent
    monkeypatch.setattr(lr, "_fused_tangent", lambda *t: (calls.append(real(*t)), calls[-1])[1])
    gen = torch.Generator().manual_seed(6)
    p = torch.randn(12, 3, 8, generator=gen, dtype=torch.float64).cuda()
    w = (torch.randn(8, 8, generator=gen, dtype=torch.float64) * 0.3).cuda()
    alpha = torch.rand(8, generator=gen, dtype=torch.float64).cuda()

    def hvp(fn, dtype):
        wd = w.to(dtype).requires_grad_()
        kw = dict(alpha=alpha.to(dtype), skip=2, lengths=[12, 5, 0])
        g, = torch.autograd.grad(fn(p.to(dtype), wd, **kw).tanh().sum(), wd, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), wd)[0].double()

    # the CUDA backend runs float32 (float64 goes to Triton)
    got = hvp(lambda p, w, **k: mts_kernels.leaky_rnn(p, w, backend="cuda", **k), torch.float32)
    assert calls and all(calls)
    want = hvp(lambda p, w, **k: mts_kernels.reference.leaky_rnn(p, w, **k), torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------- under torch.func: _TangentFunction
TRANSFORM_CASES = [  # skip, dilation, reverse, lengths
    (0, 1, False, None),
    (2, 1, True, [6, 0, 3]),
    (0, 2, True, [6, 4, 1]),
]


@pytest.mark.parametrize("skip,dilation,reverse,lengths", TRANSFORM_CASES)
def test_transforms_take_the_fused_tangent(monkeypatch, skip, dilation, reverse, lengths):
    """jvp, reverse over forward (jacrev(jacfwd)) and vmap of jvp under torch.func
    run the tangent as the fused op (through _TangentFunction) and equal the
    reference loop's."""
    calls = []
    real = lr._TangentFunction.apply
    monkeypatch.setattr(lr._TangentFunction, "apply", lambda *a: (calls.append(1), real(*a))[1])
    gen = torch.Generator().manual_seed(20)
    T, B, H = 6, 3, 4
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.4
    ws = torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.4 if skip else None
    alpha = torch.rand(H, generator=gen, dtype=torch.float64) * 0.8
    kw = dict(skip=skip or None, dilation=dilation, reverse=reverse, lengths=lengths)

    def f(backend):
        return lambda w_, p_: mts_kernels.leaky_rnn(p_, w_, alpha=alpha, weight_skip=ws, backend=backend,
                                                    **kw).tanh().sum()

    tw = torch.randn(H, H, generator=gen, dtype=torch.float64)
    jv = torch.func.jvp(lambda w_: f("cpu")(w_, p), (w,), (tw,))
    jv_ref = torch.func.jvp(lambda w_: f("reference")(w_, p), (w,), (tw,))
    torch.testing.assert_close(jv, jv_ref)
    assert calls, "the fused tangent did not run"
    calls.clear()
    hess = torch.func.jacrev(torch.func.jacfwd(lambda w_: f("cpu")(w_, p)))(w)
    torch.testing.assert_close(hess, torch.func.jacrev(torch.func.jacfwd(lambda w_: f("reference")(w_, p)))(w))
    assert calls
    ps = torch.randn(2, T, B, H, generator=gen, dtype=torch.float64)
    calls.clear()
    batched = torch.func.vmap(lambda p_: torch.func.jvp(lambda w_: f("cpu")(w_, p_), (w,), (tw,))[1])(ps)
    ref = torch.stack([torch.func.jvp(lambda w_: f("reference")(w_, q), (w,), (tw,))[1] for q in ps])
    torch.testing.assert_close(batched, ref)
    assert calls


@pytest.mark.parametrize("op", ["leaky_rnn", "clockwork_rnn", "deep_transition_rnn"])
def test_forward_over_forward_raises(op):
    """A jvp of a jvp (jacfwd(jacfwd)) through a cell's jvp rule once returned a
    silently wrong result (the rule's saved outputs lose the outer tangent): now a
    clear error naming jacrev(jacfwd) and backend='reference'."""
    gen = torch.Generator().manual_seed(21)
    T, B, H = 5, 2, 3
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.4
    t = torch.randn(H, H, generator=gen, dtype=torch.float64)
    fn = {"leaky_rnn": lambda w_: mts_kernels.leaky_rnn(p, w_),
          "clockwork_rnn": lambda w_: mts_kernels.clockwork_rnn(p, w_, periods=[1, 2], module_sizes=[2, 1]),
          "deep_transition_rnn": lambda w_: mts_kernels.deep_transition_rnn(p, torch.stack([w_, 0.5 * w_]))}[op]
    torch.func.jvp(fn, (w,), (t,))  # one level: fine
    with pytest.raises(RuntimeError, match=rf"{op}: forward mode over forward mode.*jacrev\(torch.func.jacfwd"):
        torch.func.jvp(lambda w2: torch.func.jvp(fn, (w2,), (t,))[1], (w,), (t,))
    with pytest.raises(RuntimeError, match="forward mode over forward mode"):
        torch.func.jacfwd(torch.func.jacfwd(lambda w_: fn(w_).sum()))(w)


def test_vmap_of_jvp_over_weights_and_leaks():
    """vmap over an ensemble of weights, or of leaks (per-unit keep), takes
    _TangentFunction's per-sample rule; both equal the reference."""
    gen = torch.Generator().manual_seed(22)
    T, B, H = 5, 2, 3
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    ws = torch.randn(3, H, H, generator=gen, dtype=torch.float64) * 0.4
    t = torch.randn(H, H, generator=gen, dtype=torch.float64)
    a = torch.rand(H, generator=gen, dtype=torch.float64) * 0.8
    alphas = torch.rand(3, H, generator=gen, dtype=torch.float64) * 0.8

    def over_w(be):
        return lambda w_: torch.func.jvp(lambda w2: mts_kernels.leaky_rnn(p, w2, alpha=a, backend=be,
                                                                          lengths=[5, 2]), (w_,), (t,))[1]

    def over_alpha(be):
        return lambda a_: torch.func.jvp(lambda w2: mts_kernels.leaky_rnn(p, w2, alpha=a_, backend=be,
                                                                          reverse=True), (ws[0],), (t,))[1]

    for make, xs in ((over_w, ws), (over_alpha, alphas)):
        torch.testing.assert_close(torch.func.vmap(make("cpu"))(xs), torch.func.vmap(make("reference"))(xs))
