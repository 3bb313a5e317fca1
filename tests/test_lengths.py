"""Variable lengths (`lengths=`) on every op and module, against the reference
loops and torch.nn.RNN: values and every gradient, final states included.

The Triton backend's lengths tests live in test_triton_lengths.py (interpreter
sizes); the CUDA rows here run where a GPU is present.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import mts_kernels
from mts_kernels import ClockworkRNN, LeakyRNN, final_state, reference

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]


def _lengths(B, T, seed):
    """Random lengths in [0, T] that always include 0, 1 and T."""
    gen = torch.Generator().manual_seed(seed)
    L = torch.randint(0, T + 1, (B,), generator=gen)
    L[: min(3, B)] = torch.tensor([T, 0, 1])[: min(3, B)]
    return L[torch.randperm(B, generator=gen)]


def _rand(shape, gen, dtype, device, scale=1.0):
    return (scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype).to(device).requires_grad_()


def _loss_grads(h, lengths, h0, reverse, batch_first, inputs, seed=1):
    """Gradients of a random linear function of h and of the final states."""
    gen = torch.Generator().manual_seed(seed)
    fs = final_state(h, lengths, h0, reverse=reverse, batch_first=batch_first)
    g = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h)
    gf = torch.randn(fs.shape, generator=gen, dtype=torch.float64).to(fs)
    return fs, torch.autograd.grad((h * g).sum() + (fs * gf).sum(), inputs)


def _close(a, b, dtype, what):
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda m: f"{what}: {m}")


def _compare(run, inputs, lengths, h0, reverse, batch_first, dtype, names):
    """run(backend, inputs) -> h; the fused backend against the float64 reference."""
    h = run(None, inputs)
    ref_inputs = [t.detach().double().requires_grad_() for t in inputs]
    ref_h0 = None if h0 is None else ref_inputs[names.index("h0")]
    r = run("reference", ref_inputs)
    fs, grads = _loss_grads(h, lengths, h0, reverse, batch_first, inputs)
    fr, ref_grads = _loss_grads(r, lengths, ref_h0, reverse, batch_first, ref_inputs)
    _close(h, r, dtype, "output")
    _close(fs, fr, dtype, "final state")
    T = h.size(1 if batch_first else 0)
    if batch_first:
        pad = torch.arange(T).unsqueeze(0) >= lengths.unsqueeze(1)
    else:
        pad = torch.arange(T).unsqueeze(1) >= lengths.unsqueeze(0)
    assert (h.detach().cpu()[pad] == 0).all(), "padded outputs must be 0"
    for a, b, name in zip(grads, ref_grads, names):
        _close(a, b, dtype, f"grad {name}")
    return h


# --------------------------------------------------------------------------- scans

SCANS = {
    "linear_scan": (mts_kernels.linear_scan, lambda d, x: (d, x)),
    "leaky_integrate": (mts_kernels.leaky_integrate, lambda d, x: (x, d)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op_name", SCANS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["btd", "tbd"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_scan_lengths(device, op_name, reverse, per_channel, with_h0, batch_first, dtype):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA scans run float32/float16/bfloat16")
    op, order = SCANS[op_name]
    B, T, D = 7, 11, 9
    # a seed fixed per case (str hashes change between processes)
    gen = torch.Generator().manual_seed(sum(map(ord, op_name)) * 4 + 2 * bool(reverse) + bool(per_channel))
    shape = (B, T, D) if batch_first else (T, B, D)
    x = _rand(shape, gen, dtype, device)
    decay = (torch.rand((D,) if per_channel else shape, generator=gen, dtype=torch.float64)
             .to(dtype).to(device).requires_grad_())
    h0 = _rand((B, D), gen, dtype, device) if with_h0 else None
    L = _lengths(B, T, seed=3)
    inputs = [x, decay] + ([h0] if with_h0 else [])
    names = ["x", "decay"] + (["h0"] if with_h0 else [])

    def run(backend, ins):
        hh = ins[2] if with_h0 else None
        return op(*order(ins[1], ins[0]), hh, reverse=reverse, batch_first=batch_first, lengths=L,
                  backend=backend)

    _compare(run, inputs, L, h0, reverse, batch_first, dtype, names)


@pytest.mark.parametrize("op_name", SCANS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_scan_each_sequence_alone(op_name, reverse):
    """Row b of a ragged call is the op on sequence b cut to L_b, and the padding
    (here filled with huge values) changes nothing."""
    op, order = SCANS[op_name]
    B, T, D = 6, 10, 5
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    a = torch.rand(B, T, D, generator=gen, dtype=torch.float64)
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64)
    L = _lengths(B, T, seed=7)
    pad = torch.arange(T).unsqueeze(0) >= L.unsqueeze(1)
    x_noisy, a_noisy = x.masked_fill(pad.unsqueeze(-1), 1e30), a.masked_fill(pad.unsqueeze(-1), 1e30)
    h = op(*order(a_noisy, x_noisy), h0, reverse=reverse, lengths=L)
    for b in range(B):
        n = int(L[b])
        if n:
            alone = op(*order(a[b:b + 1, :n], x[b:b + 1, :n]), h0[b:b + 1], reverse=reverse)
            torch.testing.assert_close(h[b, :n], alone[0], rtol=1e-12, atol=1e-12)
        assert (h[b, n:] == 0).all()


@pytest.mark.parametrize("op_name", SCANS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
def test_scan_lengths_gradcheck(op_name, reverse, per_channel):
    op, order = SCANS[op_name]
    B, T, D = 4, 6, 3
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64, requires_grad=True)
    a = torch.rand((D,) if per_channel else (B, T, D), generator=gen, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([6, 0, 1, 4])

    def f(x, a, h0):
        h = op(*order(a, x), h0, reverse=reverse, lengths=L)
        return h, final_state(h, L, h0, reverse=reverse)

    assert torch.autograd.gradcheck(f, (x, a, h0))


# --------------------------------------------------------------------------- leaky_rnn

RNN_CASES = {
    "plain": dict(),
    "leak": dict(leak=True),
    "skip": dict(skip=2),
    "dilation": dict(dilation=3),
    "long_delays": dict(dilation=8, skip=12, leak=True),  # longer than most lengths
    "relu_all": dict(leak=True, skip=3, dilation=2, nonlinearity="relu"),
}


def _rnn_inputs(B, T, H, case, dtype, device, with_h0, seed):
    gen = torch.Generator().manual_seed(seed)
    p = _rand((T, B, H), gen, dtype, device)
    w = _rand((H, H), gen, dtype, device, scale=H ** -0.5)
    inputs, names = [p, w], ["p", "weight_hh"]
    if with_h0:
        inputs.append(_rand((B, H), gen, dtype, device))
        names.append("h0")
    if case.get("leak"):
        inputs.append(torch.rand(H, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_())
        names.append("alpha")
    if case.get("skip"):
        inputs.append(_rand((H, H), gen, dtype, device, scale=H ** -0.5))
        names.append("weight_skip")
    return inputs, names


def _rnn_call(case, names, reverse, L):
    def run(backend, ins):
        d = dict(zip(names, ins))
        return mts_kernels.leaky_rnn(d["p"], d["weight_hh"], d.get("h0"), alpha=d.get("alpha"),
                                     weight_skip=d.get("weight_skip"), skip=case.get("skip"),
                                     dilation=case.get("dilation", 1),
                                     nonlinearity=case.get("nonlinearity", "tanh"), reverse=reverse,
                                     lengths=L, backend=backend)
    return run


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", RNN_CASES)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["no_h0", "h0"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
# (5, 12): the register-tiled CPU loop; (24, 80): the BLAS loop (B*H*H > 2^17);
# (8, 300): the BLAS loop's forward in column blocks (B*H*H >= 2^19)
@pytest.mark.parametrize("B,H", [(5, 12), (24, 80), (8, 300)], ids=["small", "blas", "blas_blocks"])
def test_leaky_rnn_lengths(device, case, reverse, with_h0, dtype, B, H):
    T = 13
    inputs, names = _rnn_inputs(B, T, H, RNN_CASES[case], dtype, device, with_h0, seed=len(case) + H)
    L = _lengths(B, T, seed=B)
    h0 = inputs[names.index("h0")] if with_h0 else None
    _compare(_rnn_call(RNN_CASES[case], names, reverse, L), inputs, L, h0, reverse, False, dtype, names)


@pytest.mark.parametrize("product", ["blas", "tiled"])
@pytest.mark.parametrize("case", ["plain", "long_delays", "relu_all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
# (33, 72): two groups of 16 and 17 rows; (64, 48): four of 16 (B*H*H > 2^17:
# the BLAS-sized loop, csrc/rnn/leaky_rnn_cpu.cpp run_groups)
@pytest.mark.parametrize("B,H", [(33, 72), (64, 48)], ids=["groups2", "groups4"])
def test_leaky_rnn_lengths_row_groups(monkeypatch, product, case, reverse, dtype, B, H):
    """The CPU loop's row groups at BLAS-sized steps, each group's product by one
    BLAS call or by the register-tiled loop (MTS_KERNELS_GROUP_PRODUCT; unset, the
    machine decides), against the float64 reference with lengths 0, 1 and T."""
    monkeypatch.setenv("MTS_KERNELS_GROUP_PRODUCT", product)
    T = 11
    assert B * H * H > 2 ** 17 and B >= 32
    inputs, names = _rnn_inputs(B, T, H, RNN_CASES[case], dtype, "cpu", True, seed=B + H + len(case))
    L = _lengths(B, T, seed=H)
    L[1], L[5], L[B - 1] = 0, 1, T
    _compare(_rnn_call(RNN_CASES[case], names, reverse, L), inputs, L, inputs[names.index("h0")], reverse,
             False, dtype, names)


@pytest.mark.parametrize("case", ["leak", "long_delays", "relu_all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_leaky_rnn_lengths_gradcheck(case, reverse):
    B, T, H = 4, 7, 3
    inputs, names = _rnn_inputs(B, T, H, RNN_CASES[case], torch.float64, "cpu", True, seed=2)
    L = torch.tensor([7, 0, 1, 5])
    run = _rnn_call(RNN_CASES[case], names, reverse, L)
    h0_at = names.index("h0")

    def f(*ins):
        h = run(None, list(ins))
        return h, final_state(h, L, ins[h0_at], reverse=reverse, batch_first=False)

    assert torch.autograd.gradcheck(f, tuple(inputs))


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_leaky_rnn_each_sequence_alone(reverse):
    B, T, H = 6, 12, 8
    case = RNN_CASES["long_delays"]
    inputs, names = _rnn_inputs(B, T, H, case, torch.float64, "cpu", True, seed=9)
    d = dict(zip(names, [t.detach() for t in inputs]))
    L = _lengths(B, T, seed=4)
    pad = (torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)).unsqueeze(-1)
    kw = dict(alpha=d["alpha"], weight_skip=d["weight_skip"], skip=case["skip"],
              dilation=case["dilation"], reverse=reverse)
    h = mts_kernels.leaky_rnn(d["p"].masked_fill(pad, 1e30), d["weight_hh"], d["h0"], lengths=L, **kw)
    for b in range(B):
        n = int(L[b])
        if n:
            alone = mts_kernels.leaky_rnn(d["p"][:n, b:b + 1], d["weight_hh"], d["h0"][b:b + 1], **kw)
            torch.testing.assert_close(h[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        assert (h[n:, b] == 0).all()


def test_leaky_rnn_lengths_gathered_delays():
    # A skip so long that the CPU forward's processing-order state ring would pass
    # its size limit (csrc/rnn/leaky_rnn_cpu.cpp, kRingElems = 2^22 elements): the
    # delayed rows are gathered instead. Each sequence equals the op run alone.
    B, H, skip = 2, 8, (1 << 18) + 1
    T = skip + 6
    assert (skip + 1) * B * H > 1 << 22
    gen = torch.Generator().manual_seed(11)
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w, ws = (torch.randn(H, H, generator=gen, dtype=torch.float64) * H ** -0.5 for _ in range(2))
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64)
    L = torch.tensor([T, T - 3])
    kw = dict(weight_skip=ws, skip=skip, dilation=2)
    h = mts_kernels.leaky_rnn(p, w, h0, lengths=L, **kw)
    for b in range(B):
        n = int(L[b])
        alone = mts_kernels.leaky_rnn(p[:n, b:b + 1], w, h0[b:b + 1], **kw)
        torch.testing.assert_close(h[:n, b], alone[:, 0], rtol=1e-12, atol=1e-12)
        assert (h[n:, b] == 0).all()
    assert h[skip:, 0].ne(mts_kernels.leaky_rnn(p, w, h0, lengths=L, dilation=2)[skip:, 0]).any()  # skip counted


# --------------------------------------------------------------------------- clockwork_rnn

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t0", [0, 5])
@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_clockwork_lengths(device, t0, leak, dtype):
    B, T, sizes, periods = 6, 14, [3, 2, 4], [1, 3, 5]
    H = sum(sizes)
    gen = torch.Generator().manual_seed(t0)
    inputs = [_rand((T, B, H), gen, dtype, device), _rand((H, H), gen, dtype, device, scale=0.5),
              _rand((B, H), gen, dtype, device)]
    names = ["p", "weight_hh", "h0"]
    if leak:
        inputs.append(torch.rand(H, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_())
        names.append("alpha")
    L = _lengths(B, T, seed=t0 + 1)

    def run(backend, ins):
        return mts_kernels.clockwork_rnn(ins[0], ins[1], ins[2], periods=periods, module_sizes=sizes,
                                         alpha=ins[3] if leak else None, t0=t0, lengths=L,
                                         backend=backend)

    _compare(run, inputs, L, inputs[2], False, False, dtype, names)


def test_clockwork_lengths_gradcheck():
    B, T, sizes, periods = 3, 7, [2, 1], [1, 3]
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(T, B, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(B, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    L = torch.tensor([7, 0, 4])

    def f(p, w, h0):
        h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, t0=2, lengths=L)
        return h, final_state(h, L, h0, batch_first=False)

    assert torch.autograd.gradcheck(f, (p, w, h0))


# --------------------------------------------------------------------------- modules

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (3, False), (1, True)])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_matches_torch_rnn(device, num_layers, bidirectional, nonlinearity, batch_first,
                                  enforce_sorted):
    torch.manual_seed(num_layers + 10 * bidirectional)
    dtype = torch.float64 if device == "cpu" else torch.float32
    rnn = nn.RNN(5, 7, num_layers, nonlinearity=nonlinearity, bidirectional=bidirectional,
                 batch_first=batch_first).to(device, dtype)
    ours = LeakyRNN.from_torch(rnn)
    B, T = 6, 11
    L = torch.tensor([11, 9, 9, 4, 1, 1]) if enforce_sorted else torch.tensor([4, 11, 1, 9, 1, 9])
    x = torch.randn((B, T, 5) if batch_first else (T, B, 5), device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(num_layers * (1 + bidirectional), B, 7, device=device, dtype=dtype, requires_grad=True)
    packed = pack_padded_sequence(x, L, batch_first=batch_first, enforce_sorted=enforce_sorted)
    out_ref, h_ref = rnn(packed, hx)
    out, h_n = ours(packed, hx)
    assert isinstance(out, nn.utils.rnn.PackedSequence)
    assert torch.equal(out.batch_sizes, out_ref.batch_sizes)
    for name in ("sorted_indices", "unsorted_indices"):
        a, b = getattr(out, name), getattr(out_ref, name)
        assert (a is None and b is None) or torch.equal(a, b)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.data, out_ref.data, **tol)
    torch.testing.assert_close(h_n, h_ref, **tol)
    gen = torch.Generator().manual_seed(0)
    g, gh = (torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t) for t in (out.data, h_n))
    inputs = [x, hx] + list(ours.parameters())
    mine = torch.autograd.grad((out.data * g).sum() + (h_n * gh).sum(), inputs, retain_graph=True)
    theirs = torch.autograd.grad((out_ref.data * g).sum() + (h_ref * gh).sum(),
                                 [x, hx] + list(rnn.parameters()))
    for a, b, name in zip(mine, theirs, ["x", "hx"] + [n for n, _ in ours.named_parameters()]):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_leaky_rnn_module_lengths_keyword(batch_first):
    """Padded input with lengths= equals the PackedSequence path, every feature on."""
    torch.manual_seed(0)
    m = LeakyRNN(4, 6, num_layers=2, bidirectional=True, batch_first=batch_first, leak="learned",
                 skip=3, dilation=2, dtype=torch.float64)
    B, T = 5, 9
    L = torch.tensor([3, 9, 0, 5, 9])
    x = torch.randn((B, T, 4) if batch_first else (T, B, 4), dtype=torch.float64)
    out, h_n = m(x, lengths=L)
    tdim = 1 if batch_first else 0
    pad = torch.arange(T).unsqueeze(1 - tdim) >= L.unsqueeze(tdim)
    assert (out[pad] == 0).all()
    keep = L > 0  # a PackedSequence cannot hold an empty sequence
    xs = x[keep] if batch_first else x[:, keep]
    out_p, h_p = m(pack_padded_sequence(xs, L[keep], batch_first=batch_first, enforce_sorted=False))
    from torch.nn.utils.rnn import pad_packed_sequence
    padded, _ = pad_packed_sequence(out_p, batch_first=batch_first, total_length=T)
    torch.testing.assert_close(out[keep] if batch_first else out[:, keep], padded)
    torch.testing.assert_close(h_n[:, keep], h_p)
    assert (h_n[:, ~keep] == 0).all()  # L = 0: h0 = zeros


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_clockwork_module_packed(device, batch_first):
    """ClockworkRNN on a PackedSequence: each sequence as if alone (t0 shared)."""
    torch.manual_seed(0)
    dtype = torch.float64 if device == "cpu" else torch.float32
    m = ClockworkRNN(3, 8, periods=[1, 2, 5], module_sizes=[3, 3, 2], leak="learned",
                     batch_first=batch_first, device=device, dtype=dtype)
    B, T = 4, 12
    L = torch.tensor([5, 12, 1, 8])
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), device=device, dtype=dtype, requires_grad=True)
    hx = torch.randn(1, B, 8, device=device, dtype=dtype)
    out, h_n = m(pack_padded_sequence(x, L, batch_first=batch_first, enforce_sorted=False), hx, t0=3)
    from torch.nn.utils.rnn import pad_packed_sequence
    padded, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for b in range(B):
        n = int(L[b])
        xb = x[b:b + 1, :n] if batch_first else x[:n, b:b + 1]
        alone, h_alone = m(xb, hx[:, b:b + 1], t0=3)
        got = padded[b:b + 1, :n] if batch_first else padded[:n, b:b + 1]
        torch.testing.assert_close(got, alone, **tol)
        torch.testing.assert_close(h_n[:, b:b + 1], h_alone, **tol)
    # the lengths= keyword gives the same padded output and final states
    out_k, h_k = m(x, hx, t0=3, lengths=L)
    torch.testing.assert_close(out_k, padded, **tol)
    torch.testing.assert_close(h_k, h_n, **tol)


def _op_call(name, gen):
    """(fn(inputs, backend), float64 inputs; inputs[0] is the per-step one, (B, T, D)
    for the scans, (T, B, H) for the cells) of each op, with h0."""
    B, T, H = 4, 6, 6
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    h0 = r(B, H)
    if name in SCANS:
        op, order = SCANS[name]
        ins = [r(B, T, H), torch.rand(B, T, H, generator=gen, dtype=torch.float64), h0]
        return lambda i, be: op(*order(i[1], i[0]), i[2], lengths=L_PAD, backend=be), ins
    w = lambda *s: r(*s) / H ** 0.5
    if name == "leaky_rnn":
        return (lambda i, be: mts_kernels.leaky_rnn(i[0], i[1], i[2], skip=2, weight_skip=i[3], lengths=L_PAD,
                                                    backend=be), [r(T, B, H), w(H, H), h0, w(H, H)])
    if name == "clockwork_rnn":
        return (lambda i, be: mts_kernels.clockwork_rnn(i[0], i[1], i[2], periods=[1, 2, 3], module_sizes=[2, 2, 2],
                                                        t0=1, lengths=L_PAD, backend=be), [r(T, B, H), w(H, H), h0])
    return (lambda i, be: mts_kernels.deep_transition_rnn(i[0], i[1], i[2], bias_hh=i[3], lengths=L_PAD, backend=be),
            [r(T, B, H), w(2, H, H), h0, r(2, H)])


L_PAD = [4, 0, 6, 1]


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("name", list(SCANS) + ["leaky_rnn", "clockwork_rnn", "deep_transition_rnn"])
def test_op_padding_never_reaches_a_result(name, backend):
    """NaN and inf at the padded steps of the per-step input change no output and no
    gradient (the reference loops once passed 0 * NaN into the decay's gradient and
    into a length-0 row's output)."""
    fn, ins = _op_call(name, torch.Generator().manual_seed(11))
    x = ins[0]
    tdim = 1 if name in SCANS else 0
    steps = torch.arange(x.size(tdim)).unsqueeze(1 - tdim)
    pad = (steps >= torch.tensor(L_PAD).unsqueeze(tdim)).unsqueeze(-1).expand_as(x)

    def run(first):
        xs = [t.clone().requires_grad_() for t in [first] + ins[1:]]
        h = fn(xs, backend)
        g = torch.randn(h.shape, generator=torch.Generator().manual_seed(12), dtype=h.dtype)
        return [h] + list(torch.autograd.grad(h, xs, g))

    dirty = x.masked_fill(pad, float("nan"))
    dirty[..., 0] = dirty[..., 0].masked_fill(pad[..., 0], float("inf"))
    for i, (a, b) in enumerate(zip(run(dirty), run(x.masked_fill(pad, 0.0)))):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"result {i}: {m}")


@pytest.mark.parametrize("fused", [True, False], ids=["fused_tangent", "step_loop"])
@pytest.mark.parametrize("name", ["leaky_rnn", "clockwork_rnn", "deep_transition_rnn"])
def test_tangent_padding_never_reaches_a_result(monkeypatch, name, fused):
    """A NaN at a padded step of p's tangent changes no jvp output, on the CPU's
    fused tangent op and on the PyTorch step loop the other devices run (which
    once zeroed padded steps by a product with the mask: 0 * NaN)."""
    import importlib
    fn, ins = _op_call(name, torch.Generator().manual_seed(13))
    if not fused:
        for mod in ("leaky_rnn", "deep_transition_rnn", "clockwork_rnn"):
            monkeypatch.setattr(importlib.import_module(f"mts_kernels.ops.{mod}"), "_fused_tangent",
                                lambda *a: False)
    p, rest = ins[0], ins[1:]
    pad = (torch.arange(p.size(0)).unsqueeze(1) >= torch.tensor(L_PAD).unsqueeze(0)).unsqueeze(-1).expand_as(p)
    dp = torch.randn(p.shape, generator=torch.Generator().manual_seed(14), dtype=p.dtype)
    run = lambda t: torch.func.jvp(lambda q: fn([q] + rest, "cpu"), (p,), (t,))[1]
    torch.testing.assert_close(run(dp.masked_fill(pad, float("nan"))), run(dp.masked_fill(pad, 0.0)),
                               rtol=0, atol=0)


def _module_outputs_and_grads(m, x, lengths, mode):
    """(output, h_n, d(loss)/d(parameters)) of module m on padded x with lengths:
    eager, under CPU bfloat16 autocast (the dense projection path), or through
    torch.func.grad (the transforms' path)."""
    names = [n for n, _ in m.named_parameters()]
    g = torch.randn(x.shape[:2] + (m.hidden_size * (2 if m.bidirectional else 1),),
                    generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def loss(params):
        out, h_n = torch.func.functional_call(m, params, (x,), dict(lengths=lengths))
        return (out.double() * g).sum() + h_n.double().sum(), (out, h_n)

    params = dict(m.named_parameters())
    if mode == "func":
        grads, (out, h_n) = torch.func.grad(loss, has_aux=True)(params)
        return out, h_n, [grads[n] for n in names]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        value, (out, h_n) = loss(params)
    return out, h_n, torch.autograd.grad(value, list(params.values()))


@pytest.mark.parametrize("mode", ["eager", "autocast", "func"])
@pytest.mark.parametrize("cls", ["LeakyRNN", "ClockworkRNN", "DeepTransitionRNN"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
def test_module_padding_never_reaches_a_result(cls, mode, batch_first):
    """NaN, inf or any other value at a padded step changes no output and no
    gradient, on every projection path (the CPU op reads the valid steps only; the
    dense F.linear path, taken under autocast, transforms and on GPUs, once passed a
    padded NaN into dW_ih through 0 * NaN)."""
    torch.manual_seed(0)
    dtype = torch.float32 if mode == "autocast" else torch.float64
    m = getattr(mts_kernels, cls)(3, 6, num_layers=2, bidirectional=True, batch_first=batch_first, dtype=dtype)
    B, T = 3, 7
    L = torch.tensor([4, 7, 0])
    x = torch.randn((B, T, 3) if batch_first else (T, B, 3), dtype=dtype)
    tdim = 1 if batch_first else 0
    pad = (torch.arange(T).unsqueeze(1 - tdim) >= L.unsqueeze(tdim)).unsqueeze(-1).expand_as(x)
    clean = _module_outputs_and_grads(m, x.masked_fill(pad, 0.0), L, mode)
    poisoned = x.clone()
    poisoned[pad] = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30], dtype=dtype).repeat(
        int(pad.sum()) // 4 + 1)[:int(pad.sum())]
    dirty = _module_outputs_and_grads(m, poisoned, L, mode)
    torch.testing.assert_close(dirty[0], clean[0], rtol=0, atol=0)
    torch.testing.assert_close(dirty[1], clean[1], rtol=0, atol=0)
    for name, a, b in zip([n for n, _ in m.named_parameters()], dirty[2], clean[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda msg: f"grad {name}: {msg}")


# --------------------------------------------------------------------------- compile

def test_compile_with_lengths():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    B, T, H = 4, 9, 6
    x = torch.randn(B, T, H, generator=gen)
    a = torch.rand(B, T, H, generator=gen)
    p = torch.randn(T, B, H, generator=gen)
    w = torch.randn(H, H, generator=gen) / H ** 0.5
    alpha = torch.rand(H, generator=gen)
    L = torch.tensor([9, 0, 3, 7])

    def f(x, a, p, w, alpha, L):
        h1 = mts_kernels.linear_scan(a, x, lengths=L, reverse=True)
        h2 = mts_kernels.leaky_integrate(x, a, lengths=L)
        h3 = mts_kernels.leaky_rnn(p, w, alpha=alpha, skip=2, weight_skip=w, dilation=2, lengths=L,
                                   reverse=True)
        h4 = mts_kernels.clockwork_rnn(p, w, periods=[1, 2], module_sizes=[4, 2], t0=1, lengths=L)
        return (h1.sum(1) + h2.sum(1) + h3.sum(0) + h4.sum(0)
                + final_state(h3, L, reverse=True, batch_first=False))

    ins = [t.clone().requires_grad_() if t.is_floating_point() else t for t in (x, a, p, w, alpha, L)]
    eager = f(*ins)
    g_eager = torch.autograd.grad(eager.sum(), [t for t in ins if t.requires_grad])
    ins_c = [t.detach().clone().requires_grad_() if t.is_floating_point() else t for t in ins]
    compiled = torch.compile(f, fullgraph=True)(*ins_c)
    g_c = torch.autograd.grad(compiled.sum(), [t for t in ins_c if t.requires_grad])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    for a_, b_ in zip(g_c, g_eager):
        torch.testing.assert_close(a_, b_, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- bad input

BAD_LENGTHS = [
    (torch.tensor([3, 2]), ValueError, "B = 3"),
    ([3, 2], ValueError, "one entry per sequence"),
    (torch.tensor([3.0, 2.0, 1.0]), TypeError, "integer tensor"),
    (torch.tensor([True, False, True]), TypeError, "integer tensor"),
    (torch.tensor([3, -1, 2]), ValueError, r"\[0, T\]"),
    (torch.tensor([3, 6, 2]), ValueError, r"\[0, T\]"),
    ([3, 6, 2], ValueError, r"\[0, T\]"),
    ([3, 1.5, 2], TypeError, "ints"),
    ([3, True, 2], TypeError, "ints"),
    (torch.tensor([[3, 2, 1]]), ValueError, "1-D"),
    ("3", TypeError, "lengths must be"),
]


@pytest.mark.parametrize("lengths,exc,match", BAD_LENGTHS)
def test_bad_lengths(lengths, exc, match):
    B, T, H = 3, 5, 4
    x, a = torch.randn(B, T, H), torch.rand(B, T, H)
    p, w = torch.randn(T, B, H), torch.randn(H, H)
    calls = [
        lambda: mts_kernels.linear_scan(a, x, lengths=lengths),
        lambda: mts_kernels.leaky_integrate(x, a, lengths=lengths),
        lambda: mts_kernels.leaky_rnn(p, w, lengths=lengths),
        lambda: mts_kernels.clockwork_rnn(p, w, periods=[1, 2], module_sizes=[2, 2], lengths=lengths),
        lambda: LeakyRNN(H, H)(p, lengths=lengths),
        lambda: ClockworkRNN(H, H, periods=[1, 2], module_sizes=[2, 2])(p, lengths=lengths),
        lambda: final_state(x, lengths),
    ]
    for call in calls:
        with pytest.raises(exc, match="lengths") as info:
            call()
        assert info.match(match)


def test_bad_lengths_direct_op_calls():
    """The C++ ops check lengths before touching memory."""
    B, T, H = 3, 5, 4
    x, a = torch.randn(B, T, H), torch.rand(B, T, H)
    p, w = torch.randn(T, B, H), torch.randn(H, H)
    ops = torch.ops.mts_kernels
    for bad, match in ((torch.tensor([1, 2]), "1-D tensor of B = 3"),
                       (torch.tensor([1, 2, 3], dtype=torch.int32), "int64"),
                       (torch.tensor([1, 9, 3]), r"\[0, T\]"),
                       (torch.tensor([1, -1, 3]), r"\[0, T\]")):
        with pytest.raises(RuntimeError, match=match):
            ops.linear_scan_fwd(a, x, None, False, bad)
        with pytest.raises(RuntimeError, match=match):
            ops.leaky_integrate_bwd(x, x, a, x, None, True, bad)
        with pytest.raises(RuntimeError, match=match):
            ops.leaky_rnn_fwd(p, w, None, None, None, 0, 1, "tanh", False, bad)
    with pytest.raises(ValueError, match="lengths must be None for PackedSequence"):
        packed = pack_padded_sequence(p, torch.tensor([5, 3, 2]))
        LeakyRNN(H, H)(packed, lengths=[5, 3, 2])


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["auto", "grid", "0"])
@pytest.mark.parametrize("case", ["plain", "long_delays", "relu_all"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
def test_cuda_rnn_lengths_every_loop(monkeypatch, mode, case, reverse):
    """Each CUDA time loop (persistent batch / grid plans, cuBLAS loop) with lengths,
    against the float64 reference; NaN in the padding must change nothing."""
    monkeypatch.setenv("MTS_KERNELS_RNN_PERSISTENT", mode)
    B, T, H = 9, 13, 40
    inputs, names = _rnn_inputs(B, T, H, RNN_CASES[case], torch.float32, "cuda", True, seed=3)
    L = _lengths(B, T, seed=5)
    with torch.no_grad():
        pad = (torch.arange(T).unsqueeze(1) >= L.unsqueeze(0)).unsqueeze(-1).cuda()
        inputs[0].masked_fill_(pad, float("nan"))
    h0 = inputs[names.index("h0")]
    _compare(_rnn_call(RNN_CASES[case], names, reverse, L.cuda()), inputs, L, h0, reverse, False,
             torch.float32, names)
