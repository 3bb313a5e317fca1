"""Variable-length batches (`lengths`) in the Triton kernels, against the reference.

Small sizes: on a CPU-only machine the kernels run in the Triton interpreter.
"""

import itertools

import pytest
import torch

import mts_kernels
from mts_kernels.ops import _backend

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _backend.triton_available(), reason="needs triton"),
]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=2e-4, atol=2e-5)


def _lengths(B: int, T: int, gen: torch.Generator) -> torch.Tensor:
    """0, 1 and T, then random lengths."""
    fixed = [0, 1, T][:B]
    rest = torch.randint(0, T + 1, (B - len(fixed),), generator=gen).tolist()
    return torch.tensor(fixed + rest, dtype=torch.int64, device=DEV)


def _valid(lengths: torch.Tensor, T: int, batch_first: bool) -> torch.Tensor:
    """(B, T, 1) (or (T, B, 1)) bool: t < L_b."""
    m = torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]
    return (m if batch_first else m.t()).unsqueeze(-1)


def _grads(fn, inputs, lengths, h0, reverse, batch_first, gen):
    """fn's output and the gradients of a loss on h and on the final states."""
    h = fn()
    w = torch.randn(h.shape, generator=gen, dtype=h.dtype).to(h.device)
    fs = mts_kernels.final_state(h, lengths, h0, reverse=reverse, batch_first=batch_first)
    wf = torch.randn(fs.shape, generator=gen, dtype=h.dtype).to(h.device)
    loss = (h * w).sum() + (fs * wf).sum()
    return [h] + list(torch.autograd.grad(loss, inputs, allow_unused=True))


def _triton_vs_reference(call, inputs, lengths, h0, reverse, batch_first, tol):
    """call(backend) -> h; compares h and every gradient; returns triton's."""
    results = []
    for backend in ("triton", "reference"):
        gen = torch.Generator().manual_seed(11)
        results.append(_grads(lambda: call(backend), inputs, lengths, h0, reverse, batch_first, gen))
    _compare(results[0], results[1], tol)
    return results[0]


def _compare(got, want, tol):
    assert len(got) == len(want)
    for i, (g, r) in enumerate(zip(got, want)):
        if r is None:
            assert g is None or not g.abs().max() > 0, i
            continue
        torch.testing.assert_close(g, r, **tol, msg=lambda s: f"output/grad #{i}: {s}")


# --------------------------------------------------------------------------- scans

def _scan_call(leaky, decay, x, h0, reverse, lengths, backend):
    if leaky:
        return mts_kernels.leaky_integrate(x, decay, h0, reverse=reverse, lengths=lengths,
                                           backend=backend)
    return mts_kernels.linear_scan(decay, x, h0, reverse=reverse, lengths=lengths, backend=backend)


def _scan_inputs(B, T, D, per_channel, has_h0, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (D,) if per_channel else (B, T, D)
    decay = (0.2 + 0.75 * torch.rand(shape, generator=gen, dtype=dtype)).to(DEV)
    x = torch.randn(B, T, D, generator=gen, dtype=dtype).to(DEV)
    h0 = torch.randn(B, D, generator=gen, dtype=dtype).to(DEV) if has_h0 else None
    return gen, decay, x, h0


@pytest.mark.parametrize("leaky,per_channel,reverse,has_h0",
                         list(itertools.product([False, True], repeat=4)))
def test_scan_lengths_match_reference(leaky, per_channel, reverse, has_h0):
    B, T, D = 5, 9, 6
    gen, decay, x, h0 = _scan_inputs(B, T, D, per_channel, has_h0, torch.float64, 7)
    lengths = _lengths(B, T, gen)
    inputs = [t.requires_grad_() for t in (decay, x, h0) if t is not None]
    got = _triton_vs_reference(
        lambda backend: _scan_call(leaky, decay, x, h0, reverse, lengths, backend),
        inputs, lengths, h0, reverse, True, F64)
    # padded outputs and input gradients are exactly 0
    pad = ~_valid(lengths, T, True)
    h, dx = got[0], got[2]
    assert not h.masked_select(pad).any() and not dx.masked_select(pad).any()
    if not per_channel:
        assert not got[1].masked_select(pad).any()


@pytest.mark.parametrize("leaky,reverse", [(False, True), (True, False)])
def test_scan_lengths_float32(leaky, reverse):
    B, T, D = 4, 12, 9
    for per_channel in (False, True):
        gen, decay, x, h0 = _scan_inputs(B, T, D, per_channel, True, torch.float32, 3)
        lengths = _lengths(B, T, gen)
        inputs = [decay.requires_grad_(), x.requires_grad_(), h0.requires_grad_()]
        _triton_vs_reference(
            lambda backend: _scan_call(leaky, decay, x, h0, reverse, lengths, backend),
            inputs, lengths, h0, reverse, True, F32)


@pytest.mark.parametrize("leaky", [False, True])
def test_scan_lengths_ignore_padding(leaky):
    """Non-finite inputs and incoming gradients at padded steps change nothing;
    each sequence equals the op run alone on that sequence cut to its length."""
    B, T, D = 4, 8, 5
    for reverse, per_channel in itertools.product([False, True], [False, True]):
        gen, decay, x, h0 = _scan_inputs(B, T, D, per_channel, True, torch.float64, 1)
        lengths = _lengths(B, T, gen)
        pad = ~_valid(lengths, T, True)
        gh = torch.randn(B, T, D, generator=gen, dtype=torch.float64).to(DEV)

        def run(decay, x, gh):
            decay, x, h0_ = (t.detach().clone().requires_grad_() for t in (decay, x, h0))
            h = _scan_call(leaky, decay, x, h0_, reverse, lengths, "triton")
            h.backward(gh)
            return h.detach(), decay.grad, x.grad, h0_.grad

        clean = run(decay, x, gh)
        nan = float("nan")
        dirty = run(decay if per_channel else decay.masked_fill(pad, nan),
                    x.masked_fill(pad, nan), gh.masked_fill(pad, nan))
        _compare(dirty, clean, dict(rtol=0, atol=0))

        da_sum = torch.zeros_like(decay)  # per-channel: the rows' decay gradients add up
        for b, n in enumerate(lengths.tolist()):
            if n == 0:
                assert not clean[0][b].any() and not clean[2][b].any() and not clean[3][b].any()
                continue
            d_b = (decay if per_channel else decay[b:b + 1, :n]).detach().clone().requires_grad_()
            x_b = x[b:b + 1, :n].detach().clone().requires_grad_()
            h0_b = h0[b:b + 1].detach().clone().requires_grad_()
            h_b = _scan_call(leaky, d_b, x_b, h0_b, reverse, None, "triton")
            h_b.backward(gh[b:b + 1, :n])
            torch.testing.assert_close(clean[0][b:b + 1, :n], h_b.detach(), **F64)
            torch.testing.assert_close(clean[2][b:b + 1, :n], x_b.grad, **F64)
            torch.testing.assert_close(clean[3][b:b + 1], h0_b.grad, **F64)
            if per_channel:
                da_sum += d_b.grad
            else:
                torch.testing.assert_close(clean[1][b:b + 1, :n], d_b.grad, **F64)
        if per_channel:
            torch.testing.assert_close(clean[1], da_sum, **F64)


# --------------------------------------------------------------------------- leaky_rnn

# (skip, dilation): none, dilation 3 > some lengths, skip 4, skip 5 with dilation 2
DELAYS = [(0, 1), (0, 3), (4, 1), (5, 2)]


def _rnn_inputs(T, B, H, leak, skip, has_h0, dtype, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=dtype)).to(DEV)

    p = rand(T, B, H)
    w = rand(H, H, scale=0.6)
    ws = rand(H, H, scale=0.4) if skip else None
    alpha = torch.rand(H, generator=gen, dtype=dtype).to(DEV) if leak else None
    h0 = rand(B, H) if has_h0 else None
    return gen, dict(p=p, weight_hh=w, h0=h0, alpha=alpha, weight_skip=ws)


def _rnn_call(t, skip, dilation, nonlinearity, reverse, lengths, backend):
    return mts_kernels.leaky_rnn(t["p"], t["weight_hh"], t["h0"], alpha=t["alpha"],
                                 weight_skip=t["weight_skip"], skip=skip or None, dilation=dilation,
                                 nonlinearity=nonlinearity, reverse=reverse, lengths=lengths,
                                 backend=backend)


def _rnn_check(T, B, H, leak, skip, dilation, reverse, has_h0, nonlinearity, dtype, tol, seed):
    gen, t = _rnn_inputs(T, B, H, leak, skip, has_h0, dtype, seed)
    lengths = _lengths(B, T, gen)
    inputs = [v.requires_grad_() for v in t.values() if v is not None]
    got = _triton_vs_reference(
        lambda backend: _rnn_call(t, skip, dilation, nonlinearity, reverse, lengths, backend),
        inputs, lengths, t["h0"], reverse, False, tol)
    pad = ~_valid(lengths, T, False)
    assert not got[0].masked_select(pad).any() and not got[1].masked_select(pad).any()


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("skip,dilation", DELAYS)
@pytest.mark.parametrize("reverse", [False, True])
def test_leaky_rnn_lengths_match_reference(leak, skip, dilation, reverse):
    for has_h0, nonlinearity in itertools.product([True, False], ["tanh", "relu"]):
        _rnn_check(8, 5, 6, leak, skip, dilation, reverse, has_h0, nonlinearity,
                   torch.float64, F64, seed=17)


@pytest.mark.parametrize("skip,dilation", [(0, 1), (3, 2)])
def test_leaky_rnn_lengths_float32(skip, dilation):
    # B = 18: two programs of 16 rows, the second one partly empty
    for reverse in (False, True):
        _rnn_check(7, 18, 9, True, skip, dilation, reverse, True, "tanh", torch.float32, F32, seed=2)


@pytest.mark.parametrize("leak,skip,dilation", [(True, 0, 1), (True, 3, 2), (False, 0, 2)])
def test_leaky_rnn_lengths_ignore_padding(leak, skip, dilation):
    """Non-finite inputs and incoming gradients at padded steps change nothing;
    each sequence equals the op run alone on that sequence cut to its length."""
    T, B, H = 7, 4, 5
    for reverse in (False, True):
        gen, t = _rnn_inputs(T, B, H, leak, skip, True, torch.float64, 4)
        lengths = _lengths(B, T, gen)
        pad = ~_valid(lengths, T, False)
        gh = torch.randn(T, B, H, generator=gen, dtype=torch.float64).to(DEV)
        names = [k for k, v in t.items() if v is not None]

        def run(tensors, lengths, gh):
            leaves = {k: (v.detach().clone().requires_grad_() if v is not None else None)
                      for k, v in tensors.items()}
            h = _rnn_call(leaves, skip, dilation, "tanh", reverse, lengths, "triton")
            h.backward(gh)
            return [h.detach()] + [leaves[k].grad for k in names]

        clean = run(t, lengths, gh)
        nan = float("nan")
        dirty = run(dict(t, p=t["p"].masked_fill(pad, nan)), lengths, gh.masked_fill(pad, nan))
        _compare(dirty, clean, dict(rtol=0, atol=0))

        # the weight, alpha and skip gradients are sums over the sequences
        shared = {k: torch.zeros_like(t[k]) for k in names if k not in ("p", "h0")}
        for b, n in enumerate(lengths.tolist()):
            if n == 0:
                assert not clean[0][:, b].any() and not clean[1][:, b].any()
                continue
            alone = run(dict(t, p=t["p"][:n, b:b + 1], h0=t["h0"][b:b + 1]), None, gh[:n, b:b + 1])
            res = dict(zip(names, alone[1:]))
            torch.testing.assert_close(clean[0][:n, b:b + 1], alone[0], **F64)
            torch.testing.assert_close(clean[1][:n, b:b + 1], res["p"], **F64)
            torch.testing.assert_close(clean[1 + names.index("h0")][b:b + 1], res["h0"], **F64)
            for k in shared:
                shared[k] += res[k]
        for k in shared:
            torch.testing.assert_close(clean[1 + names.index(k)], shared[k], **F64,
                                       msg=lambda s, k=k: f"{k}: {s}")
