"""Property-based tests (hypothesis): every op on the CPU backend against
mts_kernels.reference over random shapes, strides (sliced, transposed, expanded,
offset), dtypes with their tolerance, decays at 0, 1 and just above 1, delays
and periods up to and beyond T, t0 up to 2**62, and lengths.

Derandomized with a bounded number of examples, so `make test` is deterministic
and stays within its time.
"""

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mts_kernels  # noqa: E402
from mts_kernels import ClockworkRNN, final_state, reference  # noqa: E402

SETTINGS = dict(max_examples=200, deadline=None, derandomize=True, print_blob=True)
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-9), torch.float32: dict(rtol=3e-4, atol=3e-4)}


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as t (B, T, D), laid out another way."""
    if layout == "transposed":  # time-major storage seen batch-first
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "sliced":  # stride 2 along the last dim
        return torch.stack([t, torch.full_like(t, float("nan"))], -1).flatten(-2)[..., ::2]
    if layout == "offset":  # a storage offset
        return torch.cat([torch.full_like(t[:1], float("nan")), t], 0)[1:]
    if layout == "expanded" and t.size(0) > 1:  # every batch row the same, stride 0
        return t[:1].expand_as(t)
    return t


def _check(out, ref, inputs, ref_inputs, dtype, what):
    torch.testing.assert_close(out.double(), ref, **TOL[dtype], msg=lambda m: f"{what} output: {m}")
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * g).sum(), inputs, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * g).sum(), ref_inputs, allow_unused=True)
    for i, (a, b, t) in enumerate(zip(grads, ref_grads, inputs)):
        # an input no valid step reads (every length 0) has no gradient: zeros
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t, dtype=torch.float64) if b is None else b
        torch.testing.assert_close(a.double(), b, **TOL[dtype], msg=lambda m: f"{what} grad {i}: {m}")


def _lengths(draw, B, T):
    if draw(st.booleans()):
        return None
    return draw(st.lists(st.integers(0, T), min_size=B, max_size=B))


@st.composite
def scan_case(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.sampled_from([1, 2, 3, 7, 16, 33, 100, 300, 1000]))
    D = draw(st.integers(1, 40))
    return dict(
        B=B, T=T, D=D,
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "offset", "expanded"])),
        per_channel=draw(st.booleans()),
        decay=draw(st.sampled_from(["uniform", "zero", "one", "above_one", "mixed"])),
        reverse=draw(st.booleans()),
        h0=draw(st.booleans()),
        lengths=_lengths(draw, B, T),
        seed=draw(st.integers(0, 2**16)),
    )


def _decay(kind, shape, gen):
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if kind == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "one":
        return torch.ones(shape, dtype=torch.float64)
    if kind == "above_one":
        return 1.0 + 1e-3 * u
    if kind == "mixed":  # exact 0, exact 1, just above 1 and ordinary values side by side
        choice = torch.randint(0, 4, shape, generator=gen)
        return torch.stack([torch.zeros_like(u), torch.ones_like(u), 1.0 + 1e-3 * u, u], -1).gather(
            -1, choice.unsqueeze(-1)).squeeze(-1)
    return u


@settings(**SETTINGS)
@given(case=scan_case(), leaky=st.booleans())
def test_scans_match_reference(case, leaky):
    gen = torch.Generator().manual_seed(case["seed"])
    B, T, D, dtype = case["B"], case["T"], case["D"], case["dtype"]
    x64 = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    a64 = _decay(case["decay"], (D,) if case["per_channel"] else (B, T, D), gen)
    h064 = torch.randn(B, D, generator=gen, dtype=torch.float64) if case["h0"] else None
    x = _layout(x64.to(dtype), case["layout"]).requires_grad_()
    a = (a64.to(dtype) if case["per_channel"] else _layout(a64.to(dtype), case["layout"])).requires_grad_()
    h0 = None if h064 is None else h064.to(dtype).requires_grad_()
    # the reference sees exactly the (possibly expanded) values the op sees
    xr, ar = x.detach().double().requires_grad_(), a.detach().double().requires_grad_()
    h0r = None if h0 is None else h0.detach().double().requires_grad_()
    kw = dict(reverse=case["reverse"], lengths=case["lengths"])
    if leaky:
        out = mts_kernels.leaky_integrate(x, a, h0, **kw)
        ref = reference.leaky_integrate(xr, ar, h0r, **kw)
    else:
        out = mts_kernels.linear_scan(a, x, h0, **kw)
        ref = reference.linear_scan(ar, xr, h0r, **kw)
    ins = [t for t in (x, a, h0) if t is not None]
    ref_ins = [t for t in (xr, ar, h0r) if t is not None]
    _check(out, ref, ins, ref_ins, dtype, "leaky_integrate" if leaky else "linear_scan")


@st.composite
def rnn_case(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.sampled_from([1, 2, 5, 13, 40, 200]))
    H = draw(st.sampled_from([1, 3, 8, 17, 33]))
    delay = st.one_of(st.integers(1, T + 3), st.sampled_from([10**6, 2**62]))
    return dict(
        B=B, T=T, H=H,
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        skip=draw(st.one_of(st.none(), delay)),
        dilation=draw(delay),
        leak=draw(st.booleans()),
        nonlinearity=draw(st.sampled_from(["tanh", "relu"])),
        reverse=draw(st.booleans()),
        h0=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        lengths=_lengths(draw, B, T),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(**SETTINGS)
@given(case=rnn_case())
def test_leaky_rnn_matches_reference(case):
    gen = torch.Generator().manual_seed(case["seed"])
    B, T, H, dtype = case["B"], case["T"], case["H"], case["dtype"]

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()

    p = r(B, T, H) if case["batch_first"] else r(T, B, H)
    w = r(H, H, scale=H ** -0.5)
    ws = r(H, H, scale=H ** -0.5) if case["skip"] else None
    h0 = r(B, H) if case["h0"] else None
    alpha = torch.rand(H, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if case["leak"] else None
    ins = [t for t in (p, w, ws, h0, alpha) if t is not None]
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    it = iter(ref_ins)
    pr, wr = next(it), next(it)
    wsr = next(it) if ws is not None else None
    h0r = next(it) if h0 is not None else None
    alphar = next(it) if alpha is not None else None
    kw = dict(skip=case["skip"], dilation=case["dilation"], nonlinearity=case["nonlinearity"],
              reverse=case["reverse"], batch_first=case["batch_first"], lengths=case["lengths"])
    out = mts_kernels.leaky_rnn(p, w, h0, alpha=alpha, weight_skip=ws, **kw)
    ref = reference.leaky_rnn(pr, wr, h0r, alpha=alphar, weight_skip=wsr, **kw)
    _check(out, ref, ins, ref_ins, dtype, "leaky_rnn")
    # the final states too (a lengths-dependent gather)
    fs = final_state(out, case["lengths"], h0, reverse=case["reverse"], batch_first=case["batch_first"])
    fr = final_state(ref, case["lengths"], h0r, reverse=case["reverse"], batch_first=case["batch_first"])
    torch.testing.assert_close(fs.double(), fr, **TOL[dtype])


@st.composite
def clockwork_case(draw):
    B = draw(st.integers(1, 4))
    T = draw(st.sampled_from([1, 3, 9, 20]))
    g = draw(st.integers(1, 4))
    sizes = draw(st.lists(st.integers(1, 5), min_size=g, max_size=g))
    gaps = draw(st.lists(st.one_of(st.integers(1, T + 2), st.sampled_from([2**40, 2**63])),
                         min_size=g, max_size=g))
    periods = [1]
    for gap in gaps[1:]:
        periods.append(periods[-1] + gap)
    return dict(B=B, T=T, sizes=sizes, periods=periods,
                t0=draw(st.one_of(st.integers(0, 50), st.just(2**62), st.integers(0, 2**62))),
                leak=draw(st.booleans()), h0=draw(st.booleans()), batch_first=draw(st.booleans()),
                lengths=_lengths(draw, B, T), dtype=draw(st.sampled_from([torch.float64, torch.float32])),
                seed=draw(st.integers(0, 2**16)))


@settings(**SETTINGS)
@given(case=clockwork_case())
def test_clockwork_rnn_matches_reference(case):
    gen = torch.Generator().manual_seed(case["seed"])
    B, T, dtype = case["B"], case["T"], case["dtype"]
    H = sum(case["sizes"])

    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()

    p = r(B, T, H) if case["batch_first"] else r(T, B, H)
    w = r(H, H, scale=0.5)
    h0 = r(B, H) if case["h0"] else None
    alpha = torch.rand(H, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() if case["leak"] else None
    ins = [t for t in (p, w, h0, alpha) if t is not None]
    ref_ins = [t.detach().double().requires_grad_() for t in ins]
    it = iter(ref_ins)
    pr, wr = next(it), next(it)
    h0r = next(it) if h0 is not None else None
    alphar = next(it) if alpha is not None else None
    kw = dict(alpha=alpha, t0=case["t0"], batch_first=case["batch_first"], lengths=case["lengths"])
    out = mts_kernels.clockwork_rnn(p, w, h0, periods=case["periods"], module_sizes=case["sizes"], **kw)
    kw["alpha"] = alphar
    ref = reference.clockwork_rnn(pr, wr, h0r, case["periods"], case["sizes"], **kw)
    _check(out, ref, ins, ref_ins, dtype, "clockwork_rnn")


# --------------------------------------------------------------------------- low precision

def _low_precision_ok(ours, ref_low, ref64, what):
    """flash-attention's rule: our error against float64 at most about twice that of
    the same computation done by PyTorch (the reference loop) in that dtype."""
    err = (ours.double() - ref64).abs().max().item()
    err_torch = (ref_low.double() - ref64).abs().max().item()
    assert err <= 2 * err_torch + 1e-3, f"{what}: error {err:.3g} vs torch's {err_torch:.3g}"


@settings(**dict(SETTINGS, max_examples=60))
@given(case=scan_case(), leaky=st.booleans(), dtype=st.sampled_from([torch.float16, torch.bfloat16]))
def test_scans_low_precision(case, leaky, dtype):
    gen = torch.Generator().manual_seed(case["seed"])
    B, T, D = case["B"], case["T"], case["D"]
    x = _layout(torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(dtype), case["layout"])
    a = _decay(case["decay"] if case["decay"] != "above_one" else "uniform",
               (D,) if case["per_channel"] else (B, T, D), gen).to(dtype)
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64).to(dtype) if case["h0"] else None
    kw = dict(reverse=case["reverse"], lengths=case["lengths"])
    op, ref = ((mts_kernels.leaky_integrate, reference.leaky_integrate) if leaky
               else (mts_kernels.linear_scan, reference.linear_scan))
    args = (lambda d, v: (v, d)) if leaky else (lambda d, v: (d, v))
    ours = op(*args(a, x), h0, **kw)
    ref_low = ref(*args(a, x), h0, **kw)
    ref64 = ref(*args(a.double(), x.double()), None if h0 is None else h0.double(), **kw)
    _low_precision_ok(ours, ref_low, ref64, op.__name__)


# --------------------------------------------------------------------------- modules

@st.composite
def module_case(draw):
    kind = draw(st.sampled_from(["leaky", "clockwork"]))
    B, T = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    case = dict(kind=kind, B=B, T=T, I=draw(st.integers(1, 6)), batch_first=draw(st.booleans()),
                lengths=_lengths(draw, B, T), hx=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                leak=draw(st.sampled_from([None, 0.3, "learned"])),
                nonlinearity=draw(st.sampled_from(["tanh", "relu"])))
    if kind == "leaky":
        case.update(H=draw(st.integers(1, 9)), num_layers=draw(st.integers(1, 3)),
                    bidirectional=draw(st.booleans()),
                    skip=draw(st.one_of(st.none(), st.integers(1, T + 2))),
                    dilation=draw(st.integers(1, T + 2)))
    else:
        sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
        periods = sorted(set(draw(st.lists(st.integers(2, T + 3), min_size=len(sizes) - 1,
                                           max_size=len(sizes) - 1))))
        case.update(sizes=sizes[:len(periods) + 1], periods=[1] + periods,
                    t0=draw(st.one_of(st.integers(0, 20), st.just(2**62))))
        case["H"] = sum(case["sizes"])
    return case


@settings(**dict(SETTINGS, max_examples=100))
@given(case=module_case())
def test_modules_match_reference(case):
    """LeakyRNN / ClockworkRNN with the fused kernels against the same module on the
    reference loops: outputs, h_n and every gradient."""
    torch.manual_seed(case["seed"])
    B, T, I, H = case["B"], case["T"], case["I"], case["H"]
    common = dict(nonlinearity=case["nonlinearity"], batch_first=case["batch_first"], leak=case["leak"],
                  dtype=torch.float64)
    if case["kind"] == "leaky":
        model = mts_kernels.LeakyRNN(I, H, case["num_layers"], bidirectional=case["bidirectional"],
                                     skip=case["skip"], dilation=case["dilation"], **common)
        layers = case["num_layers"] * (2 if case["bidirectional"] else 1)
        call = {}
    else:
        model = ClockworkRNN(I, H, periods=case["periods"], module_sizes=case["sizes"], **common)
        layers, call = 1, dict(t0=case["t0"])
    x = torch.randn((B, T, I) if case["batch_first"] else (T, B, I), dtype=torch.float64, requires_grad=True)
    hx = torch.randn(layers, B, H, dtype=torch.float64, requires_grad=True) if case["hx"] else None
    results = []
    for backend in (None, "reference"):
        model.backend = backend
        out, h_n = model(x, hx, lengths=case["lengths"], **call)
        inputs = [x] + ([hx] if hx is not None else []) + list(model.parameters())
        gen = torch.Generator().manual_seed(0)
        loss = ((out * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum()
                + (h_n * torch.randn(h_n.shape, generator=gen, dtype=torch.float64)).sum())
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        results.append([out, h_n] + [torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs)])
    for i, (a, b) in enumerate(zip(*results)):
        torch.testing.assert_close(a, b, **TOL[torch.float64], msg=lambda m: f"item {i}: {m}")
