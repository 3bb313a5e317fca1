"""mts_kernels::clockwork_projection / _dx / _grads (csrc/projection/,
mts_kernels/ops/clockwork_projection.py): a clockwork layer's input projection
at its modules' active steps only, against F.linear times the clock's mask, and
ClockworkRNN on it against the dense projection."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mts_kernels
from _rnn_util import ran_op
from mts_kernels import _extension
from mts_kernels.ops import clockwork_projection as clocked
from mts_kernels.ops import input_projection as dense

pytestmark = pytest.mark.skipif(not _extension.COMPILED, reason="needs the compiled extension")
OPS = torch.ops.mts_kernels
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _mask(T, B, sizes, periods, t0, lengths, dtype):
    """M[t, b, i]: unit i's module active at t ((t0 + t) % T_m == 0) and t < L_b."""
    t = torch.arange(T)
    on = torch.stack([(t0 + t) % P == 0 for P in periods], 1)  # (T, g)
    on = on.repeat_interleave(torch.tensor(sizes), 1)[:, None, :].expand(T, B, sum(sizes))
    if lengths is not None:
        on = on & (t[:, None] < torch.as_tensor(lengths)[None, :])[..., None]
    return on.to(dtype)


def _ref(x, w, b1, b2, mask):
    out = F.linear(x, w, b1)
    if b2 is not None:
        out = out + b2
    return out * mask


def _lengths(T, B, kind, gen):
    if kind == "none":
        return None
    L = torch.randint(T // 2, T + 1, (B,), generator=gen)
    if kind == "edges":  # 0, 1 and T among random lengths
        L = torch.randint(0, T + 1, (B,), generator=gen)
        L[: min(B, 3)] = torch.tensor([0, 1, T])[: min(B, 3)]
    return L


def _x(T, B, K, dtype, layout, gen):
    if layout == "contiguous":
        return torch.randn(T, B, K, dtype=dtype, generator=gen)
    if layout == "batch_first":  # the transposed view of a batch-first input
        return torch.randn(B, T, K, dtype=dtype, generator=gen).transpose(0, 1)
    return torch.randn(T, B, 2 * K, dtype=dtype, generator=gen)[..., ::2]  # inner stride 2


# (T, B, K, module_sizes, periods, t0): one module; powers of two; no period-1
# module; periods beyond T; a long batch whose chunks hold one step each
CASES = [(1, 1, 1, [1], [1], 0), (9, 3, 4, [2, 3, 1], [1, 2, 4], 0), (23, 5, 3, [4, 2], [2, 3], 1),
         (17, 2, 6, [3, 3, 2], [1, 5, 40], 7), (70, 600, 5, [5, 4], [1, 3], 2),
         (300, 7, 9, [8, 8, 8, 8], [1, 2, 4, 8], 5)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "batch_first", "strided"])
@pytest.mark.parametrize("kind", ["none", "edges", "tail"])
@pytest.mark.parametrize("case", CASES)
def test_ops_against_masked_linear(case, kind, layout, dtype):
    T, B, K, sizes, periods, t0 = case
    N = sum(sizes)
    # a seed fixed per case (str hashes change between processes)
    gen = torch.Generator().manual_seed(CASES.index(case) * 100 + len(kind) * 10 + len(layout))
    x = _x(T, B, K, dtype, layout, gen)
    w = torch.randn(N, K, dtype=dtype, generator=gen)
    b1, b2 = torch.randn(N, dtype=dtype, generator=gen), torch.randn(N, dtype=dtype, generator=gen)
    L = _lengths(T, B, kind, gen)
    M = _mask(T, B, sizes, periods, t0, L, dtype)
    clock = clocked.clock_args(T, periods, sizes, t0)
    for biases in [(b1, b2), (b1, None), (None, None)]:
        out = OPS.clockwork_projection(x, w, *biases, *clock, L)
        assert out.is_contiguous() and out.shape == (T, B, N)
        torch.testing.assert_close(out, _ref(x, w, *biases, M), **TOL[dtype])
    assert (out * (1 - M)).abs().max() == 0  # exactly zero where no module is active
    # a transposed weight, and a gradient that is nonzero everywhere (only M * g counts)
    torch.testing.assert_close(OPS.clockwork_projection(x, w.t().contiguous().t(), b1, None, *clock, L),
                               _ref(x, w, b1, None, M), **TOL[dtype])
    g = _x(T, B, N, dtype, layout, gen)
    gm = g * M
    torch.testing.assert_close(OPS.clockwork_projection_dx(g, w, *clock, L), gm @ w, **TOL[dtype])
    torch.testing.assert_close(OPS.clockwork_projection_dx(g, w.t().contiguous().t(), *clock, L), gm @ w,
                               **TOL[dtype])
    # sums over up to T * B rows: float32 against float64 sums, the tolerance
    # growing with the square root of the row count
    tol = TOL[dtype] if dtype == torch.float64 else dict(atol=2e-5 * (T * B) ** 0.5, rtol=1e-4)
    gm64, x64 = gm.double(), x.double()
    for with_bias in (True, False):
        dw, db = OPS.clockwork_projection_grads(g, x, *clock, L, with_bias)
        torch.testing.assert_close(dw.double(), gm64.reshape(-1, N).t() @ x64.reshape(-1, K), **tol)
        if with_bias:
            torch.testing.assert_close(db.double(), gm64.sum((0, 1)), **tol)
        else:
            assert db.numel() == 0


@pytest.mark.parametrize("kind", ["none", "edges"])
def test_gradcheck_and_gradgradcheck(kind):
    gen = torch.Generator().manual_seed(2)
    T, B, K, sizes, periods, t0 = 7, 4, 3, [2, 2, 1], [1, 2, 3], 1
    N = sum(sizes)
    clock = clocked.clock_args(T, periods, sizes, t0)
    L = _lengths(T, B, kind, gen)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()

    args = [leaf(T, B, K), leaf(N, K), leaf(N), leaf(N)]
    proj = lambda *a: OPS.clockwork_projection(*a, *clock, L)  # noqa: E731
    dx = lambda g, w: OPS.clockwork_projection_dx(g, w, *clock, L)  # noqa: E731
    grads = lambda g, x: OPS.clockwork_projection_grads(g, x, *clock, L, True)  # noqa: E731
    g = leaf(T, B, N)
    for f, a in [(proj, args), (dx, (g, args[1])), (grads, (g, args[0]))]:
        assert torch.autograd.gradcheck(f, a)
        assert torch.autograd.gradgradcheck(f, a)


def test_autograd_matches_masked_linear():
    gen = torch.Generator().manual_seed(1)
    T, B, K, sizes, periods, t0 = 30, 5, 7, [3, 2, 4], [1, 4, 6], 3
    N = sum(sizes)
    L = _lengths(T, B, "edges", gen)
    leaves = [_x(T, B, K, torch.float64, "batch_first", gen), torch.randn(N, K, dtype=torch.float64, generator=gen),
              torch.randn(N, dtype=torch.float64, generator=gen), torch.randn(N, dtype=torch.float64, generator=gen)]
    leaves = [t.detach().requires_grad_() for t in leaves]
    g = torch.randn(T, B, N, dtype=torch.float64, generator=gen)
    ours = torch.autograd.grad(OPS.clockwork_projection(*leaves, *clocked.clock_args(T, periods, sizes, t0), L),
                               leaves, g)
    theirs = torch.autograd.grad(_ref(*leaves, _mask(T, B, sizes, periods, t0, L, torch.float64)), leaves, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert ours[2].data_ptr() != ours[3].data_ptr()  # the two biases' gradients never alias


@pytest.mark.parametrize("kind", ["none", "edges"])
def test_opcheck(kind):
    gen = torch.Generator().manual_seed(3)
    T, B, K, sizes, periods = 6, 3, 4, [3, 2], [1, 2]
    clock = clocked.clock_args(T, periods, sizes, 1)
    L = _lengths(T, B, kind, gen)
    x = torch.randn(T, B, K, requires_grad=True)
    w = torch.randn(5, K, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    g = torch.randn(T, B, 5, requires_grad=True)
    torch.library.opcheck(OPS.clockwork_projection, (x, w, b, None, *clock, L))
    torch.library.opcheck(OPS.clockwork_projection_dx, (g, w, *clock, L))
    torch.library.opcheck(OPS.clockwork_projection_grads, (g, x, *clock, L, True))


def test_bitwise_on_any_thread_count():
    gen = torch.Generator().manual_seed(4)
    T, B, K, sizes, periods = 700, 16, 40, [32, 16, 16, 8], [1, 2, 4, 16]
    N = sum(sizes)
    clock = clocked.clock_args(T, periods, sizes, 3)
    L = _lengths(T, B, "tail", gen)
    x, g = torch.randn(T, B, K, generator=gen), torch.randn(T, B, N, generator=gen)
    w, b = torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((OPS.clockwork_projection(x, w, b, None, *clock, L),
                            OPS.clockwork_projection_dx(g, w, *clock, L),
                            *OPS.clockwork_projection_grads(g, x, *clock, L, True)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        for a, b_ in zip(results[0], r):
            assert torch.equal(a, b_)


CLOCK = ([4, 2], [1, 2], [0, 0])


@pytest.mark.parametrize("args,match", [
    (lambda x, w, b, L: (x[0], w, b, None, *CLOCK, L), "x must be 3-D"),
    (lambda x, w, b, L: (x.bfloat16(), w.bfloat16(), None, None, *CLOCK, L), "float32 or float64"),
    (lambda x, w, b, L: (x, w[:, :2], b, None, *CLOCK, L), "weight must be 2-D"),
    (lambda x, w, b, L: (x, w.double(), b, None, *CLOCK, L), "weight must be"),
    (lambda x, w, b, L: (x, w, b[:2], None, *CLOCK, L), "bias_ih must have shape"),
    (lambda x, w, b, L: (x, w, None, b[:1], *CLOCK, L), "bias_hh must have shape"),
    (lambda x, w, b, L: (x, w, b, None, [4, 1], [1, 2], [0, 0], L), "module_sizes must sum to hidden_size"),
    (lambda x, w, b, L: (x, w, b, None, [4, 2], [1, 0], [0, 0], L), "periods must be >= 1"),
    (lambda x, w, b, L: (x, w, b, None, [4, 2], [1, 2], [0], L), "must have the same length"),
    (lambda x, w, b, L: (x, w, b, None, *CLOCK, L + 10), "lengths must be in"),
    (lambda x, w, b, L: (x, w, b, None, *CLOCK, L[:2]), "lengths must be a 1-D tensor of B"),
])
def test_bad_input(args, match):
    x, w, b, L = torch.randn(5, 3, 4), torch.randn(6, 4), torch.randn(6), torch.tensor([5, 2, 0])
    with pytest.raises(RuntimeError, match=match):
        OPS.clockwork_projection(*args(x, w, b, L))


def test_bad_gradient_inputs():
    x, w, L = torch.randn(5, 3, 4), torch.randn(6, 4), torch.tensor([5, 2, 0])
    with pytest.raises(RuntimeError, match="grad must be 3-D"):
        OPS.clockwork_projection_grads(torch.randn(5, 2, 6), x, *CLOCK, L, True)
    with pytest.raises(RuntimeError, match="grad must be 3-D .* N = 6"):
        OPS.clockwork_projection_dx(torch.randn(5, 3, 5), w, *CLOCK, L)
    with pytest.raises(RuntimeError, match="grad must be"):
        OPS.clockwork_projection_dx(torch.randn(5, 3, 6).double(), w, *CLOCK, L)


def test_flop_formulas():
    T, B, K, sizes, periods = 8, 3, 5, [4, 2], [1, 3]
    clock = clocked.clock_args(T, periods, sizes, 1)  # module 1 active at t = 2, 5
    x, w, g = torch.randn(T, B, K), torch.randn(6, K), torch.randn(T, B, 6)
    with FlopCounterMode(display=False) as fc:
        OPS.clockwork_projection(x, w, None, None, *clock, None)
        OPS.clockwork_projection_dx(g, w, *clock, None)
        OPS.clockwork_projection_grads(g, x, *clock, None, True)
    rows = 4 * B * T + 2 * B * 2
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts == {f"mts_kernels.clockwork_projection{s}": 2 * K * rows for s in ("", "_dx", "_grads")}


def _grads_of(m, x, t0, L):
    out, h_n = m(x, t0=t0, lengths=L)
    w = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out, h_n, *torch.autograd.grad((out * w).sum() + h_n.square().sum(), [x, *m.parameters()]))


@pytest.mark.parametrize("batch_first,bidirectional,layers,t0,kind",
                         list(itertools.product([False, True], [False, True], [1, 2], [0, 3], ["none", "edges"])))
def test_clockwork_rnn_on_it_matches_dense_projection(batch_first, bidirectional, layers, t0, kind,
                                                     monkeypatch):
    """ClockworkRNN with the clocked projection against the same module on the
    dense one (F.linear): outputs, h_n and every gradient, float64."""
    # the cost rule would take the dense one for modules this small
    monkeypatch.setattr(clocked, "MIN_MODULE_WIDTH", 1)
    monkeypatch.setattr(clocked, "MAX_ACTIVE_FRACTION", 1.0)
    torch.manual_seed(7)
    I, H, T, B = 5, 13, 23, 4
    m = mts_kernels.ClockworkRNN(I, H, layers, batch_first=batch_first, bidirectional=bidirectional,
                                 periods=[1, 3, 4], module_sizes=[6, 4, 3], leak="learned", dtype=torch.float64)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64, requires_grad=True)
    L = torch.tensor([23, 0, 7, 1]) if kind == "edges" else None
    assert ran_op(lambda: _grads_of(m, x, t0, L), "clockwork_projection")
    ours = _grads_of(m, x, t0, L)
    saved = clocked._HAVE_OP, dense._HAVE_OP
    clocked._HAVE_OP = dense._HAVE_OP = False
    try:
        assert not ran_op(lambda: _grads_of(m, x, t0, L), "clockwork_projection")
        theirs = _grads_of(m, x, t0, L)
    finally:
        clocked._HAVE_OP, dense._HAVE_OP = saved
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_dense_projection_where_it_does_not_apply():
    x, w = torch.randn(16, 2, 4), torch.randn(64, 4)
    clock = ([1, 8], [32, 32])
    assert clocked.fused_applies(x, w, None, 0, *clock)
    assert not clocked.fused_applies(x, w, None, torch.tensor(2), *clock)  # a tensor t0 (export's input)
    assert not clocked.fused_applies(x.bfloat16(), w.bfloat16(), None, 0, *clock)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not clocked.fused_applies(x, w, None, 0, *clock)


@pytest.mark.parametrize("periods,sizes,T,expected", [
    ([2 ** i for i in range(8)], [64] * 8, 1024, True),  # the large benchmark: 1/4 of the entries
    ([1, 2, 4, 8], [16] * 4, 4096, False),  # the small one: 16-wide modules
    ([1, 2, 4, 8], [32] * 4, 1024, True),
    ([1, 1], [32, 32], 100, False),  # every entry read
    ([1, 2], [32, 32], 100, False),  # 3/4 of the entries read
    ([1, 8], [32, 32], 100, True),
    ([1, 64], [32, 32], 1, False),  # one step: every module active
])
def test_cost_rule(periods, sizes, T, expected):
    assert clocked.worth_it(periods, sizes, T) is expected


def test_modules_follow_the_cost_rule():
    x = torch.randn(6, 2, 3)
    for sizes, name in [([32, 32], "clockwork_projection"), ([8, 8], "input_projection")]:
        m = mts_kernels.ClockworkRNN(3, sum(sizes), periods=[1, 8], module_sizes=sizes)
        assert ran_op(lambda: m(x)[0].sum().backward(), name)
