"""ClockworkRNN / clockwork_rnn against the reference loop (values and every
gradient), the direction of the clock, torch.nn.RNN for one period-1 module,
streaming, compile and bad input."""

import pytest
import torch
from torch import nn

import mts_kernels
from _rnn_util import grads as _grads
from mts_kernels import ClockworkRNN, reference

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]

CONFIGS = {
    "p1248": dict(periods=(1, 2, 4, 8)),
    "p137": dict(periods=(1, 3, 7)),
    "p25": dict(periods=(2, 5)),
    "single": dict(periods=(3,)),
    "unequal": dict(periods=(1, 2, 4), module_sizes=(5, 1, 3)),
    "leak_fixed": dict(periods=(1, 2, 4, 8), leak=0.6),
    "leak_learned": dict(periods=(1, 4, 16), leak="learned", tau_range=(1.0, 30.0)),
}


def _pair(config, device, dtype, batch_first=False, nonlinearity="tanh"):
    kw = dict(CONFIGS[config])
    H = sum(kw["module_sizes"]) if "module_sizes" in kw else 9
    fused = ClockworkRNN(4, H, batch_first=batch_first, nonlinearity=nonlinearity, device=device,
                         dtype=dtype, **kw)
    ref = ClockworkRNN(4, H, batch_first=batch_first, nonlinearity=nonlinearity, device=device,
                       dtype=dtype, **kw)
    with torch.no_grad():  # read blocks and the never-read ones alike
        fused.weight_hh.copy_(torch.randn_like(fused.weight_hh) * 0.4)
    ref.load_state_dict(fused.state_dict())
    ref.backend = "reference"
    return fused, ref


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("t0", [0, 5])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_matches_reference(device, config, t0, batch_first):
    torch.manual_seed(0)
    dtype = torch.float64 if device == "cpu" else torch.float32
    fused, ref = _pair(config, device, dtype, batch_first, "relu" if config == "p25" else "tanh")
    B, T = 3, 29
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(1, B, fused.hidden_size, device=device, dtype=dtype, requires_grad=True)
    out, h_n = fused(x, hx, t0=t0)
    out_r, h_r = ref(x, hx, t0=t0)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, out_r, **tol)
    torch.testing.assert_close(h_n, h_r, **tol)
    names = ["x", "hx"] + [n for n, _ in fused.named_parameters()]
    got = _grads(out, h_n, [x, hx] + list(fused.parameters()))
    want = _grads(out_r, h_r, [x, hx] + list(ref.parameters()))
    for a, b, name in zip(got, want, names):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad {name}: {m}")
    # the never-read (block-lower) part of weight_hh gets exactly zero gradient
    dw = got[names.index("weight_hh")]
    assert torch.all(dw[~fused.block_mask()] == 0)


@pytest.mark.parametrize("periods,sizes,t0,leak", [((1, 2, 4), (2, 1, 2), 0, False), ((2, 3), (3, 2), 1, True)])
def test_gradcheck_float64(periods, sizes, t0, leak):
    gen = torch.Generator().manual_seed(1)
    H, T, B = sum(sizes), 11, 2
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64, requires_grad=True)
    inputs = [p, w, h0]
    if leak:
        inputs.append((torch.rand(H, generator=gen, dtype=torch.float64) * 0.9).requires_grad_())

    def fn(p, w, h0, *alpha):
        return mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes,
                                         alpha=alpha[0] if alpha else None, t0=t0)

    assert torch.autograd.gradcheck(fn, tuple(inputs))


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_fast_modules_never_change_slower_ones(backend):
    """Perturbing a fast module's state (or its weights) never changes a slower
    module's output; the converse does change the faster modules."""
    torch.manual_seed(2)
    m = ClockworkRNN(3, 12, periods=(1, 2, 4, 8), module_sizes=(3, 3, 3, 3), dtype=torch.float64)
    with torch.no_grad():
        m.weight_hh.copy_(torch.randn(12, 12, dtype=torch.float64))  # also fill never-read blocks
    m.backend = backend
    x = torch.randn(40, 2, 3, dtype=torch.float64)
    hx = torch.randn(1, 2, 12, dtype=torch.float64)
    base, _ = m(x, hx)
    for module in range(4):
        lo, hi = 3 * module, 3 * module + 3
        bumped = hx.clone()
        bumped[..., lo:hi] += 1.0
        out, _ = m(x, bumped)
        changed = (out - base).abs().amax(dim=(0, 1)) > 1e-12
        assert not changed[hi:].any(), f"perturbing module {module} changed a slower module"
        assert changed[lo:hi].all()
        if module > 0:
            assert changed[:lo].any(), f"module {module} must feed the faster modules"


def test_single_period_one_module_is_torch_rnn():
    torch.manual_seed(3)
    rnn = nn.RNN(5, 7, nonlinearity="tanh")
    cw = ClockworkRNN(5, 7, periods=(1,))
    cw.load_state_dict({k.removesuffix("_l0"): v for k, v in rnn.state_dict().items()})
    x = torch.randn(13, 3, 5, requires_grad=True)
    hx = torch.randn(1, 3, 7)
    a, b = cw(x, hx), rnn(x, hx)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v)
    for u, v in zip(_grads(*a, [x] + list(cw.parameters())), _grads(*b, [x] + list(rnn.parameters()))):
        torch.testing.assert_close(u, v)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("split", [1, 7, 16])
def test_streaming_keeps_clock_phase(backend, split):
    torch.manual_seed(4)
    m = ClockworkRNN(3, 8, periods=(1, 3, 5), module_sizes=(3, 3, 2), leak="learned", dtype=torch.float64)
    m.backend = backend
    x = torch.randn(30, 2, 3, dtype=torch.float64, requires_grad=True)
    whole, h_whole = m(x, t0=2)
    first, h1 = m(x[:split], t0=2)
    second, h2 = m(x[split:], h1, t0=2 + split)
    torch.testing.assert_close(torch.cat([first, second]), whole)
    torch.testing.assert_close(h2, h_whole)
    params = [x] + list(m.parameters())
    g1 = _grads(torch.cat([first, second]), h2, params)
    g2 = _grads(whole, h_whole, params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_low_precision(dtype):
    gen = torch.Generator().manual_seed(5)
    T, B, H = 33, 3, 12
    kw = dict(periods=(1, 2, 4), module_sizes=(4, 4, 4))
    p64 = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w64 = torch.randn(H, H, generator=gen, dtype=torch.float64) / H ** 0.5
    g64 = torch.randn(T, B, H, generator=gen, dtype=torch.float64)

    def run(fn, dt):
        p, w = (t.to(dt).requires_grad_() for t in (p64, w64))
        h = fn(p, w, None, **kw)
        return [t.detach().double() for t in (h, *torch.autograd.grad(h, (p, w), g64.to(dt)))]

    exact, lowp, ours = (run(reference.clockwork_rnn, torch.float64), run(reference.clockwork_rnn, dtype),
                         run(mts_kernels.clockwork_rnn, dtype))
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW"], ours, exact, lowp):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(6)
    m = ClockworkRNN(2, 8, periods=(1, 2, 4), leak="learned", batch_first=True)
    head = nn.Linear(8, 1)

    def f(x, t0: int):
        out, h_n = m(x, t0=t0)
        return head(out).square().mean() + h_n.square().mean()

    x = torch.randn(3, 17, 2)
    compiled = torch.compile(f, fullgraph=True)
    params = list(m.parameters()) + list(head.parameters())
    lc = compiled(x, 3)
    le = f(x, 3)
    torch.testing.assert_close(lc, le)
    for a, b in zip(torch.autograd.grad(lc, params), torch.autograd.grad(le, params)):
        torch.testing.assert_close(a, b)


BAD = [
    ("periods not increasing", lambda: ClockworkRNN(2, 6, periods=(1, 4, 2)), r"strictly increasing"),
    ("periods equal", lambda: ClockworkRNN(2, 6, periods=(2, 2)), r"strictly increasing"),
    ("period zero", lambda: ClockworkRNN(2, 6, periods=(0, 2)), r"periods must be >= 1"),
    ("sizes sum", lambda: ClockworkRNN(2, 6, periods=(1, 2), module_sizes=(2, 3)),
     r"module_sizes must sum to hidden_size 6, got \(2, 3\) \(sum 5\)"),
    ("lengths differ", lambda: ClockworkRNN(2, 6, periods=(1, 2, 4), module_sizes=(3, 3)),
     r"same length, got 3 periods and 2 module sizes"),
    ("hx shape", lambda: ClockworkRNN(2, 6)(torch.randn(5, 3, 2), torch.randn(1, 2, 6)),
     r"hx must have shape \(1, 3, 6\), got \(1, 2, 6\)"),
    ("input size", lambda: ClockworkRNN(2, 6)(torch.randn(5, 3, 4)), r"Expected 2, got 4"),
    ("t0 negative", lambda: ClockworkRNN(2, 6)(torch.randn(5, 3, 2), t0=-1), r"t0 must be an int >= 0"),
    ("leak", lambda: ClockworkRNN(2, 6, leak=1.5), r"leak must be None"),
]


@pytest.mark.parametrize("desc,call,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_defaults():
    m = ClockworkRNN(3, 10)
    assert m.periods == (1, 2, 4, 8) and m.module_sizes == (3, 3, 2, 2)
    m = ClockworkRNN(3, 10, periods=(1, 5))
    assert m.module_sizes == (5, 5)
    m = ClockworkRNN(3, 10, module_sizes=(4, 3, 3))
    assert m.periods == (1, 2, 4)
    assert torch.all(m.weight_hh[~m.block_mask()] == 0)


@pytest.mark.triton
def test_triton_backend_matches_reference():
    """clockwork_rnn over the Triton leaky_rnn kernel (interpreted on the CPU without a GPU)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(9)
    T, B, H = 13, 2, 9
    kw = dict(periods=(1, 2, 5), module_sizes=(3, 3, 3), t0=1)
    p = torch.randn(T, B, H, generator=gen).to(dev).requires_grad_()
    w = (torch.randn(H, H, generator=gen) * 0.4).to(dev).requires_grad_()
    h = mts_kernels.clockwork_rnn(p, w, None, backend="triton", **kw)
    h_ref = reference.clockwork_rnn(p, w, None, **kw)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(h.shape, generator=gen).to(dev)
    for a, b in zip(torch.autograd.grad(h, (p, w), g), torch.autograd.grad(h_ref, (p, w), g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
