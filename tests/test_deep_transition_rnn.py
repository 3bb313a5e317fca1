"""DeepTransitionRNN / deep_transition_rnn (CPU): the fused C++ op against the
reference loop (values and every gradient), torch.nn.RNN at depth 1, the module's
nn.RNN conventions, compile, opcheck, autocast, transforms and bad input."""

import io
import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import mts_kernels
from _rnn_util import grads as _grads
from mts_kernels import DeepTransitionRNN, reference

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.mts_kernels, "deep_transition_rnn_fwd"),
                                reason="the compiled C++ kernels are unavailable")

F64 = dict(rtol=1e-10, atol=1e-10)


def _operands(gen, T, B, H, L, *, shortcut, leak, h0=True, bias=True, dtype=torch.float64):
    """Leaves (p, weight_hh, h0, bias_hh, weight_shortcut, alpha) in float64 (None where off)."""
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    alpha = None
    if leak == "float":
        alpha = torch.full((H,), 0.6, dtype=dtype)
    elif leak == "learned":  # as the module makes it: exp(-1/tau), a spread of time scales
        alpha = torch.exp(-1.0 / torch.exp(torch.rand(H, generator=gen, dtype=torch.float64) * 3)).to(dtype)
    return [r(T, B, H), r(L, H, H, scale=1.2 * H ** -0.5), r(B, H) if h0 else None,
            r(L, H, scale=0.3) if bias else None, r(H, H, scale=H ** -0.5) if shortcut else None, alpha]


def _run(fn, leaves, g, **kw):
    p, w, h0, b, u, a = leaves
    h = fn(p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a, **kw)
    used = [t for t in leaves if t is not None and t.requires_grad]
    return h, torch.autograd.grad(h, used, g.to(h.dtype), allow_unused=True, materialize_grads=True)


def _compare(leaves64, g, tol, cast=None, **kw):
    """The fused op (on the leaves cast to `cast`) against the float64 reference."""
    ref = [t.clone().requires_grad_() if t is not None else None for t in leaves64]
    ours = [t.detach().to(cast or t.dtype).requires_grad_() if t is not None else None for t in leaves64]
    h_ref, g_ref = _run(reference.deep_transition_rnn, ref, g, **kw)
    h, gr = _run(mts_kernels.deep_transition_rnn, ours, g, backend="cpu", **kw)
    torch.testing.assert_close(h.double(), h_ref, **tol)
    names = [n for n, t in zip(["p", "weight_hh", "h0", "bias_hh", "weight_shortcut", "alpha"], leaves64)
             if t is not None]
    for name, x, y in zip(names, gr, g_ref):
        torch.testing.assert_close(x.double(), y, **tol, msg=lambda m: f"grad {name}: {m}")


CONFIGS = [(L, sc, leak) for L, sc, leak in itertools.product([1, 2, 3], [False, True], [None, "float", "learned"])
           if not (sc and L == 1)]


@pytest.mark.parametrize("L,shortcut,leak", CONFIGS, ids=[f"L{c[0]}-{'sc' if c[1] else 'nosc'}-{c[2]}" for c in CONFIGS])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_op_matches_reference(L, shortcut, leak, reverse):
    gen = torch.Generator().manual_seed(L * 10 + shortcut)
    T, B, H = 6, 3, 7
    leaves = _operands(gen, T, B, H, L, shortcut=shortcut, leak=leak)
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    for nl in ("tanh", "relu"):
        _compare(leaves, g, F64, nonlinearity=nl, reverse=reverse)
    # without h0 and biases, batch-first
    leaves = _operands(gen, T, B, H, L, shortcut=shortcut, leak=leak, h0=False, bias=False)
    leaves[0] = leaves[0].transpose(0, 1).contiguous()
    _compare(leaves, g.transpose(0, 1), F64, reverse=reverse, batch_first=True)


@pytest.mark.parametrize("L,shortcut,leak", [(1, False, None), (2, True, "learned"), (3, False, "float"),
                                             (3, True, None)], ids=str)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_op_lengths(L, shortcut, leak, reverse):
    """lengths 0, 1, T and in between (rows leave the loop's products as they end)."""
    gen = torch.Generator().manual_seed(5)
    T, B, H = 7, 5, 6
    leaves = _operands(gen, T, B, H, L, shortcut=shortcut, leak=leak)
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    for lengths in ([7, 0, 1, 4, 7], [0, 0, 0, 0, 0], [1, 3, 2, 1, 2]):
        _compare(leaves, g, F64, reverse=reverse, lengths=torch.tensor(lengths))
    _compare(leaves, g, F64, reverse=reverse, lengths=[2, 7, 0, 5, 1])


@pytest.mark.parametrize("B,H", [(9, 130), (40, 72)], ids=str)
def test_op_blas_loop(B, H):
    """Steps above kSmallWork multiply-adds take the BLAS product (csrc/cpu_blas.h)."""
    gen = torch.Generator().manual_seed(B)
    T = 4
    leaves = _operands(gen, T, B, H, 3, shortcut=True, leak="learned")
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    _compare(leaves, g, F64, reverse=True, lengths=torch.arange(B) % (T + 1))
    _compare(leaves, g, F64, nonlinearity="relu")


@pytest.mark.parametrize("L,shortcut,leak,reverse,lengths", [
    (1, False, None, False, None), (2, True, "learned", True, None), (3, True, "float", False, [5, 0, 2]),
    (2, False, "learned", True, [1, 5, 3])], ids=str)
def test_gradcheck_float64(L, shortcut, leak, reverse, lengths):
    gen = torch.Generator().manual_seed(3)
    T, B, H = 5, 3, 3
    leaves = [t.requires_grad_() if t is not None else None
              for t in _operands(gen, T, B, H, L, shortcut=shortcut, leak=leak)]
    used = [t for t in leaves if t is not None]
    mask = [t is not None for t in leaves]

    def fn(*args):
        it = iter(args)
        p, w, h0, b, u, a = [next(it) if m else None for m in mask]
        return mts_kernels.deep_transition_rnn(p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a, reverse=reverse,
                                               lengths=lengths, backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(used))


@pytest.mark.parametrize("B,H", [(1, 8), (2, 20), (3, 16), (4, 64), (5, 33), (9, 130)], ids=str)
def test_float32(B, H):
    """float32 through every register-tile shape and the BLAS loop, against float64
    (the float32 tanh is a rational approximation)."""
    gen = torch.Generator().manual_seed(B * 100 + H)
    T = 5
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    for L, sc, leak, rev in [(2, True, "learned", False), (3, False, None, True)]:
        leaves = _operands(gen, T, B, H, L, shortcut=sc, leak=leak)
        _compare(leaves, g, dict(rtol=1e-4, atol=1e-4), cast=torch.float32, reverse=rev)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    """flash-attention's rule: error against float64 at most twice that of the
    reference loop run by PyTorch in the same dtype (float32 state in the kernel)."""
    gen = torch.Generator().manual_seed(4)
    T, B, H = 30, 3, 16
    leaves64 = _operands(gen, T, B, H, 2, shortcut=True, leak="learned")
    g = torch.randn(T, B, H, generator=gen, dtype=torch.float64)

    def run(fn, dt, **kw):
        leaves = [t.to(dt).requires_grad_() if t is not None else None for t in leaves64]
        h, gr = _run(fn, leaves, g, **kw)
        return [t.detach().double() for t in (h, *gr)]

    exact = run(reference.deep_transition_rnn, torch.float64)
    lowp_torch = run(reference.deep_transition_rnn, dtype)
    ours = run(mts_kernels.deep_transition_rnn, dtype, backend="cpu")
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW", "dh0", "db", "dU", "dalpha"], ours, exact, lowp_torch):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"


def _torch_rnn_pair(num_layers, bidirectional, nonlinearity, batch_first):
    rnn = nn.RNN(6, 10, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                 batch_first=batch_first)
    ours = DeepTransitionRNN(6, 10, transition_depth=1, num_layers=num_layers, nonlinearity=nonlinearity,
                             bidirectional=bidirectional, batch_first=batch_first)
    state = {k: (v.unsqueeze(0) if k.startswith(("weight_hh", "bias_hh")) else v)
             for k, v in rnn.state_dict().items()}
    ours.load_state_dict(state, strict=True)
    return rnn, ours


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_depth_1_is_torch_rnn(num_layers, bidirectional, nonlinearity, batch_first):
    torch.manual_seed(num_layers + 2 * bidirectional)
    rnn, ours = _torch_rnn_pair(num_layers, bidirectional, nonlinearity, batch_first)
    B, T = 3, 11
    x = torch.randn((B, T, 6) if batch_first else (T, B, 6), requires_grad=True)
    hx = torch.randn(num_layers * (1 + bidirectional), B, 10, requires_grad=True)
    out_ref, h_ref = rnn(x, hx)
    out, h_n = ours(x, hx)
    tol = dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(h_n, h_ref, **tol)
    names = ["x", "hx"] + [n for n, _ in ours.named_parameters()]
    got = _grads(out, h_n, [x, hx] + list(ours.parameters()))
    want = _grads(out_ref, h_ref, [x, hx] + list(rnn.parameters()))
    for a, b, name in zip(got, want, names):
        torch.testing.assert_close(a, b.reshape(a.shape), **tol, msg=lambda m: f"grad {name}: {m}")


MODULE_FEATURES = {
    "depth2": dict(transition_depth=2),
    "depth2_shortcut": dict(transition_depth=2, shortcut=True),
    "depth3_shortcut_learned": dict(transition_depth=3, shortcut=True, leak="learned", tau_range=(1.0, 30.0)),
    "depth3_leak_float_relu": dict(transition_depth=3, leak=0.5, nonlinearity="relu"),
}


@pytest.mark.parametrize("feature", MODULE_FEATURES)
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_module_matches_reference(feature, bidirectional, num_layers, batch_first):
    torch.manual_seed(1)
    kw = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
              dtype=torch.float64, **MODULE_FEATURES[feature])
    fused, ref = DeepTransitionRNN(5, 8, **kw), DeepTransitionRNN(5, 8, **kw)
    ref.load_state_dict(fused.state_dict())
    ref.backend = "reference"
    B, T = 2, 9
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), dtype=torch.float64, requires_grad=True)
    hx = torch.randn(num_layers * (1 + bidirectional), B, 8, dtype=torch.float64, requires_grad=True)
    out, h_n = fused(x, hx)
    out_r, h_r = ref(x, hx)
    torch.testing.assert_close(out, out_r, **F64)
    torch.testing.assert_close(h_n, h_r, **F64)
    names = ["x", "hx"] + [n for n, _ in fused.named_parameters()]
    got = _grads(out, h_n, [x, hx] + list(fused.parameters()))
    want = _grads(out_r, h_r, [x, hx] + list(ref.parameters()))
    for a, b, name in zip(got, want, names):
        torch.testing.assert_close(a, b, **F64, msg=lambda m: f"grad {name}: {m}")


def test_module_lengths_and_packed():
    """lengths= and a PackedSequence against each sequence run alone."""
    torch.manual_seed(2)
    model = DeepTransitionRNN(4, 6, transition_depth=2, shortcut=True, num_layers=2, bidirectional=True,
                              leak="learned", dtype=torch.float64)
    lengths = [5, 2, 0, 4]
    T, B = 5, 4
    x = torch.randn(T, B, 4, dtype=torch.float64)
    out, h_n = model(x, lengths=lengths)
    for b, n in enumerate(lengths):
        if n == 0:
            assert out[:, b].abs().max() == 0 and h_n[:, b].abs().max() == 0
            continue
        o_b, h_b = model(x[:n, b:b + 1])
        torch.testing.assert_close(out[:n, b:b + 1], o_b, **F64)
        assert not out[n:, b].any()
        torch.testing.assert_close(h_n[:, b:b + 1], h_b, **F64)
    live = [b for b, n in enumerate(lengths) if n > 0]
    seqs = [x[:lengths[b], b] for b in live]
    packed = nn.utils.rnn.pack_sequence(seqs, enforce_sorted=False)
    out_p, h_p = model(packed)
    padded, _ = nn.utils.rnn.pad_packed_sequence(out_p, total_length=T)
    torch.testing.assert_close(padded, out[:, live], **F64)
    torch.testing.assert_close(h_p, h_n[:, live], **F64)


def test_unbatched_dropout_and_nn_api():
    torch.manual_seed(0)
    rnn, ours = _torch_rnn_pair(2, False, "tanh", False)
    x, hx = torch.randn(7, 6), torch.randn(2, 10)
    for a, b in zip(ours(x, hx), rnn(x, hx)):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    drop = DeepTransitionRNN(4, 5, num_layers=2, dropout=0.5)
    drop.eval()
    x = torch.ones(6, 2, 4)
    torch.testing.assert_close(drop(x)[0], drop(x)[0])
    drop.train()
    torch.manual_seed(1)
    a = drop(x)[0]
    torch.manual_seed(2)
    assert not torch.equal(a, drop(x)[0]), "dropout between layers is active in training mode"
    m = DeepTransitionRNN(3, 4, transition_depth=3, shortcut=True, leak="learned", bidirectional=True)
    assert m.flatten_parameters() is None
    assert [tuple(t.shape) for t in m.all_weights[1]] == [(4, 3), (3, 4, 4), (4,), (3, 4), (4, 4), (4,)]
    assert set(m.state_dict()) == {f"{n}_l0{s}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh",
                                                            "weight_shortcut", "log_tau") for s in ("", "_reverse")}
    tau = m.log_tau_l0.exp()
    assert tau.min() >= 1.0 and tau.max() <= 1000.0
    bound = 4 ** -0.5
    assert m.weight_hh_l0.abs().max() <= bound and m.bias_hh_l0.abs().max() <= bound
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(loaded(x)[0], m(x)[0])
    assert "transition_depth=3, shortcut=True" in repr(m)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = DeepTransitionRNN(4, 8, transition_depth=2, shortcut=True, leak="learned", batch_first=True)
    head = nn.Linear(8, 1)

    def f(x):
        out, h_n = rnn(x)
        return head(out).square().mean() + h_n.square().mean()

    x = torch.randn(3, 10, 4)
    params = list(rnn.parameters()) + list(head.parameters())
    lc = torch.compile(f, fullgraph=True)(x)
    gc = torch.autograd.grad(lc, params)
    le = f(x)
    for a, b in zip(gc, torch.autograd.grad(le, params)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(lc, le)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    T, B, H = 5, 2, 3
    p, w, h0, b, u, a = [t.requires_grad_() for t in _operands(gen, T, B, H, 2, shortcut=True, leak="learned",
                                                                dtype=torch.float32)]
    op = torch.ops.mts_kernels.deep_transition_rnn_fwd.default
    for args in [(p, w[:1], None, None, None, None, "tanh", False),
                 (p, w, h0, b, u, a, "relu", True),
                 (p, w, h0, b, None, a, "tanh", True, torch.tensor([5, 2]))]:
        torch.library.opcheck(op, args)
    with torch.no_grad():  # the backward op has no autograd of its own (_BackwardFunction wraps it)
        h, s = op(p, w, h0, b, u, a, "tanh", False)
        args = [t.detach() for t in (torch.randn_like(h), w, h, s, h0, u, a)]
    torch.library.opcheck(torch.ops.mts_kernels.deep_transition_rnn_bwd.default, (*args, "tanh", False))


def test_autocast_cpu_bfloat16():
    torch.manual_seed(3)
    model = DeepTransitionRNN(4, 8, transition_depth=2, shortcut=True, leak="learned")
    ref = DeepTransitionRNN(4, 8, transition_depth=2, shortcut=True, leak="learned")
    ref.load_state_dict(model.state_dict())
    ref.backend = "reference"
    x = torch.randn(12, 3, 4)
    outs = []
    for m in (model, ref):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = m(x)
        assert out.dtype == torch.bfloat16
        out.float().square().sum().backward()
        outs.append(out)
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    torch.testing.assert_close(outs[0].float(), outs[1].float(), rtol=0.05, atol=0.05)
    exact = DeepTransitionRNN(4, 8, transition_depth=2, shortcut=True, leak="learned", dtype=torch.float64)
    exact.load_state_dict(model.state_dict())
    out64 = exact(x.double())[0]
    err, err_ref = (outs[0].double() - out64).abs().max(), (outs[1].double() - out64).abs().max()
    assert err <= 2 * err_ref + 2 ** -8, f"{err:.3g} vs the bf16 reference loop's {err_ref:.3g}"


def test_transforms_and_higher_order():
    gen = torch.Generator().manual_seed(6)
    T, B, H = 5, 2, 4
    p, w, h0, b, u, a = _operands(gen, T, B, H, 2, shortcut=True, leak="learned")

    def loss(backend):
        return lambda p, w, u: mts_kernels.deep_transition_rnn(
            p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a, backend=backend).square().sum()

    for o, e in zip(torch.func.grad(loss("cpu"), argnums=(0, 1, 2))(p, w, u),
                    torch.func.grad(loss("reference"), argnums=(0, 1, 2))(p, w, u)):
        torch.testing.assert_close(o, e, **F64)
    ps = torch.randn(3, T, B, H, generator=gen, dtype=torch.float64)
    per_sample = torch.func.vmap(torch.func.grad(loss("cpu"), argnums=1), in_dims=(0, None, None))(ps, w, u)
    expect = torch.stack([torch.func.grad(loss("reference"), argnums=1)(ps[i], w, u) for i in range(3)])
    torch.testing.assert_close(per_sample, expect, **F64)
    ws = torch.randn(3, 2, H, H, generator=gen, dtype=torch.float64) * 0.5
    ens = torch.func.vmap(lambda w: mts_kernels.deep_transition_rnn(p, w, h0, weight_shortcut=u))(ws)
    torch.testing.assert_close(ens, torch.stack([reference.deep_transition_rnn(p, w_, h0, weight_shortcut=u)
                                                 for w_ in ws]), **F64)
    # forward mode and a second order (tests/test_deep_transition_rnn_higher_order.py covers
    # every configuration)
    jvps = [torch.func.jvp(lambda p: mts_kernels.deep_transition_rnn(p, w, backend=be), (p,),
                           (torch.ones_like(p),)) for be in ("cpu", "reference")]
    torch.testing.assert_close(jvps[0], jvps[1], **F64)
    second = []
    for be in ("cpu", "reference"):
        wg = w.clone().requires_grad_()
        gw = torch.autograd.grad(mts_kernels.deep_transition_rnn(p, wg, h0, backend=be).square().sum(), wg,
                                 create_graph=True)[0]
        second.append(torch.autograd.grad(gw.sum(), wg)[0])
    torch.testing.assert_close(second[0], second[1], **F64)


def test_flop_counter():
    T, B, H = 6, 3, 5
    p = torch.randn(T, B, H, requires_grad=True)
    w = torch.randn(3, H, H, requires_grad=True)
    u = torch.randn(H, H, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        h = mts_kernels.deep_transition_rnn(p, w, weight_shortcut=u, backend="cpu")
    step = 2 * B * H * H
    assert fc.get_total_flops() == step * T * 4
    with FlopCounterMode(display=False) as fc:
        h.sum().backward()
    # adjoint: 4 products a step; grads: dW_2, dW_3 over T, dW_1 and dU over T - 1 (no h0)
    assert fc.get_total_flops() == step * (4 * T + 2 * T + 2 * (T - 1))


BAD = [
    ("depth 0", lambda: DeepTransitionRNN(4, 6, transition_depth=0), ValueError,
     r"transition_depth must be an int >= 1, got 0"),
    ("shortcut depth 1", lambda: DeepTransitionRNN(4, 6, transition_depth=1, shortcut=True), ValueError,
     r"shortcut=True needs transition_depth >= 2"),
    ("leak", lambda: DeepTransitionRNN(4, 6, leak=1.0), ValueError, r"leak must be None, a float in \[0, 1\)"),
    ("input size", lambda: DeepTransitionRNN(4, 6)(torch.randn(5, 2, 3)), ValueError,
     r"input.size\(-1\) must be equal to input_size. Expected 4, got 3"),
    ("input dtype", lambda: DeepTransitionRNN(4, 6)(torch.randn(5, 2, 4, dtype=torch.float64)), TypeError,
     r"input has dtype torch.float64 but the parameters are torch.float32"),
    ("hx shape", lambda: DeepTransitionRNN(4, 6, num_layers=2)(torch.randn(5, 2, 4), torch.randn(1, 2, 6)),
     ValueError, r"hx must have shape \(2, 2, 6\), got \(1, 2, 6\)"),
    ("op weight 2-D", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(3, 3)), ValueError,
     r"weight_hh must be \(L, H, H\)"),
    ("op weight shape", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(2, 3, 4)),
     ValueError, r"weight_hh must have shape \(2, 3, 3\), got \(2, 3, 4\)"),
    ("op shortcut depth 1", lambda: mts_kernels.deep_transition_rnn(
        torch.randn(5, 2, 3), torch.randn(1, 3, 3), weight_shortcut=torch.randn(3, 3)), ValueError,
     r"weight_shortcut needs a transition depth >= 2"),
    ("op bias shape", lambda: mts_kernels.deep_transition_rnn(
        torch.randn(5, 2, 3), torch.randn(2, 3, 3), bias_hh=torch.randn(3)), ValueError,
     r"bias_hh must have shape \(2, 3\), got \(3,\)"),
    ("op dtype", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(2, 3, 3).double()),
     TypeError, r"weight_hh has dtype torch.float64 but p has torch.float32"),
    ("op device", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(2, 3, 3, device="meta")),
     ValueError, r"weight_hh is on meta but p is on cpu"),
    ("op h0", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(2, 3, 3), torch.randn(3)),
     ValueError, r"h0 must have shape \(2, 3\)"),
    ("op nonlinearity", lambda: mts_kernels.deep_transition_rnn(
        torch.randn(5, 2, 3), torch.randn(2, 3, 3), nonlinearity="gelu"), ValueError, r"nonlinearity must be"),
    ("op lengths", lambda: mts_kernels.deep_transition_rnn(torch.randn(5, 2, 3), torch.randn(2, 3, 3), lengths=[6, 1]),
     ValueError, r"lengths must be in \[0, T\]"),
    ("op cuda backend", lambda: mts_kernels.deep_transition_rnn(
        torch.randn(5, 2, 3), torch.randn(2, 3, 3), backend="cuda"), mts_kernels.BackendUnavailableError,
     r"backend='cuda' runs CUDA tensors, got tensors on cpu"),
    ("kernel shortcut depth 1", lambda: torch.ops.mts_kernels.deep_transition_rnn_fwd(
        torch.randn(5, 2, 3), torch.randn(1, 3, 3), None, None, torch.randn(3, 3), None, "tanh", False),
     RuntimeError, r"weight_shortcut needs a transition depth L >= 2"),
    ("kernel s shape", lambda: torch.ops.mts_kernels.deep_transition_rnn_bwd(
        torch.randn(5, 2, 3), torch.randn(2, 3, 3), torch.randn(5, 2, 3), torch.randn(1, 5, 2, 3), None, None,
        None, "tanh", False), RuntimeError, r"s must be Float of shape \[2, 5, 2, 3\]"),
]


@pytest.mark.parametrize("desc,call,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


# ----------------------------------------------------------- the CUDA loop
# csrc/deep/deep_loop.h is the CUDA op's whole host loop; the test hook runs it on
# the CPU with CPU GEMMs on the same strided views and the kernels' per-element
# bodies (deep_step.h) in a plain loop.
OPS = torch.ops.mts_kernels
EMU_FWD = getattr(OPS, "_deep_transition_rnn_gpu_loop_emulate_fwd", None)
EMU_BWD = getattr(OPS, "_deep_transition_rnn_gpu_loop_emulate_bwd", None)


def _op_args(seed, T, B, H, L, shortcut, leak, bias, reverse, lengths, nl="tanh", dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).to(dtype)  # noqa: E731
    return (r(T, B, H), r(L, H, H, scale=0.9 / H ** 0.5), r(B, H), r(L, H, scale=0.3) if bias else None,
            r(H, H, scale=0.6 / H ** 0.5) if shortcut else None,
            (torch.rand(H, generator=gen, dtype=torch.float64) * 0.9).to(dtype) if leak else None, nl, reverse,
            None if lengths is None else torch.tensor(lengths))


def _both_ways(args, fwd, bwd, seed=40):
    h, s = fwd(*args)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(h.dtype)
    p, w, h0, bias, ws, alpha, nl, reverse, lens = args
    return [h, s, *bwd(g, w, h, s, h0, ws, alpha, nl, reverse, lens)]


GPU_LOOP_CASES = [
    # L, shortcut, leak, bias, reverse, lengths, nonlinearity
    (1, False, False, True, False, None, "tanh"),
    (2, True, True, True, True, [9, 0, 4, 1], "tanh"),
    (3, True, False, False, True, None, "relu"),
    (3, False, True, True, False, [2, 9, 9, 0], "relu"),
    (2, False, True, False, True, [9, 9, 9, 9], "tanh"),
]


@pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")
@pytest.mark.parametrize("L,shortcut,leak,bias,reverse,lengths,nl", GPU_LOOP_CASES)
def test_gpu_loop_matches_cpu_op(L, shortcut, leak, bias, reverse, lengths, nl):
    args = _op_args(41, 9, 4, 7, L, shortcut, leak, bias, reverse, lengths, nl)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    got = _both_ways(args, EMU_FWD, EMU_BWD)
    names = ["h", "s", "dp", "dweight_hh", "dbias_hh", "dh0", "dweight_shortcut", "dalpha"]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")
    assert want[2].abs().max() > 0 and want[3].abs().max() > 0  # not trivially zero


@pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gpu_loop_low_precision_runs_in_float32(dtype):
    args = _op_args(42, 8, 5, 9, 2, True, True, True, True, [8, 3, 0, 8, 5], dtype=dtype)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    got = _both_ways(args, EMU_FWD, EMU_BWD)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == dtype, i
        scale = b.double().abs().max().item()
        err = (a.double() - b.double()).abs().max().item()
        assert err <= 1e-4 * scale + 4 * torch.finfo(dtype).eps * scale, f"output {i}: {err:.3g} of {scale:.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("L,shortcut,leak,bias,reverse,lengths,nl", GPU_LOOP_CASES)
def test_cuda_op_matches_cpu_op_float64(L, shortcut, leak, bias, reverse, lengths, nl):
    args = _op_args(43, 9, 4, 7, L, shortcut, leak, bias, reverse, lengths, nl)
    want = _both_ways(args, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    dev = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    got = _both_ways(dev, OPS.deep_transition_rnn_fwd, OPS.deep_transition_rnn_bwd)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-11, atol=1e-11, msg=lambda m, i=i: f"output {i}: {m}")


@pytest.mark.cuda
@pytest.mark.parametrize("H", [16, 160])
def test_cuda_backend_choice_and_values(monkeypatch, H):
    # auto: Triton up to its hidden-size limit, the CUDA loop beyond; both against the reference
    import importlib
    dt_ops = importlib.import_module("mts_kernels.ops.deep_transition_rnn")
    args = _op_args(44, 6, 3, H, 2, True, True, True, False, [6, 2, 0], dtype=torch.float32)
    p, w, h0, bias, ws, alpha, nl, reverse, lens = (a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
    ins = [t.requires_grad_() for t in (p, w, h0, bias, ws, alpha)]
    kw = dict(bias_hh=bias, weight_shortcut=ws, alpha=alpha, lengths=lens)
    with torch.autograd.profiler.profile() as prof:
        h = mts_kernels.deep_transition_rnn(p, w, h0, **kw)
    names = {e.name for e in prof.function_events}
    want_triton = H <= dt_ops.TRITON_MAX_HIDDEN
    assert ("mts_kernels::deep_transition_rnn_fwd_triton" in names) == want_triton, names
    h_ref = reference.deep_transition_rnn(p, w, h0, **kw)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(h)
    for a, b in zip(torch.autograd.grad(h, ins, g), torch.autograd.grad(h_ref, ins, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
