"""linear_scan and leaky_integrate on every available backend, against the
reference loops in mts_kernels.reference: values and every gradient."""

import itertools

import pytest
import torch

import mts_kernels
from mts_kernels import reference
from mts_kernels.ops import _backend

OPS = {
    # name: (fused op, reference, argument order maker: (decay, x) -> positional args)
    "linear_scan": (mts_kernels.linear_scan, reference.linear_scan, lambda d, x: (d, x)),
    "leaky_integrate": (mts_kernels.leaky_integrate, reference.leaky_integrate, lambda d, x: (x, d)),
}

HAS_CUDA = torch.cuda.is_available()


def _backends():
    out = [pytest.param("cpu", "cpu", id="cpu")]
    out.append(pytest.param("triton", "cuda" if HAS_CUDA else "cpu", id="triton", marks=pytest.mark.triton))
    out.append(pytest.param("cuda", "cuda", id="cuda", marks=pytest.mark.cuda))
    return out


def _make(shape_btd, dtype, device, *, per_channel, batch_first, with_h0, layout="contiguous",
          seed=0):
    """Random decay (in (0, 1), as for a leak), input and h0, requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    B, T, D = shape_btd
    full = (B, T, D) if batch_first else (T, B, D)
    if layout == "d_strided":  # unit stride broken along D
        x = torch.randn(*full[:2], 2 * D, generator=gen, dtype=torch.float64)[..., ::2]
    elif layout == "t_strided":  # a slice every other time step
        tdim = 1 if batch_first else 0
        big = list(full)
        big[tdim] = 2 * big[tdim]
        x = torch.randn(*big, generator=gen, dtype=torch.float64)
        x = x[:, ::2] if batch_first else x[::2]
    elif layout == "transposed":  # (B, D, T) memory viewed as the logical layout
        x = torch.randn(full[0], full[2], full[1], generator=gen, dtype=torch.float64).transpose(1, 2)
    else:
        x = torch.randn(*full, generator=gen, dtype=torch.float64)
    dshape = (D,) if per_channel else full
    decay = 0.05 + 0.9 * torch.rand(*dshape, generator=gen, dtype=torch.float64)
    if layout == "d_strided" and not per_channel:
        decay = decay.transpose(-1, -2).contiguous().transpose(-1, -2)
    h0 = torch.randn(B, D, generator=gen, dtype=torch.float64) if with_h0 else None
    conv = lambda t: None if t is None else t.to(device=device, dtype=dtype).requires_grad_()  # noqa: E731
    if layout != "contiguous":
        # keep the non-contiguous strides through the dtype/device conversion
        xc = torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=device)
        xc.copy_(x)
        return conv(decay), xc.requires_grad_(), conv(h0)
    return conv(decay), conv(x), conv(h0)


def _run(fn, args, h0, g, **kw):
    h = fn(*args, h0, **kw)
    inputs = [t for t in (*args, h0) if t is not None]
    grads = torch.autograd.grad(h, inputs, g)
    return h, grads


def _as64(t):
    return t.detach().to(torch.float64).requires_grad_()


def _check(op_name, backend, device, dtype, shape, *, per_channel, batch_first, with_h0, reverse,
           layout="contiguous", seed=0):
    fused, ref, order = OPS[op_name]
    decay, x, h0 = _make(shape, dtype, device, per_channel=per_channel, batch_first=batch_first,
                         with_h0=with_h0, layout=layout, seed=seed)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    kw = dict(reverse=reverse, batch_first=batch_first)
    h, grads = _run(fused, order(decay, x), h0, g.to(device=device, dtype=dtype), backend=backend, **kw)
    # float64 oracle on the CPU
    d64, x64 = _as64(decay).cpu(), _as64(x).cpu()
    h064 = None if h0 is None else _as64(h0).cpu()
    h_ref, grads_ref = _run(ref, order(d64, x64), h064, g, **kw)
    assert h.shape == x.shape and h.dtype == dtype and h.device == x.device
    names = [n for n, t in zip(("first", "second", "h0"), (*order(decay, x), h0)) if t is not None]
    if dtype in (torch.float64, torch.float32):
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
        torch.testing.assert_close(h.cpu().double(), h_ref, **tol)
        for n, a, b in zip(names, grads, grads_ref):
            # a per-channel decay gradient sums B*T terms: its error grows with that count
            scale = max(1.0, b.abs().max().item())
            torch.testing.assert_close(a.cpu().double(), b, rtol=tol["rtol"], atol=tol["atol"] * scale,
                                       msg=lambda m: f"grad {n}: {m}")
        return
    # Low precision (flash-attention rule): error against the float64 oracle at most
    # twice that of the same loop run by PyTorch in this dtype, plus a small floor.
    d_lp, x_lp = decay.detach().cpu().requires_grad_(), x.detach().cpu().requires_grad_()
    h0_lp = None if h0 is None else h0.detach().cpu().requires_grad_()
    h_lp, grads_lp = _run(ref, order(d_lp, x_lp), h0_lp, g.to(dtype), **kw)
    eps = torch.finfo(dtype).eps
    for n, a, b, c in zip(["h"] + names, [h, *grads], [h_ref, *grads_ref], [h_lp, *grads_lp]):
        err = (a.detach().cpu().double() - b).abs().max().item()
        err_torch = (c.detach().cpu().double() - b).abs().max().item()
        floor = eps * max(1.0, b.abs().max().item())
        assert err <= 2 * err_torch + floor, f"{n}: error {err:.3g} vs PyTorch {dtype} loop {err_torch:.3g}"


SHAPES = [(1, 1, 1), (1, 7, 1), (3, 17, 5), (2, 1000, 3), (4, 33, 130), (1, 5, 1000)]


@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_cpu_float64_matches_reference(op_name, shape, per_channel, reverse):
    for batch_first, with_h0 in itertools.product([True, False], [True, False]):
        _check(op_name, "cpu", "cpu", torch.float64, shape, per_channel=per_channel,
               batch_first=batch_first, with_h0=with_h0, reverse=reverse)


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
def test_dtypes(backend, device, op_name, dtype, per_channel):
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 math")
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels run float32/16 and bfloat16; float64 is the CPU's")
    shapes = [(3, 17, 5), (2, 300, 3)] if backend == "triton" and device == "cpu" else [(3, 17, 5), (4, 1000, 130)]
    for shape, reverse in zip(shapes, [False, True]):
        _check(op_name, backend, device, dtype, shape, per_channel=per_channel, batch_first=True,
               with_h0=True, reverse=reverse)


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("layout", ["d_strided", "t_strided", "transposed"])
@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "time_major"])
def test_non_contiguous(backend, device, op_name, layout, batch_first):
    dtype = torch.float64 if device == "cpu" else torch.float32
    for per_channel, reverse in [(False, False), (True, True)]:
        _check(op_name, backend, device, dtype, (3, 17, 5), per_channel=per_channel,
               batch_first=batch_first, with_h0=reverse, reverse=reverse, layout=layout)


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (3, 1000, 5), (1, 3, 1)], ids=str)
def test_backend_shapes(backend, device, op_name, shape):
    dtype = torch.float64 if device == "cpu" else torch.float32
    if backend == "triton" and device == "cpu" and shape[1] == 1000:
        # The interpreter runs T = 1000 in minutes; T = 333 still spans several
        # 64-step chunks and ends in a partial one, which is what this shape tests.
        shape = (3, 333, 5)
    for per_channel, reverse, batch_first in itertools.product([False, True], [False, True], [True, False]):
        _check(op_name, backend, device, dtype, shape, per_channel=per_channel,
               batch_first=batch_first, with_h0=per_channel, reverse=reverse)


@pytest.mark.cuda
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("shape", [(8, 65536, 3), (1, 20000, 33), (2, 4097, 1), (64, 300, 2048)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_long_sequences(op_name, shape, dtype):
    """Long T with few channels takes the chunked parallel scan; many channels the
    per-channel loop. Both against the float64 oracle."""
    for per_channel, reverse in [(False, False), (True, True)]:
        _check(op_name, "cuda", "cuda", dtype, shape, per_channel=per_channel, batch_first=True,
               with_h0=True, reverse=reverse)


@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_gradcheck_float64(op_name, per_channel, reverse):
    fused, _, order = OPS[op_name]
    decay, x, h0 = _make((2, 9, 3), torch.float64, "cpu", per_channel=per_channel, batch_first=True,
                         with_h0=True)
    fn = lambda d, xx, hh: fused(*order(d, xx), hh, reverse=reverse, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (decay, x, h0))


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["per_step", "per_channel"])
def test_streaming_two_halves_equal_one_call(backend, device, op_name, reverse, per_channel):
    """Two calls over the halves, the first call's final state passed as h0,
    give the values and gradients of one call (truncated-BPTT streaming)."""
    fused, _, order = OPS[op_name]
    dtype = torch.float64 if device == "cpu" else torch.float32
    decay, x, h0 = _make((3, 40, 6), dtype, device, per_channel=per_channel, batch_first=True,
                         with_h0=True)
    g = torch.randn(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(5)).to(device)
    kw = dict(reverse=reverse, backend=backend)
    whole = fused(*order(decay, x), h0, **kw)
    grads_whole = torch.autograd.grad(whole, (decay, x, h0), g)

    def split(t):
        return (t, t) if t.dim() == 1 else (t[:, :17], t[:, 17:])

    (d1, d2), (x1, x2) = split(decay), split(x)
    if not reverse:
        first = fused(*order(d1, x1), h0, **kw)
        second = fused(*order(d2, x2), first[:, -1], **kw)
    else:  # time runs backwards: the second half is consumed first
        second = fused(*order(d2, x2), h0, **kw)
        first = fused(*order(d1, x1), second[:, 0], **kw)
    both = torch.cat([first, second], 1)
    grads_both = torch.autograd.grad(both, (decay, x, h0), g)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, whole, **tol)
    for a, b in zip(grads_both, grads_whole):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("backend,device", _backends())
@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_final_state_gradient(backend, device, op_name, reverse):
    """Loss on the final state only (and on h.sum(), whose gradient autograd
    hands over as an expanded, zero-stride tensor)."""
    fused, ref, order = OPS[op_name]
    dtype = torch.float64 if device == "cpu" else torch.float32
    decay, x, h0 = _make((2, 11, 4), dtype, device, per_channel=False, batch_first=True, with_h0=True)
    for loss_fn in (lambda h: (h[:, 0] if reverse else h[:, -1]).pow(2).sum(), lambda h: h.sum()):
        got = torch.autograd.grad(loss_fn(fused(*order(decay, x), h0, reverse=reverse, backend=backend)),
                                  (decay, x, h0))
        want = torch.autograd.grad(loss_fn(ref(*order(decay, x), h0, reverse=reverse)), (decay, x, h0))
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_backend_env_var_and_default(monkeypatch):
    decay, x, h0 = _make((2, 5, 3), torch.float64, "cpu", per_channel=False, batch_first=True,
                         with_h0=False)
    calls = []
    real = reference.leaky_integrate
    monkeypatch.setattr(reference, "leaky_integrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    mts_kernels.leaky_integrate(x, decay)
    assert calls == [], "the default for CPU tensors is the compiled kernel"
    monkeypatch.setenv("MTS_KERNELS_BACKEND", "reference")
    mts_kernels.leaky_integrate(x, decay)
    assert calls == [1]
    monkeypatch.setenv("MTS_KERNELS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="MTS_KERNELS_BACKEND='fastest' is not a backend"):
        mts_kernels.leaky_integrate(x, decay)
    with pytest.raises(ValueError, match="backend='gpu' is not a backend"):
        mts_kernels.leaky_integrate(x, decay, backend="gpu")


def test_unavailable_backend_says_how_to_get_it(monkeypatch):
    x = torch.randn(2, 5, 3)
    with pytest.raises(mts_kernels.BackendUnavailableError, match="backend='cuda' runs CUDA tensors"):
        mts_kernels.linear_scan(torch.rand(3), x, backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(mts_kernels.BackendUnavailableError, match="TRITON_INTERPRET=1"):
        mts_kernels.linear_scan(torch.rand(3), x, backend="triton")
    monkeypatch.setattr(_backend, "_TRITON_INSTALLED", False)
    with pytest.raises(mts_kernels.BackendUnavailableError, match="pip install triton"):
        mts_kernels.linear_scan(torch.rand(3), x, backend="triton")


@pytest.mark.parametrize("op_name", OPS)
def test_cpu_large_outputs_reused_blocks(op_name):
    """Outputs of 4 MiB and more come from the huge-page block cache
    (csrc/cpu_alloc.h); freed blocks are handed out again, so repeated calls
    must still match the reference exactly."""
    for seed in range(3):
        _check(op_name, "cpu", "cpu", torch.float64, (2, 2048, 300), per_channel=seed == 1,
               batch_first=seed != 2, with_h0=True, reverse=seed == 2, seed=seed)
