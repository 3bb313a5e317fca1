"""mts_kernels::input_projection / input_projection_grads (csrc/projection/,
mts_kernels/ops/input_projection.py): the recurrent layers' input projection over
the valid steps of a batch, against F.linear with the padded steps masked."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mts_kernels
from _rnn_util import ran_op
from mts_kernels import _extension
from mts_kernels.ops import clockwork_projection as clocked
from mts_kernels.ops import input_projection as projection

pytestmark = pytest.mark.skipif(not _extension.COMPILED, reason="needs the compiled extension")
OPS = torch.ops.mts_kernels
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float64: dict(atol=1e-12, rtol=1e-12)}


def _mask(T, lengths, dtype):
    if lengths is None:
        return None
    return (torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :]).to(dtype)[..., None]


def _ref(x, w, b1, b2, lengths):
    out = F.linear(x, w, b1)
    if b2 is not None:
        out = out + b2
    m = _mask(x.size(0), lengths, x.dtype)
    return out if m is None else out * m


def _lengths(T, B, kind, gen):
    if kind == "none":
        return None
    if kind == "edges":  # 0, 1, T and random
        L = torch.randint(0, T + 1, (B,), generator=gen)
        L[: min(B, 3)] = torch.tensor([0, 1, T])[: min(B, 3)]
        return L
    if kind == "all_T":
        return torch.full((B,), T)
    return torch.randint(T // 2, T + 1, (B,), generator=gen)  # a common part and a tail


def _x(T, B, K, dtype, layout, gen):
    if layout == "contiguous":
        return torch.randn(T, B, K, dtype=dtype, generator=gen)
    if layout == "batch_first":  # the transposed view of a batch-first input
        return torch.randn(B, T, K, dtype=dtype, generator=gen).transpose(0, 1)
    return torch.randn(T, B, 2 * K, dtype=dtype, generator=gen)[..., ::2]  # inner stride 2


SHAPES = [(1, 1, 1, 1), (12, 1, 2, 3), (7, 5, 3, 4), (33, 3, 17, 9), (600, 4, 5, 3), (64, 9, 40, 70), (300, 2, 16, 12), (50, 3, 12, 300)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "batch_first", "strided"])
@pytest.mark.parametrize("kind", ["none", "edges", "tail", "all_T"])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_grads_ops(shape, kind, layout, dtype):
    T, B, K, N = shape
    # a seed fixed per case (str hashes change between processes)
    gen = torch.Generator().manual_seed(SHAPES.index(shape) * 100 + len(kind) * 10 + len(layout))
    x = _x(T, B, K, dtype, layout, gen)
    w = torch.randn(N, K, dtype=dtype, generator=gen)
    b1, b2 = torch.randn(N, dtype=dtype, generator=gen), torch.randn(N, dtype=dtype, generator=gen)
    L = _lengths(T, B, kind, gen)
    for biases in [(b1, b2), (b1, None), (None, None)]:
        out = OPS.input_projection(x, w, *biases, L)
        torch.testing.assert_close(out, _ref(x, w, *biases, L), **TOL[dtype])
        assert out.is_contiguous() and out.shape == (T, B, N)
    if L is not None:  # exactly zero at the padded steps
        assert (out * (1 - _mask(T, L, dtype))).abs().max() == 0
    # the transposed weight (the backward's dx) and a strided grad
    g = _x(T, B, N, dtype, layout, gen)
    torch.testing.assert_close(OPS.input_projection(g, w.t(), None, None, L), _ref(g, w.t(), None, None, L),
                               **TOL[dtype])
    m = _mask(T, L, dtype)
    gm = g if m is None else g * m
    for with_bias in (True, False):
        dw, db = OPS.input_projection_grads(g, x, L, with_bias)
        torch.testing.assert_close(dw, gm.reshape(-1, N).t() @ x.reshape(-1, K), **TOL[dtype])
        if with_bias:
            torch.testing.assert_close(db, gm.sum((0, 1)), **TOL[dtype])
        else:
            assert db.numel() == 0


@pytest.mark.parametrize("kind", ["none", "edges", "tail"])
def test_autograd_matches_masked_linear(kind):
    gen = torch.Generator().manual_seed(1)
    T, B, K, N = 40, 6, 7, 5
    L = _lengths(T, B, kind, gen)
    leaves = [_x(T, B, K, torch.float64, "batch_first", gen), torch.randn(N, K, dtype=torch.float64, generator=gen),
              torch.randn(N, dtype=torch.float64, generator=gen), torch.randn(N, dtype=torch.float64, generator=gen)]
    leaves = [t.detach().requires_grad_() for t in leaves]
    g = torch.randn(T, B, N, dtype=torch.float64, generator=gen)  # nonzero at padded steps: ignored
    ours = torch.autograd.grad(OPS.input_projection(*leaves, L), leaves, g)
    theirs = torch.autograd.grad(_ref(*leaves, L), leaves, g)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
    assert ours[2].data_ptr() != ours[3].data_ptr()  # the two biases' gradients never alias


@pytest.mark.parametrize("kind", ["none", "edges"])
def test_gradcheck_and_gradgradcheck(kind):
    gen = torch.Generator().manual_seed(2)
    T, B, K, N = 6, 4, 3, 5
    L = _lengths(T, B, kind, gen)
    args = [torch.randn(T, B, K, dtype=torch.float64, generator=gen), torch.randn(N, K, dtype=torch.float64, generator=gen),
            torch.randn(N, dtype=torch.float64, generator=gen), torch.randn(N, dtype=torch.float64, generator=gen)]
    args = [a.requires_grad_() for a in args]

    def f(*a):
        return OPS.input_projection(*a, L)

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    g = torch.randn(T, B, N, dtype=torch.float64, generator=gen, requires_grad=True)

    def grads(g, x):
        return OPS.input_projection_grads(g, x, L, True)

    assert torch.autograd.gradcheck(grads, (g, args[0]))
    assert torch.autograd.gradgradcheck(grads, (g, args[0]))


@pytest.mark.parametrize("kind", ["none", "edges"])
def test_opcheck(kind):
    gen = torch.Generator().manual_seed(3)
    T, B, K, N = 5, 3, 4, 6
    L = _lengths(T, B, kind, gen)
    x = torch.randn(T, B, K, requires_grad=True)
    w = torch.randn(N, K, requires_grad=True)
    b = torch.randn(N, requires_grad=True)
    torch.library.opcheck(OPS.input_projection, (x, w, b, None, L))
    torch.library.opcheck(OPS.input_projection_grads, (torch.randn(T, B, N), x.detach(), L, True))


def test_bitwise_on_any_thread_count():
    gen = torch.Generator().manual_seed(4)
    T, B, K, N = 700, 16, 96, 80
    L = _lengths(T, B, "tail", gen)
    x, g = torch.randn(T, B, K, generator=gen), torch.randn(T, B, N, generator=gen)
    w, b = torch.randn(N, K, generator=gen), torch.randn(N, generator=gen)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((OPS.input_projection(x, w, b, None, L), *OPS.input_projection_grads(g, x, L, True)))
    finally:
        torch.set_num_threads(threads)
    for r in results[1:]:
        for a, b_ in zip(results[0], r):
            assert torch.equal(a, b_)


@pytest.mark.parametrize("args,match", [
    (lambda x, w, b, L: (x[0], w, b, None, L), "x must be 3-D"),
    (lambda x, w, b, L: (x.bfloat16(), w.bfloat16(), None, None, L), "float32 or float64"),
    (lambda x, w, b, L: (x, w[:, :2], b, None, L), "weight must be 2-D"),
    (lambda x, w, b, L: (x, w.double(), b, None, L), "weight must be"),
    (lambda x, w, b, L: (x, w, b[:2], None, L), "bias_ih must have shape"),
    (lambda x, w, b, L: (x, w, None, b[:1], L), "bias_hh must have shape"),
    (lambda x, w, b, L: (x, w, b, None, L + 10), "lengths must be in"),
    (lambda x, w, b, L: (x, w, b, None, L[:2]), "lengths must be a 1-D tensor of B"),
    (lambda x, w, b, L: (x, w, b, None, L.int()), "lengths must be int64"),
])
def test_bad_input(args, match):
    x, w, b, L = torch.randn(5, 3, 4), torch.randn(6, 4), torch.randn(6), torch.tensor([5, 2, 0])
    with pytest.raises(RuntimeError, match=match):
        OPS.input_projection(*args(x, w, b, L))


def test_bad_grads_input():
    x, L = torch.randn(5, 3, 4), torch.tensor([5, 2, 0])
    with pytest.raises(RuntimeError, match="grad must be 3-D"):
        OPS.input_projection_grads(torch.randn(5, 2, 6), x, L, True)
    with pytest.raises(RuntimeError, match="grad must be"):
        OPS.input_projection_grads(torch.randn(5, 3, 6).double(), x, L, True)


def test_flop_formulas():
    T, B, K, N = 7, 3, 5, 4
    x, w, g = torch.randn(T, B, K), torch.randn(N, K), torch.randn(T, B, N)
    with FlopCounterMode(display=False) as fc:
        OPS.input_projection(x, w, None, None, torch.tensor([7, 1, 0]))
        OPS.input_projection_grads(g, x, None, True)
    counts = {str(k): v for k, v in fc.get_flop_counts()["Global"].items()}
    assert counts == {"mts_kernels.input_projection": 2 * T * B * K * N,
                      "mts_kernels.input_projection_grads": 2 * T * B * K * N}


@pytest.mark.parametrize("module", ["leaky", "clockwork"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_modules_take_it_with_lengths(module, batch_first):
    """The modules project the valid steps only when given lengths, with the same
    results and gradients as the F.linear path."""
    torch.manual_seed(5)
    I, H, T, B = 6, 8, 9, 4
    if module == "leaky":
        m = mts_kernels.LeakyRNN(I, H, num_layers=2, bidirectional=True, batch_first=batch_first)
    else:
        m = mts_kernels.ClockworkRNN(I, H, periods=[1, 2], num_layers=2, bidirectional=True,
                                     batch_first=batch_first)
    m = m.double()
    x = torch.randn(B, T, I, dtype=torch.float64) if batch_first else torch.randn(T, B, I, dtype=torch.float64)
    L = torch.tensor([9, 4, 0, 7])

    def run():
        out, h_n = m(x, lengths=L)
        grads = torch.autograd.grad(out.sum() + h_n.sum(), list(m.parameters()))
        return out, h_n, grads

    assert ran_op(run, "input_projection")  # (ClockworkRNN's modules are too narrow for the clocked one)
    ours = run()
    with torch.autograd.forward_ad.dual_level():  # a transform is active: the F.linear path
        assert not projection.fused_applies(x, torch.randn(H, I, dtype=x.dtype), L)
    saved = projection._HAVE_OP, clocked._HAVE_OP
    projection._HAVE_OP = clocked._HAVE_OP = False
    try:
        assert not ran_op(run, "clockwork_projection") and not ran_op(run, "input_projection")
        theirs = run()
    finally:
        projection._HAVE_OP, clocked._HAVE_OP = saved
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours[1], theirs[1], atol=1e-12, rtol=1e-12)
    for a, b in zip(ours[2], theirs[2]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_not_under_autocast_or_for_low_precision():
    x, w, L = torch.randn(3, 2, 4), torch.randn(5, 4), torch.tensor([3, 1])
    assert projection.fused_applies(x, w, L) and projection.fused_applies(x, w, None)
    assert not projection.fused_applies(x.bfloat16(), w.bfloat16(), L)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not projection.fused_applies(x, w, L)


@pytest.mark.parametrize("module", ["leaky", "clockwork"])
def test_compiled_training_step_with_lengths_matches_eager(module, monkeypatch):
    """No two parameters' gradients share storage, and a compiled step equals eager
    (ClockworkRNN: on the clocked projection, both directions, t0 != 0)."""
    monkeypatch.setattr(clocked, "MIN_MODULE_WIDTH", 1)  # (the cost rule's dense one, else)
    monkeypatch.setattr(clocked, "MAX_ACTIVE_FRACTION", 1.0)
    torch.manual_seed(6)
    if module == "leaky":
        m, kw = mts_kernels.LeakyRNN(5, 7), {}
    else:
        m, kw = mts_kernels.ClockworkRNN(5, 7, periods=[1, 2], bidirectional=True), dict(t0=1)
    x, L = torch.randn(8, 3, 5), torch.tensor([8, 3, 5])

    def step(model):
        model.zero_grad()
        out, h_n = model(x, lengths=L, **kw)
        (out.square().sum() + h_n.sum()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        return [p.grad.clone() for p in model.parameters()]

    eager = step(m)
    ptrs = [p.grad.data_ptr() for p in m.parameters()]
    assert len(set(ptrs)) == len(ptrs)
    compiled = step(torch.compile(m, fullgraph=True))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
