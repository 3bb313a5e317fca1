"""The fused CPU clockwork_rnn op (csrc/clockwork/) against the reference loop and
the decomposition: forward, every gradient, clock phases, lengths, dtypes, opcheck
and bad input."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import mts_kernels
from mts_kernels import reference
from _rnn_util import clockwork_case, grads_wrt, record_clockwork_path
import importlib

cw_ops = importlib.import_module("mts_kernels.ops.clockwork_rnn")

pytestmark = pytest.mark.skipif(not cw_ops.FUSED_COMPILED, reason="needs the compiled fused op")

F64 = torch.float64
OPS = torch.ops.mts_kernels


@pytest.fixture
def fused(monkeypatch):
    monkeypatch.setenv(cw_ops.PATH_ENV_VAR, "fused")


def _case(seed, T, B, sizes, dtype=F64, leak=False, with_h0=True):
    return clockwork_case(seed, T, B, sizes, dtype, leak, with_h0)


_grads = grads_wrt


def _calls_fused(monkeypatch):
    return record_clockwork_path(monkeypatch, cw_ops)


CASES = [
    # sizes, periods, t0, nonlinearity, leak, lengths
    ([3, 2, 2], [1, 3, 5], 4, "tanh", False, None),
    ([5, 1, 6], [2, 3, 7], 0, "relu", True, [11, 0, 6, 11]),
    ([4, 4], [1, 2], 1, "tanh", True, [3, 11, 11, 1]),
    ([2, 3, 1, 4], [1, 2, 4, 8], 2 ** 62 - 3, "relu", False, [11, 11, 11, 11]),
    ([6], [1], 0, "tanh", True, None),
    # every sequence shorter than T: the backward's clock still runs through the
    # steps no row reaches (it once froze there and returned dp = 0)
    ([2, 3, 1], [1, 3, 4], 5, "tanh", True, [2, 7, 5, 1]),
    ([4, 2], [2, 3], 0, "relu", False, [1, 0, 3, 9]),
    ([3, 5], [5, 40], 3 ** 41, "tanh", True, [0, 0, 0, 0]),  # t0 beyond int64, a period beyond T
]


@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_matches_reference_forward_and_every_gradient(fused, monkeypatch, sizes, periods, t0, nl,
                                                      leak, lengths, batch_first):
    T, B = 11, 4
    p, w, h0, alpha = _case(1, T, B, sizes, leak=leak)
    if batch_first:
        p = p.transpose(0, 1).contiguous()
    ins = [t.requires_grad_() if t is not None else None for t in (p, w, h0, alpha)]
    kw = dict(alpha=alpha, nonlinearity=nl, t0=t0, batch_first=batch_first, lengths=lengths)
    calls = _calls_fused(monkeypatch)
    _check_against_reference(ins, periods, sizes, kw, grad_tol=1e-11)
    assert calls == [True], "the path was not the documented one"


def _check_against_reference(ins, periods, sizes, kw, grad_tol):
    """clockwork_rnn(*ins) and its gradients wrt ins against the reference loop's."""
    p, w, h0 = ins[:3]
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, **kw)
    h_ref = reference.clockwork_rnn(p, w, h0, periods, sizes, **kw)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(h)
    for name, a, b in zip(["p", "weight_hh", "h0", "alpha"], _grads(h, ins, g), _grads(h_ref, ins, g)):
        torch.testing.assert_close(a, b, rtol=grad_tol, atol=grad_tol, msg=lambda m: f"grad {name}: {m}")


def test_lower_blocks_get_exactly_zero_gradient_and_are_never_read(fused):
    sizes, periods = [3, 2, 4], [1, 2, 3]
    p, w, h0, _ = _case(2, 9, 2, sizes)
    w.requires_grad_()
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes)
    dw, = torch.autograd.grad(h.square().sum(), w)
    lower = torch.ones(9, 9, dtype=torch.bool)
    lo = 0
    for k in sizes:
        lower[lo:lo + k, lo:] = False
        lo += k
    assert (dw[lower] == 0).all() and (dw[~lower] != 0).all()
    w2 = w.detach().clone()
    w2[lower] = float("nan")  # never read: a NaN there changes nothing
    torch.testing.assert_close(mts_kernels.clockwork_rnn(p, w2, h0, periods=periods, module_sizes=sizes),
                               h.detach())


def test_unread_blocks_never_reach_a_second_order_gradient(fused):
    # the tangent form of the backward (create_graph) once masked W by a product
    # with the block mask, so an inf there became NaN (inf * 0)
    sizes, periods = [2, 2, 2], [1, 2, 4]
    p, w, h0, _ = _case(15, 7, 2, sizes)
    lower = torch.zeros(6, 6, dtype=torch.bool)
    lower[2:4, 0:2] = lower[4:6, 0:4] = True

    def hvp(w):
        w = w.clone().requires_grad_()
        h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes)
        g, = torch.autograd.grad(h.tanh().sum(), w, create_graph=True)
        return g, torch.autograd.grad(g[~lower].pow(2).sum(), w)[0]

    clean = hvp(w.masked_fill(lower, 0.0))
    dirty = hvp(w.masked_fill(lower, float("inf")))
    for a, b in zip(dirty, clean):
        torch.testing.assert_close(a[~lower], b[~lower], rtol=0, atol=0)
        assert (a[lower] == 0).all()


def test_inactive_modules_hold_and_pass_gradients_through(fused):
    # module 1 (period 4) is active at steps 1, 5, 9 only (t0 = 3): it holds between
    sizes, periods = [2, 3], [1, 4]
    p, w, h0, _ = _case(3, 10, 3, sizes)
    p.requires_grad_()
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, t0=3)
    slow = h[:, :, 2:]
    torch.testing.assert_close(slow[0], h0[:, 2:], rtol=0, atol=0)
    torch.testing.assert_close(slow[1:5], slow[1:2].expand(4, -1, -1), rtol=0, atol=0)
    dp, = torch.autograd.grad(h.sum(), p)
    inactive = [t for t in range(10) if t not in (1, 5, 9)]
    assert (dp[inactive, :, 2:] == 0).all() and (dp[[1, 5, 9], :, 2:] != 0).all()


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("nl", ["tanh", "relu"])
def test_gradcheck_float64(fused, leak, nl):
    sizes, periods = [2, 1, 2], [1, 2, 3]
    p, w, h0, alpha = _case(4, 7, 2, sizes, leak=leak)
    if nl == "relu":
        p = p + 0.3  # keep pre-activations away from relu's kink
    ins = tuple(t.requires_grad_() for t in (p, w, h0) + ((alpha,) if leak else ()))

    def f(p, w, h0, alpha=None):
        return mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, alpha=alpha,
                                         nonlinearity=nl, t0=1, lengths=[7, 4])

    assert gradcheck(f, ins)


@pytest.mark.parametrize("leak", [False, True])
def test_both_paths_agree(monkeypatch, leak):
    sizes, periods = [4, 3, 5], [1, 3, 4]
    p, w, h0, alpha = _case(5, 23, 3, sizes, dtype=torch.float32, leak=leak)
    ins = [t.requires_grad_() if t is not None else None for t in (p, w, h0, alpha)]
    kw = dict(periods=periods, module_sizes=sizes, alpha=alpha, t0=7, lengths=[23, 9, 0])
    out = {}
    for path in ("fused", "decomposed"):
        monkeypatch.setenv(cw_ops.PATH_ENV_VAR, path)
        h = mts_kernels.clockwork_rnn(p, w, h0, **kw)
        out[path] = [h, *_grads(h, ins, torch.ones_like(h))]
    for a, b in zip(out["fused"], out["decomposed"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_path_setting_and_choice(monkeypatch):
    p, w, h0, _ = _case(6, 5, 2, [2, 2], dtype=torch.float32)
    kw = dict(periods=[1, 2], module_sizes=[2, 2])
    calls = _calls_fused(monkeypatch)
    for path, expect in (("auto", True), ("fused", True), ("decomposed", False)):
        monkeypatch.setenv(cw_ops.PATH_ENV_VAR, path)
        calls.clear()
        mts_kernels.clockwork_rnn(p, w, h0, **kw)
        assert calls == [expect], path
    # torch.func transforms take the decomposition (its pieces carry jvp / vmap rules)
    monkeypatch.setenv(cw_ops.PATH_ENV_VAR, "fused")
    calls.clear()
    torch.func.grad(lambda p: mts_kernels.clockwork_rnn(p, w, h0, **kw).sum())(p)
    assert calls == [False]
    monkeypatch.setenv(cw_ops.PATH_ENV_VAR, "fast")
    with pytest.raises(ValueError, match=cw_ops.PATH_ENV_VAR):
        mts_kernels.clockwork_rnn(p, w, h0, **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("leak", [False, True])
def test_low_precision_within_twice_pytorch_error(fused, dtype, leak):
    # the fused op's error against the float64 reference is at most twice that of
    # the reference loop run in the same dtype (plus one ulp of the magnitude)
    sizes, periods = [4, 4, 4], [1, 2, 5]
    p64, w64, h064, a64 = _case(7, 33, 3, sizes, leak=leak)
    g64 = torch.randn(33, 3, 12, generator=torch.Generator().manual_seed(8), dtype=F64)
    kw = dict(t0=3, lengths=[33, 20, 1])

    def run(fn, dt):
        ins = [t.to(dt).requires_grad_() for t in (p64, w64, h064) + ((a64,) if leak else ())]
        h = fn(*ins[:3], periods, sizes, alpha=ins[3] if leak else None, **kw)
        return [t.detach().double() for t in (h, *torch.autograd.grad(h, ins, g64.to(dt)))]

    ours_fn = lambda p, w, h0, per, siz, **k: mts_kernels.clockwork_rnn(p, w, h0, periods=per,
                                                                        module_sizes=siz, **k)
    exact, lowp, ours = (run(reference.clockwork_rnn, F64), run(reference.clockwork_rnn, dtype),
                         run(ours_fn, dtype))
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW", "dh0", "dalpha"], ours, exact, lowp):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"


def test_large_products_take_blas(fused):
    # B * (H - lo) * k above the tiled loop's threshold: the BLAS path of both loops
    sizes, periods = [40, 24], [1, 3]
    p, w, h0, alpha = _case(9, 6, 70, sizes, leak=True)
    ins = [t.requires_grad_() for t in (p, w, h0, alpha)]
    kw = dict(alpha=alpha, t0=2, lengths=[6] * 35 + [2] * 35)
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, **kw)
    h_ref = reference.clockwork_rnn(p, w, h0, periods, sizes, **kw)
    torch.testing.assert_close(h, h_ref)
    g = torch.randn_like(h)
    for a, b in zip(_grads(h, ins, g), _grads(h_ref, ins, g)):
        torch.testing.assert_close(a, b)


# dW inside the backward's loop (register-tiled steps and an H x H accumulator of
# at most 32 KiB: H=64 in float64, with B=2 a single group) or after it (H=72:
# one GEMM per batch row over a module's strided active steps); each sequence
# long enough for several of the in-loop accumulator's flushes (every 64 steps)
@pytest.mark.parametrize("B,sizes", [(5, [16, 16, 16, 16]), (2, [30, 20, 14]), (5, [24, 24, 24])],
                         ids=["in-loop", "in-loop-one-group", "after-loop"])
@pytest.mark.parametrize("leak", [False, True])
def test_weight_gradient_in_and_after_the_loop(fused, B, sizes, leak):
    T, periods = 150, [1, 2, 5, 8][:len(sizes)]
    p, w, h0, alpha = _case(40, T, B, sizes, leak=leak)
    ins = [t.requires_grad_() if t is not None else None for t in (p, w, h0, alpha)]
    lengths = [T, 1, 0, 131, 97][:B]
    _check_against_reference(ins, periods, sizes, dict(alpha=alpha, t0=3, lengths=lengths), grad_tol=1e-10)


def test_weight_gradient_in_the_loop_float32_accuracy(fused):
    # a long float32 sequence: the in-loop dW's error against float64 stays within
    # twice that of PyTorch's float32 (the reference loop under autograd)
    sizes, periods = [16, 16, 16, 16], [1, 2, 4, 8]
    T, B = 2000, 4
    p, w, h0, _ = _case(41, T, B, sizes)
    g = torch.randn(T, B, 64, generator=torch.Generator().manual_seed(2), dtype=F64)

    def dw(fn, dtype):
        wd = w.to(dtype).requires_grad_()
        h = fn(p.to(dtype), wd, h0.to(dtype), periods, sizes)
        return torch.autograd.grad(h, wd, g.to(dtype))[0].double()

    ours = dw(lambda p, w, h0, per, siz: mts_kernels.clockwork_rnn(p, w, h0, periods=per, module_sizes=siz),
              torch.float32)
    exact, torch32 = dw(reference.clockwork_rnn, F64), dw(reference.clockwork_rnn, torch.float32)
    err, err_torch = (ours - exact).abs().max().item(), (torch32 - exact).abs().max().item()
    assert err <= 2 * err_torch, f"{err:.3g} vs PyTorch's {err_torch:.3g}"


def test_autocast_bfloat16(fused):
    p, w, h0, alpha = _case(10, 9, 2, [3, 3], dtype=torch.float32, leak=True)
    ins = [t.requires_grad_() for t in (p, w, h0, alpha)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2], module_sizes=[3, 3], alpha=alpha)
    assert h.dtype == torch.bfloat16
    grads = torch.autograd.grad(h.float().sum(), ins)
    assert all(g.dtype == torch.float32 for g in grads)
    # the registered op's own autocast kernel
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h2, _ = OPS.clockwork_rnn_fwd(p, w, h0, alpha, [3, 3], [1, 2], [0, 0], "tanh", None)
    assert h2.dtype == torch.bfloat16
    torch.testing.assert_close(h2, h.detach(), rtol=0, atol=0)


def test_second_order_through_the_fused_op(fused):
    p, w, h0, alpha = _case(11, 6, 2, [2, 2], leak=True)
    w.requires_grad_()
    kw = dict(periods=[1, 2], module_sizes=[2, 2], alpha=alpha, lengths=[4, 6])
    def hvp(fn):
        g, = torch.autograd.grad(fn(p, w, h0, **kw).tanh().sum(), w, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), w, create_graph=True)[0]
    hv = hvp(mts_kernels.clockwork_rnn)
    torch.testing.assert_close(hv, hvp(lambda p, w, h0, periods, module_sizes, **k: reference.clockwork_rnn(
        p, w, h0, periods, module_sizes, **k)))
    with pytest.raises(RuntimeError, match="clockwork_rnn: a third-order gradient"):
        torch.autograd.grad(hv.sum(), w)


def test_compile_fullgraph(fused):
    torch._dynamo.reset()
    p, w, h0, alpha = _case(12, 8, 2, [3, 2], dtype=torch.float32, leak=True)
    f = lambda p, w: mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 3], module_sizes=[3, 2],
                                               alpha=alpha, t0=5, lengths=[8, 3]).square().sum()
    pc, wc = p.clone().requires_grad_(), w.clone().requires_grad_()
    pe, we = p.clone().requires_grad_(), w.clone().requires_grad_()
    out_c, out_e = torch.compile(f, fullgraph=True)(pc, wc), f(pe, we)
    torch.testing.assert_close(out_c, out_e)
    for a, b in zip(torch.autograd.grad(out_c, (pc, wc)), torch.autograd.grad(out_e, (pe, we))):
        torch.testing.assert_close(a, b)


def _op_args(leak, lengths):
    p, w, h0, alpha = _case(13, 7, 3, [2, 3], leak=leak)
    return (p, w, h0, alpha, [2, 3], [1, 3], [0, 2], "tanh",
            None if lengths is None else torch.tensor(lengths))


@pytest.mark.parametrize("leak", [False, True])
@pytest.mark.parametrize("lengths", [None, [7, 0, 4]])
def test_opcheck(leak, lengths):
    args = _op_args(leak, lengths)
    p, w, h0, alpha = args[:4]
    fwd_args = (p.requires_grad_(), w.requires_grad_(), h0, alpha, *args[4:])
    torch.library.opcheck(OPS.clockwork_rnn_fwd, fwd_args)
    h, u = OPS.clockwork_rnn_fwd(*args)
    bwd_args = (torch.randn_like(h), w.detach(), h.detach(), u, h0, alpha, *args[4:])
    torch.library.opcheck(OPS.clockwork_rnn_bwd, bwd_args)


def test_meta_and_fake_shapes():
    p, w, h0, alpha = (t.to("meta") for t in _case(14, 5, 2, [2, 2], leak=True))
    h, u = OPS.clockwork_rnn_fwd(p, w, h0, alpha, [2, 2], [1, 2], [0, 1], "relu", None)
    assert h.shape == u.shape == p.shape and h.device.type == "meta"
    dp, dw, dh0, da = OPS.clockwork_rnn_bwd(h, w, h, u, h0, alpha, [2, 2], [1, 2], [0, 1], "relu", None)
    assert (dp.shape, dw.shape, dh0.shape, da.shape) == (p.shape, w.shape, h0.shape, alpha.shape)


@pytest.mark.parametrize("change,match", [
    (dict(module_sizes=[2, 2]), "module_sizes must sum to hidden_size 5"),
    (dict(module_sizes=[5, 0]), "module_sizes must be >= 1"),
    (dict(periods=[1]), "must have the same length"),
    (dict(periods=[0, 3]), "periods must be >= 1"),
    (dict(first_steps=[0, -1]), "first_steps must be >= 0"),
    (dict(nonlinearity="gelu"), "nonlinearity must be 'tanh' or 'relu'"),
    (dict(weight_hh=torch.zeros(5, 4, dtype=F64)), "weight_hh must have shape"),
    (dict(h0=torch.zeros(3, 5, dtype=torch.float32)), "h0 must be"),
    (dict(alpha=torch.zeros(4, dtype=F64)), "alpha must have shape"),
    (dict(p=torch.zeros(0, 3, 5, dtype=F64)), "at least one time step"),
    (dict(lengths=torch.tensor([7, 8, 0])), r"lengths must be in \[0, T\]"),
    (dict(lengths=torch.tensor([7, 1])), "lengths must be a 1-D tensor of B = 3"),
    (dict(lengths=torch.tensor([7.0, 1.0, 1.0])), "lengths must be int64"),
])
def test_op_bad_input(change, match):
    names = ["p", "weight_hh", "h0", "alpha", "module_sizes", "periods", "first_steps",
             "nonlinearity", "lengths"]
    args = dict(zip(names, _op_args(False, None)))
    args.update(change)
    with pytest.raises(RuntimeError, match=match):
        OPS.clockwork_rnn_fwd(*args.values())


def test_public_bad_input(fused):
    p, w, h0, _ = _case(15, 5, 2, [2, 2])
    with pytest.raises(ValueError, match="t0 must be an int >= 0"):
        mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2], module_sizes=[2, 2], t0=-1)
    with pytest.raises(ValueError, match="lengths"):
        mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2], module_sizes=[2, 2], lengths=[6, 1])
    with pytest.raises(ValueError, match="periods must be strictly increasing"):
        mts_kernels.clockwork_rnn(p, w, h0, periods=[2, 2], module_sizes=[2, 2])


# ----------------------------------------------------------- the CUDA loop
# csrc/clockwork/clockwork_loop.h is the CUDA op's whole host loop; the test
# hook runs it on the CPU with CPU GEMMs on the same strided views and the
# kernels' per-element bodies (clockwork_step.h) in a plain loop.
EMU_FWD = getattr(OPS, "_clockwork_rnn_gpu_loop_emulate_fwd", None)
EMU_BWD = getattr(OPS, "_clockwork_rnn_gpu_loop_emulate_bwd", None)


def _op_call(seed, T, B, sizes, periods, t0, nl, leak, lengths, dtype=F64, with_h0=True):
    p, w, h0, alpha = _case(seed, T, B, sizes, dtype=dtype, leak=leak, with_h0=with_h0)
    firsts = [min((-t0) % P, T) for P in periods]
    lens = None if lengths is None else torch.tensor(lengths)
    return (p, w, h0, alpha, list(sizes), [min(P, T) for P in periods], firsts, nl, lens)


@pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")
@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
@pytest.mark.parametrize("with_h0", [True, False])
def test_gpu_loop_matches_cpu_op(sizes, periods, t0, nl, leak, lengths, with_h0):
    args = _op_call(21, 11, 4, sizes, periods, t0, nl, leak, lengths, with_h0=with_h0)
    h, u = OPS.clockwork_rnn_fwd(*args)
    h_e, u_e = EMU_FWD(*args)
    torch.testing.assert_close(h_e, h, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(u_e, u, rtol=1e-12, atol=1e-12)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(22), dtype=F64)
    p, w, h0, alpha = args[:4]
    want = OPS.clockwork_rnn_bwd(g, w, h, u, h0, alpha, *args[4:])
    got = EMU_BWD(g, w, h_e, u_e, h0, alpha, *args[4:])
    for name, a, b in zip(["dp", "dweight_hh", "dh0", "dalpha"], got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m: f"{name}: {m}")
    if lengths is None or max(lengths) > 0:  # the gradients compared are not trivially zero
        assert want[0].abs().max() > 0 and want[1].abs().max() > 0


@pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_gpu_loop_low_precision_runs_in_float32(dtype):
    # float16 / bfloat16 run in float32 in both loops and round once on output:
    # the two agree to the storage dtype's rounding of the same float32 values
    args = _op_call(23, 9, 5, [3, 4, 2], [1, 2, 3], 1, "tanh", True, [9, 4, 0, 9, 1], dtype=dtype)
    h, u = OPS.clockwork_rnn_fwd(*args)
    h_e, u_e = EMU_FWD(*args)
    assert h_e.dtype == u_e.dtype == dtype
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=0, atol=torch.finfo(dtype).eps)
    torch.testing.assert_close(h_e, h, **tol)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(24)).to(dtype)
    p, w, h0, alpha = args[:4]
    want = OPS.clockwork_rnn_bwd(g, w, h, u, h0, alpha, *args[4:])
    got = EMU_BWD(g, w, h, u, h0, alpha, *args[4:])
    for name, a, b in zip(["dp", "dweight_hh", "dh0", "dalpha"], got, want):
        assert a.dtype == dtype, name
        scale = b.double().abs().max().item()
        err = (a.double() - b.double()).abs().max().item()
        assert err <= 1e-4 * scale + 4 * torch.finfo(dtype).eps * scale, f"{name}: {err:.3g} of {scale:.3g}"


@pytest.mark.skipif(EMU_FWD is None, reason="needs the compiled test hook")
def test_gpu_loop_module_limit_is_a_clear_error():
    n = cw_ops.CUDA_MAX_MODULES + 1
    p, w, h0, _ = _case(25, 3, 1, [1] * n)
    with pytest.raises(RuntimeError, match=f"takes at most {cw_ops.CUDA_MAX_MODULES} modules, got {n}"):
        EMU_FWD(p, w, h0, None, [1] * n, list(range(1, n + 1)), [0] * n, "tanh", None)
    # and the op at the limit runs
    m = cw_ops.CUDA_MAX_MODULES
    p, w, h0, _ = _case(25, 3, 1, [1] * m)
    h, _ = EMU_FWD(p, w, h0, None, [1] * m, list(range(1, m + 1)), [0] * m, "tanh", None)
    torch.testing.assert_close(h, OPS.clockwork_rnn_fwd(p, w, h0, None, [1] * m, list(range(1, m + 1)),
                                                         [0] * m, "tanh", None)[0])


CUDA = pytest.mark.cuda


@CUDA
@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
def test_cuda_op_matches_cpu_op_float64(sizes, periods, t0, nl, leak, lengths):
    args = _op_call(26, 11, 4, sizes, periods, t0, nl, leak, lengths)
    dev = [a.cuda() if isinstance(a, torch.Tensor) else a for a in args]
    h, u = OPS.clockwork_rnn_fwd(*args)
    h_c, u_c = OPS.clockwork_rnn_fwd(*dev)
    torch.testing.assert_close(h_c.cpu(), h, rtol=1e-12, atol=1e-12)
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(27), dtype=F64)
    p, w, h0, alpha = args[:4]
    want = OPS.clockwork_rnn_bwd(g, w, h, u, h0, alpha, *args[4:])
    got = OPS.clockwork_rnn_bwd(g.cuda(), *dev[1:2], h_c, u_c, *dev[2:])
    for name, a, b in zip(["dp", "dweight_hh", "dh0", "dalpha"], got, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-11, atol=1e-11, msg=lambda m: f"{name}: {m}")


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_cuda_public_api_takes_the_fused_op_within_twice_pytorch_error(monkeypatch, dtype):
    calls = _calls_fused(monkeypatch)
    sizes, periods = [5, 6, 7, 14], [1, 2, 4, 8]
    p64, w64, h064, a64 = (t.cuda() for t in _case(28, 41, 5, sizes, leak=True))
    g64 = torch.randn(41, 5, 32, generator=torch.Generator().manual_seed(29), dtype=F64).cuda()
    kw = dict(t0=3, lengths=[41, 20, 1, 0, 33])

    def run(fn, dt):
        ins = [t.to(dt).requires_grad_() for t in (p64, w64, h064, a64)]
        h = fn(*ins[:3], periods, sizes, alpha=ins[3], **kw)
        return [t.detach().double() for t in (h, *torch.autograd.grad(h, ins, g64.to(dt)))]

    ours_fn = lambda p, w, h0, per, siz, **k: mts_kernels.clockwork_rnn(p, w, h0, periods=per, module_sizes=siz,
                                                                        backend="cuda", **k)
    ours = run(ours_fn, dtype)
    assert calls == [True]
    exact, lowp = run(reference.clockwork_rnn, F64), run(reference.clockwork_rnn, dtype)
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW", "dh0", "dalpha"], ours, exact, lowp):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"


@CUDA
@pytest.mark.parametrize("leak", [False, True])
def test_cuda_opcheck(leak):
    args = [a.cuda() if isinstance(a, torch.Tensor) else a
            for a in _op_call(30, 7, 3, [2, 3], [1, 3], 1, "tanh", leak, [7, 0, 4], dtype=torch.float32)]
    p, w, h0, alpha = args[:4]
    torch.library.opcheck(OPS.clockwork_rnn_fwd, (p.requires_grad_(), w.requires_grad_(), h0, alpha, *args[4:]))
    h, u = OPS.clockwork_rnn_fwd(*args)
    torch.library.opcheck(OPS.clockwork_rnn_bwd, (torch.randn_like(h), w.detach(), h.detach(), u, h0, alpha,
                                                  *args[4:]))


@CUDA
def test_cuda_beyond_the_module_limit_takes_the_decomposition(monkeypatch):
    calls = _calls_fused(monkeypatch)
    n = cw_ops.CUDA_MAX_MODULES + 1
    p, w, h0, _ = (t.float().cuda() if t is not None else None for t in _case(31, 4, 2, [1] * n))
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=list(range(1, n + 1)), module_sizes=[1] * n, backend="cuda")
    assert calls == [False]
    torch.testing.assert_close(h, reference.clockwork_rnn(p, w, h0, list(range(1, n + 1)), [1] * n),
                               rtol=1e-4, atol=1e-5)
