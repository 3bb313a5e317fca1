"""The chunked CUDA scan's combine, checked on the CPU.

The chunked kernels (csrc/scan/scan_cuda_kernels.cuh) compose per-segment
affine maps h -> A h + X, where A is the product of a chunk's decays (or of
several chunks' in the look-back). For |a| > ~1.45 A overflows although the
state does not, and with a zero carry A * 0 + X was inf * 0 = NaN where the
sequential kernel is finite. The composition lives in csrc/scan/scan_combine.h;
torch.ops.mts_kernels._scan_chunked_emulate_{fwd,bwd} run it on the host in the
kernels' order (chunk and segment sizes, control-warp tile map, look-back depth,
data-warp replay). These tests compare that emulation with the sequential CPU
kernel, which uses the same per-step math (scan_math.h) in time order.
"""

import pytest
import torch

import mts_kernels  # noqa: F401  (loads the ops)

ops = torch.ops.mts_kernels
FWD_CHUNK, BWD_CHUNK = 15 * 16, 15 * 8  # scan_combine.h: kDataWarps * kFwdSteps / kBwdSteps
LOOKBACKS = [0, 1, 3, -1]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _uniform(g, shape, lo, hi):
    return torch.rand(shape, generator=g) * (hi - lo) + lo


def _signed(g, shape, lo, hi):
    """|a| uniform in [lo, hi], random sign."""
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return _uniform(g, shape, lo, hi) * sign


def _seq_fwd(a, x, h0, leaky):
    """The sequential CPU kernel on (T, C) operands, batch of one."""
    h0b = None if h0 is None else h0[None]
    if leaky:
        return ops.leaky_integrate_fwd(x[None], a[None], h0b, False)[0]
    return ops.linear_scan_fwd(a[None], x[None], h0b, False)[0]


def _seq_bwd(g, a):
    """(delta, dh0) of the sequential CPU backward: for the linear scan dx = delta."""
    h = torch.zeros_like(a)  # h only feeds da, which is not compared
    _, dx, dh0 = ops.linear_scan_bwd(g[None], a[None], h[None], None, False)
    return dx[0], dh0[0]


def _bf16(t):
    return t.to(torch.bfloat16).float()


def _fwd_scale(a, x, h0, leaky):
    """m_k = |a_k| m_{k-1} + |input_k| in float64, m_{-1} = |h0|: the size of
    the terms summed into h_k, which bounds its rounding error in any order
    (non-finite inputs count as 0: the results they reach are not compared)."""
    a, x = a.double().nan_to_num(0, 0, 0), x.double().nan_to_num(0, 0, 0)
    u = ((1 - a) * x).abs() if leaky else x.abs()
    m = torch.zeros(a.shape[1], dtype=torch.float64) if h0 is None else h0.double().abs()
    out = torch.empty_like(a)
    for k in range(a.shape[0]):
        m = a[k].abs() * m + u[k]
        out[k] = m
    return out


def _bwd_scale(g, a):
    """The backward's m: delta_k's terms |g_k| + m^c_k, m^c_{k-1} = |a_k| (|g_k| + m^c_k);
    returns (delta scale (T, C), dh0 scale (C,))."""
    a, g = a.double().nan_to_num(0, 0, 0).abs(), g.double().nan_to_num(0, 0, 0).abs()
    c = torch.zeros(a.shape[1], dtype=torch.float64)
    out = torch.empty_like(a)
    for k in range(a.shape[0] - 1, -1, -1):
        out[k] = g[k] + c
        c = a[k] * out[k]
    return out, c


def assert_same_as_sequential(emu, seq, scale, *, strict_inf=True):
    """NaN exactly where the sequential result is NaN, finite exactly where it
    is finite, and +-inf where it is +-inf (strict_inf), or else inf or NaN
    there (see scan_combine.h for when composition turns the sequential order's
    inf into NaN). Finite values agree within 2e-4 of their terms' size
    (`scale`): about T float32 roundings of every term."""
    assert emu.shape == seq.shape
    nan_e, nan_s = emu.isnan(), seq.isnan()
    fin_e, fin_s = emu.isfinite(), seq.isfinite()
    bad = fin_e != fin_s
    assert not bad.any(), (f"finite mask differs at {bad.nonzero()[:5].tolist()}: "
                           f"emu {emu[bad][:5]} seq {seq[bad][:5]}")
    missing = nan_s & ~nan_e
    assert not missing.any(), f"sequential NaN not reproduced at {missing.nonzero()[:5].tolist()}"
    if strict_inf:
        extra = nan_e & ~nan_s
        assert not extra.any(), f"NaN where the sequential result is inf at {extra.nonzero()[:5].tolist()}"
        inf_s = seq.isinf()
        assert torch.equal(emu[inf_s], seq[inf_s]), "inf signs differ"
    err = (emu[fin_s].double() - seq[fin_s].double()).abs()
    tol = 2e-4 * scale[fin_s] + 1e-30
    worst = (err / tol).max() if err.numel() else 0
    assert worst <= 1, f"error {worst:.3g}x the tolerance"


def _check_fwd(a, x, h0, leaky, lookback, **kw):
    seq = _seq_fwd(a, x, h0, leaky)
    emu = ops._scan_chunked_emulate_fwd(a, x, h0, leaky, lookback)
    assert_same_as_sequential(emu, seq, _fwd_scale(a, x, h0, leaky), **kw)
    return emu, seq


def _check_bwd(g, a, lookback, **kw):
    delta_s, dh0_s = _seq_bwd(g, a)
    delta_e, dh0_e = ops._scan_chunked_emulate_bwd(g, a, lookback)
    sd, s0 = _bwd_scale(g, a)
    assert_same_as_sequential(delta_e, delta_s, sd, **kw)
    assert_same_as_sequential(dh0_e, dh0_s, s0, **kw)
    return delta_s


def _overflows(a, chunk):
    """Whether the product of |a| over some chunk of `chunk` steps overflows
    float32: the case that made A * 0 + X NaN."""
    T = a.shape[0] // chunk * chunk
    prods = a[:T].abs().reshape(-1, chunk, a.shape[1]).double().prod(1)
    return bool((prods > torch.finfo(torch.float32).max).any())


def _zero_carry_case(seed, T, C, lo, hi, *, reverse_time=False):
    """Decays with |a| in [lo, hi] (A of one chunk overflows), inputs zero except
    short bursts that a reset (a = 0) ends before the state overflows: the
    sequential result is finite everywhere, and every chunk after the first
    enters with a zero carry or a small one."""
    g = _gen(seed)
    a = _signed(g, (T, C), lo, hi)
    x = torch.zeros(T, C)
    for start in range(100, T - 60, 300):
        x[start:start + 30] = torch.randn(30, C, generator=g)
        a[start + 40] = 0.0  # reset: h = x = 0 from here
    if reverse_time:
        a, x = a.flip(0), x.flip(0)
    return a, x


@pytest.mark.parametrize("lookback", LOOKBACKS)
@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("round_bf16", [False, True])
def test_fwd_zero_carry_with_overflowing_decay_product(lookback, leaky, round_bf16):
    a, x = _zero_carry_case(0, 1000, 6, 1.5, 2.0)
    if round_bf16:
        a, x = _bf16(a), _bf16(x)
    assert _overflows(a, FWD_CHUNK)
    emu, seq = _check_fwd(a, x, None, leaky, lookback)
    assert seq.isfinite().all()
    # A zero initial state given explicitly is the same zero carry.
    assert torch.equal(ops._scan_chunked_emulate_fwd(a, x, torch.zeros(6), leaky, lookback), emu)


@pytest.mark.parametrize("lookback", LOOKBACKS)
@pytest.mark.parametrize("round_bf16", [False, True])
def test_bwd_zero_carry_with_overflowing_decay_product(lookback, round_bf16):
    # Backward runs from the last step: the bursts near the end come first.
    # Its chunks are half as long: |a| >= 2 makes one chunk's A overflow.
    a, g = _zero_carry_case(1, 1000, 6, 2.0, 2.4, reverse_time=True)
    if round_bf16:
        a, g = _bf16(a), _bf16(g)
    assert _overflows(a, BWD_CHUNK)
    assert _check_bwd(g, a, lookback).isfinite().all()


@pytest.mark.parametrize("T", [37, FWD_CHUNK, 1000])
@pytest.mark.parametrize("lookback", LOOKBACKS)
@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("round_bf16", [False, True])
def test_fwd_nonzero_carries_match_sequential(T, lookback, leaky, round_bf16):
    """|a| up to 2 (mostly contracting, with growing runs), random inputs and
    h0: every carry nonzero; ragged last chunks."""
    g = _gen(2)
    C = 5
    a = _uniform(g, (T, C), -2.0, 2.0)
    x = torch.randn(T, C, generator=g)
    h0 = torch.randn(C, generator=g)
    if round_bf16:
        a, x, h0 = _bf16(a), _bf16(x), _bf16(h0)
    _check_fwd(a, x, h0, leaky, lookback)


@pytest.mark.parametrize("T", [37, BWD_CHUNK + 1, 1000])
@pytest.mark.parametrize("lookback", LOOKBACKS)
def test_bwd_nonzero_carries_match_sequential(T, lookback):
    g = _gen(3)
    _check_bwd(torch.randn(T, 5, generator=g), _uniform(g, (T, 5), -2.0, 2.0), lookback)


@pytest.mark.parametrize("lookback", LOOKBACKS)
def test_fwd_growing_state_overflows_like_sequential(lookback):
    """|h0| >= 1 and |a| in [1.5, 2]: the state itself overflows to +-inf (same
    sign, same step as sequentially), and a reset after that gives NaN (0 * inf)
    in both orders."""
    g = _gen(4)
    T, C = 1000, 6
    a = _signed(g, (T, C), 1.5, 2.0)
    a[700] = 0.0
    h0 = _signed(g, (C,), 1.0, 3.0)
    _, seq = _check_fwd(a, torch.zeros(T, C), h0, False, lookback)
    assert seq.isinf().any() and seq.isnan().any()


def _with_nonfinite(a, x, steps):
    """Channel 0: x NaN; 1: a NaN; 2: x +inf; 3: x -inf; 4: a +inf, at steps[c]."""
    a, x = a.clone(), x.clone()
    x[steps[0], 0] = float("nan")
    a[steps[1], 1] = float("nan")
    x[steps[2], 2] = float("inf")
    x[steps[3], 3] = float("-inf")
    a[steps[4], 4] = float("inf")
    return a, x


# Decays near 1 keep every product of decays in range, so an infinite state
# stays inf, sign included, as sequentially; an infinite decay (channel 4)
# makes both terms of A c + X infinite, of either sign (NaN where the
# sequential state is inf), and so does |a| up to 2, whose products underflow
# (inf * 0). Those are compared with strict_inf=False.
STRICT = [0, 1, 2, 3, 5]


@pytest.mark.parametrize("lookback", LOOKBACKS)
@pytest.mark.parametrize("leaky", [False, True])
def test_fwd_nan_and_inf_inputs(lookback, leaky):
    g = _gen(5)
    T, C = 1000, 6
    steps = [3, 250, 480, 700, 990]
    a, x = _with_nonfinite(_signed(g, (T, C), 0.9, 1.1), torch.randn(T, C, generator=g), steps)
    for h0 in (None, torch.randn(C, generator=g)):
        h0s = None if h0 is None else h0[STRICT]
        _, seq = _check_fwd(a[:, STRICT], x[:, STRICT], h0s, leaky, lookback)
        assert seq[steps[0]:, 0].isnan().all() and seq[steps[1]:, 1].isnan().all()
        assert seq[steps[2]:, 2].isinf().all() and seq[steps[3]:, 3].isinf().all()
        _check_fwd(a, x, h0, leaky, lookback, strict_inf=False)
    a, x = _with_nonfinite(_uniform(g, (T, C), -2.0, 2.0), torch.randn(T, C, generator=g), steps)
    _check_fwd(a, x, None, leaky, lookback, strict_inf=False)


@pytest.mark.parametrize("lookback", LOOKBACKS)
def test_bwd_nan_and_inf_inputs(lookback):
    g = _gen(6)
    T, C = 1000, 6
    steps = [996, 750, 520, 300, 10]
    a, grad = _with_nonfinite(_signed(g, (T, C), 0.9, 1.1), torch.randn(T, C, generator=g), steps)
    delta = _check_bwd(grad[:, STRICT], a[:, STRICT], lookback)
    assert delta[:steps[0] + 1, 0].isnan().all() and delta[:steps[2] + 1, 2].isinf().all()
    _check_bwd(grad, a, lookback, strict_inf=False)


def test_emulation_bad_input():
    a = torch.rand(10, 3)
    with pytest.raises(RuntimeError, match="x must be a 2-D"):
        ops._scan_chunked_emulate_fwd(a, torch.rand(10, 3, 1), None, False, 0)
    with pytest.raises(RuntimeError, match="a has shape"):
        ops._scan_chunked_emulate_fwd(a, torch.rand(11, 3), None, False, 0)
    with pytest.raises(RuntimeError, match="h0 must be"):
        ops._scan_chunked_emulate_fwd(a, a, torch.zeros(4), False, 0)
    with pytest.raises(RuntimeError, match="lookback"):
        ops._scan_chunked_emulate_bwd(a, a, -2)
    with pytest.raises(RuntimeError, match="grad_h must be"):
        ops._scan_chunked_emulate_bwd(a.double(), a, 0)
