"""FlopCounterMode counts the custom ops (mts_kernels/ops/_flops.py)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import mts_kernels

T, B, I, H = 7, 3, 5, 16


def _count(fn):
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops(), {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}


def _train_step(m, x, hx=None):
    out, h_n = m(x, hx)
    (out.sum() + h_n.sum()).backward()


@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_leaky_rnn_matches_nn_rnn(with_hx, bidirectional):
    torch.manual_seed(0)
    rnn = torch.nn.RNN(I, H, num_layers=2, bidirectional=bidirectional)
    ours = mts_kernels.LeakyRNN.from_torch(rnn)
    x = torch.randn(T, B, I, requires_grad=True)
    D = 2 if bidirectional else 1
    hx = torch.randn(2 * D, B, H, requires_grad=True) if with_hx else None
    theirs_total, theirs = _count(lambda: _train_step(rnn, x, hx))
    ours_total, counts = _count(lambda: _train_step(ours, x, hx))
    # torch's CPU RNN decomposes into one addmm per step (input projection and
    # recurrence together) and mm's in the backward
    assert set(theirs) == {"aten.addmm", "aten.mm"}, theirs
    assert counts["mts_kernels.leaky_rnn_fwd"] > 0 and counts["mts_kernels.leaky_rnn_bwd"] > 0
    # the recurrence's products are nn.RNN's addmm/mm products, one for one: without
    # hx nn.RNN's first step multiplies its zero state too (forward and dW_hh) but
    # skips dh0, where ours skips the zero state in dW_hh and computes dh0
    assert ours_total == theirs_total, (counts, theirs)
    # the recurrent part alone: nn.RNN's total less its projection GEMMs
    proj = sum(2 * T * B * i * H * D for i in (I, D * H))
    proj_bwd = proj + 2 * T * B * D * H * H * D  # dW_ih both layers, dx into layer 2 (x needs grad too)
    proj_bwd += 2 * T * B * I * H * D
    assert counts["mts_kernels.leaky_rnn_fwd"] + counts["mts_kernels.leaky_rnn_bwd"] == \
        theirs_total - proj - proj_bwd


def _analytic(T, B, I, H, layers, D, skip, has_h0, dilation=1):
    step = 2 * B * H * H
    total = 0
    for layer in range(layers):
        i = I if layer == 0 else D * H
        proj = 2 * T * B * i * H
        mats = 1 + (skip is not None)
        rec_fwd = step * T * mats
        gram = sum(T if has_h0 else max(T - d, 0) for d in [dilation] + ([skip] if skip else []))
        rec_bwd = step * T * mats + step * gram
        # the projection: forward, and dx (not for the first layer's x without grad) + dW_ih
        proj_bwd = (2 if layer > 0 else 1) * proj
        total += D * (proj + rec_fwd + rec_bwd + proj_bwd)
    return total


@pytest.mark.parametrize("skip,dilation,with_hx,lengths", [
    (None, 1, False, None), (2, 1, False, None), (3, 2, True, None), (2, 3, False, [7, 2, 0]),
])
def test_leaky_rnn_analytic(skip, dilation, with_hx, lengths):
    torch.manual_seed(0)
    m = mts_kernels.LeakyRNN(I, H, num_layers=2, leak="learned", skip=skip, dilation=dilation,
                             bidirectional=True)
    x = torch.randn(T, B, I)  # no gradient into x: its projection's dx is not run
    hx = torch.randn(4, B, H) if with_hx else None

    def step():
        out, h_n = m(x, hx, lengths=lengths) if lengths is not None else m(x, hx)
        (out.sum() + h_n.sum()).backward()

    total, counts = _count(step)
    # FLOPs of the formulas (lengths do not change them: shapes only), plus torch's
    # projection GEMMs; with lengths the modules' own bookkeeping adds no matmul
    assert total == _analytic(T, B, I, H, 2, 2, skip, with_hx, dilation), counts


def test_fwd_and_bwd_formulas_directly():
    p = torch.randn(T, B, H)
    w = torch.randn(H, H)
    ws = torch.randn(H, H)
    h0 = torch.randn(B, H)
    _, fwd = _count(lambda: torch.ops.mts_kernels.leaky_rnn_fwd(p, w, h0, None, ws, 2, 1, "tanh", False))
    assert fwd == {"mts_kernels.leaky_rnn_fwd": 2 * 2 * T * B * H * H}
    h, u = torch.ops.mts_kernels.leaky_rnn_fwd(p, w, None, None, None, 0, 3, "tanh", False)
    _, bwd = _count(lambda: torch.ops.mts_kernels.leaky_rnn_bwd(p, w, h, u, None, None, None, 0, 3,
                                                                "tanh", False))
    assert bwd == {"mts_kernels.leaky_rnn_bwd": 2 * B * H * H * (T + T - 3)}


def test_triton_ops_have_formulas():
    from torch.utils.flop_counter import flop_registry

    for name in ("leaky_rnn_fwd", "leaky_rnn_bwd", "linear_scan_fwd", "linear_scan_bwd",
                 "leaky_integrate_fwd", "leaky_integrate_bwd"):
        assert getattr(torch.ops.mts_kernels, name) in flop_registry
        assert getattr(torch.ops.mts_kernels, f"{name}_triton") in flop_registry


@pytest.mark.parametrize("op", ["linear_scan", "leaky_integrate"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_scans(op, per_channel):
    D = 11
    decay = torch.rand(D if per_channel else (B, T, D), requires_grad=True)
    x = torch.randn(B, T, D, requires_grad=True)
    f = getattr(mts_kernels, op)
    _, counts = _count(lambda: (f(decay, x) if op == "linear_scan" else f(x, decay)).sum().backward())
    assert counts == {f"mts_kernels.{op}_fwd": 2 * B * T * D, f"mts_kernels.{op}_bwd": 4 * B * T * D}


CLOCKWORK_PERIODS, CLOCKWORK_SIZES = [1, 2, 4], [4, 6, 6]


def _clockwork_counts(monkeypatch, path):
    """FLOP counts per op of a ClockworkRNN training step on one clockwork_rnn path."""
    monkeypatch.setenv("MTS_KERNELS_CLOCKWORK_PATH", path)
    torch.manual_seed(0)
    m = mts_kernels.ClockworkRNN(I, H, periods=CLOCKWORK_PERIODS, module_sizes=CLOCKWORK_SIZES)
    x = torch.randn(T, B, I)
    return _count(lambda: _train_step(m, x))[1]


def test_clockwork_fused_counts_its_active_blocks(monkeypatch):
    periods, sizes = CLOCKWORK_PERIODS, CLOCKWORK_SIZES
    counts = _clockwork_counts(monkeypatch, "fused")
    # module i: its active steps ceil(T / T_i) (t0 = 0) times the columns j >= i
    fwd = sum(2 * B * k * sum(sizes[i:]) * -(-T // P) for i, (k, P) in enumerate(zip(sizes, periods)))
    assert counts["mts_kernels.clockwork_rnn_fwd"] == fwd
    assert counts["mts_kernels.clockwork_rnn_bwd"] == 2 * fwd


def test_clockwork_counts_its_recurrences(monkeypatch):
    periods, sizes = CLOCKWORK_PERIODS, CLOCKWORK_SIZES
    counts = _clockwork_counts(monkeypatch, "decomposed")
    # one k_i x k_i recurrence per module over its ceil(T / T_i) active steps
    # (clockwork_rnn always passes each module's h0, zeros without hx, so the
    # weight-gradient GEMM covers every active step)
    n = [-(-T // P) for P in periods]
    assert counts["mts_kernels.leaky_rnn_fwd"] == sum(2 * ni * B * k * k for ni, k in zip(n, sizes))
    assert counts["mts_kernels.leaky_rnn_bwd"] == sum(2 * B * k * k * 2 * ni
                                                      for ni, k in zip(n, sizes))
