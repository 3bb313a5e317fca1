"""LeakyRNN / leaky_rnn against torch.nn.RNN (leak=None) and against the
reference loop (leak, skip, dilation): outputs and every gradient."""

import pytest
import torch
from torch import nn

import mts_kernels
from _rnn_util import grads as _grads
from mts_kernels import LeakyRNN, reference

HAS_CUDA = torch.cuda.is_available()
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (3, False), (1, True)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_matches_torch_rnn(device, num_layers, bidirectional, nonlinearity, batch_first, with_hx):
    torch.manual_seed(num_layers * 7 + bidirectional)
    rnn = nn.RNN(6, 10, num_layers=num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                 batch_first=batch_first).to(device)
    ours = LeakyRNN.from_torch(rnn)
    B, T = 3, 13
    x = torch.randn((B, T, 6) if batch_first else (T, B, 6), device=device, requires_grad=True)
    dirs = 2 if bidirectional else 1
    hx = torch.randn(num_layers * dirs, B, 10, device=device, requires_grad=True) if with_hx else None
    out_ref, h_ref = rnn(x, hx)
    out, h_n = ours(x, hx)
    # cuDNN runs float32 GEMMs in TF32 by default on Ampere+; torch's own default is float32 here
    tol = dict(rtol=2e-5, atol=2e-5) if device == "cpu" else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, out_ref, **tol)
    torch.testing.assert_close(h_n, h_ref, **tol)
    inputs_ref = [x] + ([hx] if with_hx else []) + list(rnn.parameters())
    inputs = [x] + ([hx] if with_hx else []) + list(ours.parameters())
    for a, b, name in zip(_grads(out, h_n, inputs), _grads(out_ref, h_ref, inputs_ref),
                          ["x"] + (["hx"] if with_hx else []) + [n for n, _ in ours.named_parameters()]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad {name}: {m}")


FEATURES = {
    "leak_fixed": dict(leak=0.7),
    "leak_learned": dict(leak="learned", tau_range=(1.0, 50.0)),
    "skip": dict(skip=3),
    "dilation": dict(dilation=2),
    "dilation_4_skip_1": dict(dilation=4, skip=1),
    "all": dict(leak="learned", skip=5, dilation=3),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_module_matches_reference(device, feature, bidirectional, num_layers, batch_first):
    torch.manual_seed(1)
    dtype = torch.float64 if device == "cpu" else torch.float32
    fused = LeakyRNN(5, 8, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                     nonlinearity="relu" if feature == "skip" else "tanh", device=device, dtype=dtype,
                     **FEATURES[feature])
    ref = LeakyRNN(5, 8, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first,
                   nonlinearity=fused.nonlinearity, device=device, dtype=dtype, **FEATURES[feature])
    ref.load_state_dict(fused.state_dict())
    ref.backend = "reference"
    B, T = 2, 17
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(num_layers * (1 + bidirectional), B, 8, device=device, dtype=dtype, requires_grad=True)
    out, h_n = fused(x, hx)
    out_r, h_r = ref(x, hx)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out, out_r, **tol)
    torch.testing.assert_close(h_n, h_r, **tol)
    names = ["x", "hx"] + [n for n, _ in fused.named_parameters()]
    got = _grads(out, h_n, [x, hx] + list(fused.parameters()))
    want = _grads(out_r, h_r, [x, hx] + list(ref.parameters()))
    for a, b, name in zip(got, want, names):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("alpha,skip,dilation,reverse", [
    (False, None, 1, False), (True, None, 1, True), (False, 2, 1, False), (True, 3, 2, True),
    (True, 1, 5, False)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_gradcheck_float64(alpha, skip, dilation, reverse, nonlinearity):
    gen = torch.Generator().manual_seed(3)
    T, B, H = 7, 2, 3
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    p, w, h0 = r(T, B, H), r(H, H, scale=0.5), r(B, H)
    inputs = [p, w, h0]
    a = (torch.rand(H, generator=gen, dtype=torch.float64) * 0.9).requires_grad_() if alpha else None
    ws = r(H, H, scale=0.5) if skip else None
    inputs += [t for t in (a, ws) if t is not None]

    def fn(p, w, h0, *rest):
        rest = list(rest)
        aa = rest.pop(0) if alpha else None
        wss = rest.pop(0) if skip else None
        return mts_kernels.leaky_rnn(p, w, h0, alpha=aa, weight_skip=wss, skip=skip, dilation=dilation,
                                     nonlinearity=nonlinearity, reverse=reverse, backend="cpu")

    assert torch.autograd.gradcheck(fn, tuple(inputs))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision(dtype, device):
    """Error against the float64 reference at most twice that of the reference
    loop run by PyTorch in the same dtype (float32 state inside the kernel)."""
    gen = torch.Generator().manual_seed(4)
    T, B, H = 40, 3, 16
    p64 = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w64 = torch.randn(H, H, generator=gen, dtype=torch.float64) / H ** 0.5
    a64 = torch.rand(H, generator=gen, dtype=torch.float64) * 0.9
    g64 = torch.randn(T, B, H, generator=gen, dtype=torch.float64)

    def run(fn, dt, dev, **kw):
        p, w, a = (t.to(dev, dt).requires_grad_() for t in (p64, w64, a64))
        h = fn(p, w, alpha=a, skip=2, weight_skip=w.detach().flip(0).clone(), dilation=1, **kw)
        grads = torch.autograd.grad(h, (p, w, a), g64.to(dev, dt))
        return [t.detach().cpu().double() for t in (h, *grads)]

    exact = run(reference.leaky_rnn, torch.float64, "cpu")
    lowp_torch = run(reference.leaky_rnn, dtype, "cpu")
    ours = run(mts_kernels.leaky_rnn, dtype, device)
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW", "dalpha"], ours, exact, lowp_torch):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"


def test_state_dict_round_trip():
    rnn = nn.RNN(4, 6, num_layers=2, bidirectional=True)
    ours = LeakyRNN(4, 6, num_layers=2, bidirectional=True)
    ours.load_state_dict(rnn.state_dict(), strict=True)
    back = nn.RNN(4, 6, num_layers=2, bidirectional=True)
    back.load_state_dict(ours.state_dict(), strict=True)
    for (n1, p1), (n2, p2) in zip(rnn.named_parameters(), back.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert set(ours.state_dict()) == set(rnn.state_dict())
    extra = LeakyRNN(4, 6, leak="learned", skip=2)
    assert {"log_tau_l0", "weight_skip_l0"} <= set(extra.state_dict())


def test_from_torch_and_learned_leak_init():
    rnn = nn.RNN(3, 32, nonlinearity="relu", batch_first=True, bias=False)
    ours = LeakyRNN.from_torch(rnn)
    assert (ours.nonlinearity, ours.batch_first, ours.bias) == ("relu", True, False)
    x = torch.randn(2, 9, 3)
    torch.testing.assert_close(ours(x)[0], rnn(x)[0])
    leaky = LeakyRNN.from_torch(rnn, leak="learned", tau_range=(2.0, 500.0))
    tau = leaky.log_tau_l0.exp()
    assert tau.min() >= 2.0 and tau.max() <= 500.0 and tau.max() / tau.min() > 10
    torch.testing.assert_close(leaky.weight_hh_l0, rnn.weight_hh_l0)


def test_unbatched_input_and_dropout():
    torch.manual_seed(0)
    rnn = nn.RNN(4, 5, num_layers=2)
    ours = LeakyRNN.from_torch(rnn)
    x, hx = torch.randn(7, 4), torch.randn(2, 5)
    for a, b in zip(ours(x, hx), rnn(x, hx)):
        torch.testing.assert_close(a, b)
    drop = LeakyRNN(4, 5, num_layers=2, dropout=0.5)
    drop.eval()
    x = torch.ones(6, 2, 4)
    torch.testing.assert_close(drop(x)[0], drop(x)[0])  # no dropout in eval mode
    drop.train()
    torch.manual_seed(1)
    a = drop(torch.ones(6, 2, 4))[0]
    torch.manual_seed(2)
    b = drop(torch.ones(6, 2, 4))[0]
    assert not torch.equal(a, b), "dropout between layers is active in training mode"


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = LeakyRNN(4, 8, num_layers=2, leak="learned", skip=2, batch_first=True)
    head = nn.Linear(8, 1)

    def f(x):
        out, h_n = rnn(x)
        return head(out).square().mean() + h_n.square().mean()

    x = torch.randn(3, 10, 4)
    compiled = torch.compile(f, fullgraph=True)
    params = list(rnn.parameters()) + list(head.parameters())
    lc = compiled(x)
    gc = torch.autograd.grad(lc, params)
    le = f(x)
    ge = torch.autograd.grad(le, params)
    torch.testing.assert_close(lc, le)
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    T, B, H = 5, 2, 3
    p = torch.randn(T, B, H, generator=gen, requires_grad=True)
    w = torch.randn(H, H, generator=gen, requires_grad=True)
    a = torch.rand(H, generator=gen).requires_grad_()
    h0 = torch.randn(B, H, generator=gen, requires_grad=True)
    for args in [(p, w, None, None, None, 0, 1, "tanh", False),
                 (p, w, h0, a, w.detach().clone().requires_grad_(), 2, 2, "relu", True)]:
        torch.library.opcheck(torch.ops.mts_kernels.leaky_rnn_fwd.default, args)


BAD = [
    ("input size", lambda: LeakyRNN(4, 6)(torch.randn(5, 2, 3)), ValueError,
     r"input.size\(-1\) must be equal to input_size. Expected 4, got 3"),
    ("input 4-D", lambda: LeakyRNN(4, 6)(torch.randn(5, 2, 3, 4)), ValueError, r"input must be 2-D"),
    ("hx shape", lambda: LeakyRNN(4, 6, num_layers=2)(torch.randn(5, 2, 4), torch.randn(1, 2, 6)),
     ValueError, r"hx must have shape \(2, 2, 6\), got \(1, 2, 6\)"),
    ("hx batch", lambda: LeakyRNN(4, 6)(torch.randn(5, 2, 4), torch.randn(1, 3, 6)), ValueError,
     r"hx must have shape \(1, 2, 6\)"),
    ("input dtype", lambda: LeakyRNN(4, 6)(torch.randn(5, 2, 4, dtype=torch.float64)), TypeError,
     r"input has dtype torch.float64 but the parameters are torch.float32"),
    ("dilation 0", lambda: LeakyRNN(4, 6, dilation=0), ValueError, r"dilation must be an int >= 1, got 0"),
    ("skip 0", lambda: LeakyRNN(4, 6, skip=0), ValueError, r"skip must be None or an int >= 1, got 0"),
    ("skip float", lambda: LeakyRNN(4, 6, skip=1.5), ValueError, r"skip must be None or an int >= 1"),
    ("leak 1", lambda: LeakyRNN(4, 6, leak=1.0), ValueError, r"leak must be None, a float in \[0, 1\)"),
    ("leak negative", lambda: LeakyRNN(4, 6, leak=-0.1), ValueError, r"leak must be None"),
    ("leak string", lambda: LeakyRNN(4, 6, leak="learnt"), ValueError, r"leak must be None"),
    ("tau decreasing", lambda: LeakyRNN(4, 6, leak="learned", tau_range=(10.0, 1.0)), ValueError,
     r"tau_range must be \(low, high\) of finite numbers with 0 < low < high"),
    ("tau zero", lambda: LeakyRNN(4, 6, leak="learned", tau_range=(0.0, 1.0)), ValueError, r"tau_range"),
    ("nonlinearity", lambda: LeakyRNN(4, 6, nonlinearity="gelu"), ValueError, r"nonlinearity must be 'tanh' or 'relu'"),
    ("packed_with_lengths", lambda: LeakyRNN(4, 6)(nn.utils.rnn.pack_sequence([torch.randn(3, 4)]), lengths=[3]),
     ValueError, r"lengths must be None for PackedSequence"),
    ("functional weight", lambda: mts_kernels.leaky_rnn(torch.randn(5, 2, 3), torch.randn(3, 4)), ValueError,
     r"weight_hh must have shape \(3, 3\), got \(3, 4\)"),
    ("functional skip without weight", lambda: mts_kernels.leaky_rnn(torch.randn(5, 2, 3), torch.randn(3, 3), skip=2),
     ValueError, r"weight_skip must be given exactly when skip is"),
    ("functional alpha shape", lambda: mts_kernels.leaky_rnn(torch.randn(5, 2, 3), torch.randn(3, 3), alpha=torch.rand(2, 3)),
     ValueError, r"alpha must have shape \(3,\)"),
    ("functional h0", lambda: mts_kernels.leaky_rnn(torch.randn(5, 2, 3), torch.randn(3, 3), torch.randn(3)),
     ValueError, r"h0 must have shape \(2, 3\)"),
]


@pytest.mark.parametrize("desc,call,exc,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_dilation_is_interleaved_chains():
    """Dilation d equals d independent chains over the subsequences t = j, j+d, ...
    (DESIGN-NOTES §3): checks the semantics, not just agreement with the loop."""
    gen = torch.Generator().manual_seed(9)
    T, B, H, d = 12, 2, 4, 3
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * 0.5
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    h = mts_kernels.leaky_rnn(p, w, h0, dilation=d)
    for j in range(d):
        chain = mts_kernels.leaky_rnn(p[j::d].contiguous(), w, h0)
        torch.testing.assert_close(h[j::d], chain)


@pytest.mark.parametrize("B,H,product", [
    (2, 20, None), (6, 20, None), (9, 130, None), (31, 136, None), (8, 300, None),
    (33, 136, "blas"), (33, 136, "tiled"), (64, 72, "blas"), (64, 72, "tiled")],
    ids=["small_step_loop", "small_row_groups", "blas_step_loop", "blas_two_column_blocks", "blas_256_blocks",
         "blas_row_groups_blas", "blas_row_groups_tiled", "blas_4_row_groups_blas", "blas_4_row_groups_tiled"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_cpu_loops_match_reference(monkeypatch, B, H, product, reverse):
    """The CPU kernel has a raw loop for small steps and a BLAS loop for large
    ones (csrc/rnn/leaky_rnn_cpu.cpp); both against the reference, every feature on.
    The BLAS forward on one team splits a step into column blocks from B*H*H >=
    2^19 (two blocks at (31, 136), blocks of 256 and a ragged tail at (8, 300)).
    From B = 4 (small steps) and B = 32 (BLAS steps, H <= 512) the rows run in
    groups, a BLAS-sized group's product by one BLAS call or the tiled loop."""
    if product:
        monkeypatch.setenv("MTS_KERNELS_GROUP_PRODUCT", product)
    gen = torch.Generator().manual_seed(B + H)
    T = 9
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen, dtype=torch.float64) * scale).requires_grad_()  # noqa: E731
    p, w, ws, h0 = r(T, B, H), r(H, H, scale=H ** -0.5), r(H, H, scale=H ** -0.5), r(B, H)
    a = torch.rand(H, generator=gen, dtype=torch.float64).requires_grad_()
    for alpha, skip, dilation, nl in [(None, None, 1, "tanh"), (a, 2, 3, "relu"), (a, 1, 2, "tanh")]:
        kw = dict(alpha=alpha, weight_skip=ws if skip else None, skip=skip, dilation=dilation,
                  nonlinearity=nl, reverse=reverse)
        inputs = [t for t in (p, w, h0, alpha, kw["weight_skip"]) if t is not None]
        h = mts_kernels.leaky_rnn(p, w, h0, backend="cpu", **kw)
        h_ref = reference.leaky_rnn(p, w, h0, **kw)
        g = torch.randn(h.shape, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)
        for x, y in zip(torch.autograd.grad(h, inputs, g), torch.autograd.grad(h_ref, inputs, g)):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("B,H", [(1, 8), (2, 20), (3, 16), (4, 64), (5, 33), (9, 130)], ids=str)
def test_cpu_loops_float32(B, H):
    """float32 through the CPU loops: every register-tile shape (rows 1-4 and a
    remainder, one to several vectors plus a ragged tail) and the BLAS loop (9, 130),
    against the reference in float64; the float32 tanh is a rational approximation."""
    gen = torch.Generator().manual_seed(B * 100 + H)
    T = 11
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    p64, w64, ws64, h064 = r(T, B, H), r(H, H, scale=1.5 * H ** -0.5), r(H, H, scale=H ** -0.5), r(B, H)
    a64 = torch.rand(H, generator=gen, dtype=torch.float64)
    g = r(T, B, H)
    for alpha, skip, dilation, nl in [(None, None, 1, "tanh"), (a64, 2, 3, "relu"), (a64, 1, 2, "tanh")]:
        kw = dict(weight_skip=ws64 if skip else None, alpha=alpha, skip=skip, dilation=dilation,
                  nonlinearity=nl)
        names = ["p", "w", "h0", "alpha", "weight_skip"]
        leaves64 = [t.clone().requires_grad_() if t is not None else None
                    for t in (p64, w64, h064, alpha, kw["weight_skip"])]
        leaves32 = [t.detach().float().requires_grad_() if t is not None else None for t in leaves64]
        outs = []
        for (p, w, h0, al, ws), fn in [(leaves64, reference.leaky_rnn), (leaves32, mts_kernels.leaky_rnn)]:
            extra = dict(backend="cpu") if fn is mts_kernels.leaky_rnn else {}
            h = fn(p, w, h0, alpha=al, weight_skip=ws, skip=skip, dilation=dilation, nonlinearity=nl, **extra)
            used = [t for t in (p, w, h0, al, ws) if t is not None]
            outs.append((h, torch.autograd.grad(h, used, g.to(h.dtype))))
        (h_ref, grads_ref), (h, grads) = outs
        torch.testing.assert_close(h.double(), h_ref, rtol=1e-4, atol=1e-5)
        used_names = [n for n, t in zip(names, leaves64) if t is not None]
        for name, x, y in zip(used_names, grads, grads_ref):
            torch.testing.assert_close(x.double(), y, rtol=1e-4, atol=1e-4, msg=lambda m: f"grad {name}: {m}")


TRITON_DEVICE = "cuda" if HAS_CUDA else "cpu"



@pytest.mark.triton
@pytest.mark.parametrize("config", [
    dict(), dict(alpha=True), dict(skip=2), dict(dilation=3, alpha=True), dict(skip=1, dilation=2, alpha=True)],
    ids=["plain", "leak", "skip", "dilation", "all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_triton_matches_reference(config, reverse, nonlinearity):
    """The Triton kernel (on the CPU under TRITON_INTERPRET=1 when there is no GPU)."""
    gen = torch.Generator().manual_seed(7)
    T, B, H = 7, 3, 20
    dev = TRITON_DEVICE
    r = lambda *s, scale=1.0: (torch.randn(*s, generator=gen) * scale).to(dev).requires_grad_()  # noqa: E731
    p, w, h0 = r(T, B, H), r(H, H, scale=H ** -0.5), r(B, H)
    alpha = torch.rand(H, generator=gen).to(dev).requires_grad_() if config.get("alpha") else None
    skip = config.get("skip")
    ws = r(H, H, scale=H ** -0.5) if skip else None
    kw = dict(alpha=alpha, weight_skip=ws, skip=skip, dilation=config.get("dilation", 1),
              nonlinearity=nonlinearity, reverse=reverse)
    inputs = [t for t in (p, w, h0, alpha, ws) if t is not None]
    h = mts_kernels.leaky_rnn(p, w, h0, backend="triton", **kw)
    h_ref = reference.leaky_rnn(p, w, h0, **kw)
    g = torch.randn(h.shape, generator=gen).to(dev)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(torch.autograd.grad(h, inputs, g), torch.autograd.grad(h_ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.triton
@pytest.mark.parametrize("op", ["leaky_rnn", "deep_transition_rnn"])
def test_triton_hidden_size_zero(op):
    # the backward's weight gradient once reshaped its 0-element rows to (-1, 0)
    dev = TRITON_DEVICE
    p = torch.randn(3, 2, 0, device=dev, requires_grad=True)
    w = torch.randn((2, 0, 0) if op == "deep_transition_rnn" else (0, 0), device=dev, requires_grad=True)
    if op == "leaky_rnn":
        h = mts_kernels.leaky_rnn(p, w, skip=2, weight_skip=torch.randn(0, 0, device=dev), backend="triton")
    else:
        h = mts_kernels.deep_transition_rnn(p, w, backend="triton")
    dp, dw = torch.autograd.grad(h.sum(), [p, w])
    assert h.shape == dp.shape == p.shape and dw.shape == w.shape


@pytest.mark.triton
def test_triton_opcheck_and_limit():
    gen = torch.Generator().manual_seed(8)
    dev = TRITON_DEVICE
    p = torch.randn(4, 2, 16, generator=gen).to(dev).requires_grad_()
    w = torch.randn(16, 16, generator=gen).to(dev).requires_grad_()
    a = torch.rand(16, generator=gen).to(dev).requires_grad_()
    torch.library.opcheck(torch.ops.mts_kernels.leaky_rnn_fwd_triton.default,
                          (p, w, None, a, None, 0, 1, "tanh", False))
    big = torch.randn(3, 2, 200, device=dev)
    with pytest.raises(mts_kernels.BackendUnavailableError, match=r"hidden sizes up to 128, got 200"):
        mts_kernels.leaky_rnn(big, torch.randn(200, 200, device=dev), backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "grid", "0"], ids=["auto", "grid", "cublas"])
@pytest.mark.parametrize("H,B", [(16, 3), (300, 70), (700, 3)], ids=str)
@pytest.mark.parametrize("skip,dilation", [(None, 1), (2, 2), (3, 1)])
def test_cuda_loops_match_reference(monkeypatch, mode, H, B, skip, dilation):
    """The CUDA time loops (csrc/rnn/leaky_rnn_cuda.cpp): persistent kernels in
    batch-only and cooperative (grid-barrier) modes, and the cuBLAS loop (GEMM and
    one fused pointwise kernel per step), selected with MTS_KERNELS_RNN_PERSISTENT;
    float64 reference on the CPU."""
    if mode is None:
        monkeypatch.delenv("MTS_KERNELS_RNN_PERSISTENT", raising=False)
    else:
        monkeypatch.setenv("MTS_KERNELS_RNN_PERSISTENT", mode)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    gen = torch.Generator().manual_seed(H + B)
    T = 19
    r = lambda *s, scale=1.0: torch.randn(*s, generator=gen, dtype=torch.float64) * scale  # noqa: E731
    p64, w64, ws64, h064 = r(T, B, H), r(H, H, scale=H ** -0.5), r(H, H, scale=H ** -0.5), r(B, H)
    a64 = torch.rand(H, generator=gen, dtype=torch.float64)
    g64 = r(T, B, H)
    for alpha_on, reverse in [(False, False), (True, True)]:
        def run(dev, dt, fn):
            ts = [t.to(dev, dt).requires_grad_() for t in (p64, w64, h064, a64, ws64)]
            p, w, h0, a, ws = ts
            h = fn(p, w, h0, alpha=a if alpha_on else None, weight_skip=ws if skip else None, skip=skip,
                   dilation=dilation, reverse=reverse)
            used = [p, w, h0] + ([a] if alpha_on else []) + ([ws] if skip else [])
            return [t.detach().cpu().double() for t in (h, *torch.autograd.grad(h, used, g64.to(dev, dt)))]

        got = run("cuda", torch.float32, mts_kernels.leaky_rnn)
        want = run("cpu", torch.float64, reference.leaky_rnn)
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=2e-4, atol=2e-4)
