"""The Triton fused clockwork loop (mts_kernels/triton/clockwork_rnn.py) against the
reference loop and the C++ op: forward, every gradient, clock phases, lengths,
gradcheck, opcheck, the path choice and bad input.

On a CPU-only machine the kernels run in the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py), which has no bfloat16 math, so the
float16/bfloat16 checks are CUDA-only.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.autograd import gradcheck

import mts_kernels
from mts_kernels import reference
from _rnn_util import clockwork_case, grads_wrt, record_clockwork_path
from mts_kernels.ops import _backend

cw_ops = importlib.import_module("mts_kernels.ops.clockwork_rnn")

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _backend.triton_available(), reason="needs triton"),
    pytest.mark.skipif(not torch.cuda.is_available() and not _backend.triton_interpreted(),
                       reason="Triton on CPU tensors needs TRITON_INTERPRET=1"),
]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F64 = torch.float64
OPS = torch.ops.mts_kernels


def _case(seed, T, B, sizes, dtype=F64, leak=False, with_h0=True):
    return clockwork_case(seed, T, B, sizes, dtype, leak, with_h0, device=DEV)


_grads = grads_wrt


def _calls_fused(monkeypatch):
    return record_clockwork_path(monkeypatch, cw_ops)


CASES = [
    # sizes, periods, t0, nonlinearity, leak, lengths
    ([3, 2, 2], [1, 3, 5], 4, "tanh", False, None),
    ([5, 1, 6], [2, 3, 7], 0, "relu", True, [9, 0, 6, 9]),
    ([2, 3, 1, 4], [1, 2, 4, 8], 2 ** 62 - 3, "tanh", True, [2, 7, 5, 1]),
    ([3, 5], [5, 40], 3 ** 41, "relu", False, [0, 9, 0, 4]),  # t0 beyond int64, a period beyond T
]


@pytest.mark.parametrize("sizes,periods,t0,nl,leak,lengths", CASES)
def test_matches_reference_forward_and_every_gradient(monkeypatch, sizes, periods, t0, nl, leak,
                                                      lengths):
    T, B = 9, 4
    p, w, h0, alpha = _case(1, T, B, sizes, leak=leak)
    ins = [t.requires_grad_() if t is not None else None for t in (p, w, h0, alpha)]
    kw = dict(alpha=alpha, nonlinearity=nl, t0=t0, lengths=lengths)
    calls = _calls_fused(monkeypatch)
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, backend="triton", **kw)
    assert calls == [True], "the Triton call did not take the fused op"
    h_ref = reference.clockwork_rnn(p, w, h0, periods, sizes, **kw)
    torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(h)
    got, want = _grads(h, ins, g), _grads(h_ref, ins, g)
    for name, a, b in zip(["p", "weight_hh", "h0", "alpha"], got, want):
        assert b.abs().max() > 0, name  # the gradient checked is not trivially 0
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.skipif(not cw_ops.FUSED_COMPILED, reason="needs the compiled C++ op")
def test_matches_cpu_op_float32_two_programs():
    # B = 18: two programs of 16 rows, the second partly empty; H = 17 -> BLOCK_H = 32
    sizes, periods, firsts = [6, 4, 7], [1, 3, 4], [0, 2, 1]
    p, w, h0, alpha = _case(2, 10, 18, sizes, dtype=torch.float32, leak=True)
    lens = torch.tensor([10, 3, 0, 7] + [10] * 14, device=DEV)
    args = (p, w, h0, alpha, sizes, periods, firsts, "tanh", lens)
    h, u = OPS.clockwork_rnn_fwd_triton(*args)
    cpu = [t.cpu() if isinstance(t, torch.Tensor) else t for t in args]
    h_c, u_c = OPS.clockwork_rnn_fwd(*cpu)
    torch.testing.assert_close(h.cpu(), h_c, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(u.cpu(), u_c, rtol=2e-5, atol=2e-6)
    g = torch.randn_like(h)
    got = OPS.clockwork_rnn_bwd_triton(g, w, h, u, h0, alpha, sizes, periods, firsts, "tanh", lens)
    want = OPS.clockwork_rnn_bwd(g.cpu(), w.cpu(), h_c, u_c, h0.cpu(), alpha.cpu(), sizes, periods,
                                 firsts, "tanh", lens.cpu())
    for name, a, b in zip(["dp", "dweight_hh", "dh0", "dalpha"], got, want):
        assert a.dtype == torch.float32 and a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b, rtol=2e-4, atol=2e-5, msg=lambda m: f"{name}: {m}")
    pad = (torch.arange(10, device=DEV)[:, None] >= lens[None, :])[..., None]
    assert not h.masked_select(pad).any() and not got[0].masked_select(pad).any()


def test_lower_blocks_never_read_and_inactive_modules_hold():
    sizes, periods = [2, 3], [1, 4]
    p, w, h0, _ = _case(3, 10, 3, sizes)
    p.requires_grad_()
    w2 = w.clone()
    w2[2:, :2] = float("nan")  # module 1's row block over module 0: never read
    h = mts_kernels.clockwork_rnn(p, w2, h0, periods=periods, module_sizes=sizes, t0=3, backend="triton")
    assert torch.isfinite(h).all()
    slow = h[:, :, 2:]  # period 4 with t0 = 3: active at steps 1, 5, 9 only
    torch.testing.assert_close(slow[0], h0[:, 2:], rtol=0, atol=0)
    torch.testing.assert_close(slow[1:5], slow[1:2].expand(4, -1, -1), rtol=0, atol=0)
    dp, = torch.autograd.grad(h.sum(), p)
    inactive = [t for t in range(10) if t not in (1, 5, 9)]
    assert (dp[inactive, :, 2:] == 0).all() and (dp[[1, 5, 9], :, 2:] != 0).all()
    w.requires_grad_()
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, backend="triton")
    dw, = torch.autograd.grad(h.square().sum(), w)
    assert (dw[2:, :2] == 0).all() and (dw[:2, :] != 0).all() and (dw[2:, 2:] != 0).all()


@pytest.mark.parametrize("leak", [False, True])
def test_gradcheck_float64(leak):
    sizes, periods = [2, 1, 2], [1, 2, 3]
    p, w, h0, alpha = _case(4, 6, 2, sizes, leak=leak)
    ins = tuple(t.requires_grad_() for t in (p, w, h0) + ((alpha,) if leak else ()))

    def f(p, w, h0, alpha=None):
        return mts_kernels.clockwork_rnn(p, w, h0, periods=periods, module_sizes=sizes, alpha=alpha,
                                         t0=1, lengths=[6, 4], backend="triton")

    assert gradcheck(f, ins)


def test_second_order_through_the_fused_op():
    p, w, h0, alpha = _case(5, 6, 2, [2, 2], leak=True)
    w.requires_grad_()
    kw = dict(periods=[1, 2], module_sizes=[2, 2], alpha=alpha, lengths=[4, 6])

    def hvp(fn):
        g, = torch.autograd.grad(fn(p, w, h0, **kw).tanh().sum(), w, create_graph=True)
        return torch.autograd.grad(g.pow(2).sum(), w, create_graph=True)[0]

    hv = hvp(lambda *a, **k: mts_kernels.clockwork_rnn(*a, backend="triton", **k))
    torch.testing.assert_close(hv, hvp(lambda p, w, h0, periods, module_sizes, **k: reference.clockwork_rnn(
        p, w, h0, periods, module_sizes, **k)))
    with pytest.raises(RuntimeError, match="clockwork_rnn: a third-order gradient"):
        torch.autograd.grad(hv.sum(), w)


def test_path_choice(monkeypatch):
    calls = _calls_fused(monkeypatch)
    # beyond the register-resident limit: the decomposition, each module on the
    # Triton leaky_rnn kernel
    sizes = [cw_ops.TRITON_MAX_HIDDEN, 3]
    p, w, h0, _ = _case(6, 3, 1, sizes, dtype=torch.float32)
    h = mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2], module_sizes=sizes, backend="triton")
    assert calls == [False]
    torch.testing.assert_close(h, reference.clockwork_rnn(p, w, h0, [1, 2], sizes), rtol=1e-4, atol=1e-5)
    calls.clear()
    monkeypatch.setenv(cw_ops.PATH_ENV_VAR, "decomposed")
    p, w, h0, _ = _case(6, 3, 1, [2, 2], dtype=torch.float32)
    mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2], module_sizes=[2, 2], backend="triton")
    assert calls == [False]


@pytest.mark.parametrize("leak", [False, True])
def test_opcheck(leak):
    p, w, h0, alpha = _case(7, 5, 3, [2, 3], leak=leak)
    lens = torch.tensor([5, 0, 2], device=DEV)
    args = (p, w, h0, alpha, [2, 3], [1, 3], [0, 2], "tanh", lens)
    torch.library.opcheck(OPS.clockwork_rnn_fwd_triton, (p.requires_grad_(), w.requires_grad_(), *args[2:]))
    h, u = OPS.clockwork_rnn_fwd_triton(*args)
    bwd_args = (torch.randn_like(h), w.detach(), h.detach(), u, h0, alpha, *args[4:])
    torch.library.opcheck(OPS.clockwork_rnn_bwd_triton, bwd_args)


def test_flop_count_is_the_schedule():
    from torch.utils.flop_counter import FlopCounterMode

    from mts_kernels.ops import _flops
    p, w, h0, _ = _case(8, 8, 2, [2, 3])
    args = (p, w, h0, None, [2, 3], [1, 3], [0, 1], "tanh", None)
    with FlopCounterMode(display=False) as counter:
        OPS.clockwork_rnn_fwd_triton(*args)
    want = _flops.clockwork_rnn_fwd_flop(p.shape, w.shape, h0.shape, None, [2, 3], [1, 3], [0, 1])
    assert counter.get_total_flops() == want > 0


def test_bad_input():
    from mts_kernels.triton import clockwork_rnn as tcw
    p, w, h0, _ = _case(9, 4, 2, [2, 2])
    with pytest.raises(ValueError, match="module_sizes must be >= 1 and sum to hidden_size 4"):
        tcw.clockwork_rnn_fwd(p, w, h0, None, [2, 3], [1, 2], [0, 0], "tanh")
    with pytest.raises(ValueError, match="periods must be >= 1"):
        tcw.clockwork_rnn_fwd(p, w, h0, None, [2, 2], [1, 0], [0, 0], "tanh")
    with pytest.raises(ValueError, match="same"):
        tcw.clockwork_rnn_fwd(p, w, h0, None, [2, 2], [1], [0, 0], "tanh")
    with pytest.raises(ValueError, match="weight_hh must have shape"):
        tcw.clockwork_rnn_fwd(p, w[:, :3], h0, None, [2, 2], [1, 2], [0, 0], "tanh")
    with pytest.raises(ValueError, match="h0 must be"):
        tcw.clockwork_rnn_fwd(p, w, h0.float(), None, [2, 2], [1, 2], [0, 0], "tanh")
    with pytest.raises(ValueError, match="lengths must be a 1-D tensor of B = 2"):
        tcw.clockwork_rnn_fwd(p, w, h0, None, [2, 2], [1, 2], [0, 0], "tanh", torch.tensor([1], device=DEV))
    big = torch.zeros(2, 1, tcw.MAX_HIDDEN + 1, device=DEV)
    with pytest.raises(ValueError, match="exceeds the limit"):
        tcw.clockwork_rnn_fwd(big, big.new_zeros(big.size(2), big.size(2)), None, None,
                              [big.size(2)], [1], [0], "tanh")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_low_precision_within_twice_pytorch_error(dtype):
    # the fused op's error against the float64 reference is at most twice that of
    # the reference loop run in the same dtype (plus one ulp of the magnitude)
    sizes, periods = [4, 4, 4], [1, 2, 5]
    p64, w64, h064, a64 = _case(10, 33, 3, sizes, leak=True)
    g64 = torch.randn(33, 3, 12, generator=torch.Generator().manual_seed(8), dtype=F64).to(DEV)
    kw = dict(t0=3, lengths=[33, 20, 1])

    def run(fn, dt):
        ins = [t.to(dt).requires_grad_() for t in (p64, w64, h064, a64)]
        h = fn(*ins[:3], periods, sizes, alpha=ins[3], **kw)
        return [t.detach().double() for t in (h, *torch.autograd.grad(h, ins, g64.to(dt)))]

    ours_fn = lambda p, w, h0, per, siz, **k: mts_kernels.clockwork_rnn(p, w, h0, periods=per, module_sizes=siz,
                                                                        backend="triton", **k)
    exact, lowp, ours = (run(reference.clockwork_rnn, F64), run(reference.clockwork_rnn, dtype),
                         run(ours_fn, dtype))
    eps = torch.finfo(dtype).eps
    for name, a, b, c in zip(["h", "dp", "dW", "dh0", "dalpha"], ours, exact, lowp):
        err, err_torch = (a - b).abs().max().item(), (c - b).abs().max().item()
        assert err <= 2 * err_torch + eps * b.abs().max().item(), f"{name}: {err:.3g} vs {err_torch:.3g}"
