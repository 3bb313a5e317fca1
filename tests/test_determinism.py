"""Bitwise determinism on the CPU: repeated calls and any thread count give
identical outputs and gradients (torch.equal), for every op.

What holds (README, Determinism): the scan kernels and leaky_rnn's time loop
fix every summation order by the shape (the scans' per-channel decay gradient is
summed per batch row, then over rows; dalpha per step, then over steps), so they
do not depend on the thread count. So do the GEMMs the RNN kernels run through
torch's BLAS, which by itself would not: threaded MKL splits the reduction
between threads (from K = 1024 in general, K = 256 for a single row) and moves
the edges between its micro-kernels with the output split (measured: leaky_rnn's
per-step product at B = 64, H = 200, K = 200 differed between 1 and 2 threads).
csrc/blas_blocked.h cuts those GEMMs into blocks (per-step products) and
reduction chunks (weight gradients) fixed by the shape and runs each as one
sequential BLAS call inside torch's parallel_for; test_blas_sizes checks the
per-step product above the register-tiled size (B*H*H > 2**17, K = H up to 1100)
and weight gradients with K = T*B >= 1024 (several chunks).
"""

import pytest
import torch

import mts_kernels

THREADS = (1, 2, 3)  # 3 oversubscribes the 2-core CI machine


def _grads(fn, inputs, seed=1):
    xs = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
    out = fn(*xs)
    out = out[0] if isinstance(out, tuple) else out
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    out.backward(g)  # not (out * g).sum(): a full reduction's split depends on threads
    return [out.detach()] + [x.grad for x in xs if x.requires_grad]


def assert_same_on_threads(results, threads=THREADS, repeats=1, what="result"):
    """results() (a list of tensors) bitwise the same on every call at every thread
    count in threads."""
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads[0])
        base = results()
        assert all(b is not None for b in base)
        for nt in threads:
            torch.set_num_threads(nt)
            for _ in range(repeats):
                for i, (a, b) in enumerate(zip(base, results())):
                    assert torch.equal(a, b), (
                        f"{what} {i} differs with {nt} threads from {threads[0]}: "
                        f"max |diff| {(a - b).abs().max().item()}")
    finally:
        torch.set_num_threads(old)


def assert_deterministic(fn, inputs, threads=THREADS, repeats=2):
    assert_same_on_threads(lambda: _grads(fn, inputs), threads, repeats,
                           what="result (0: output, then the inputs' gradients)")


def _r(*shape, dtype=torch.float32, positive=False):
    t = torch.rand(*shape, dtype=dtype) if positive else torch.randn(*shape, dtype=dtype)
    return t.requires_grad_()


torch.manual_seed(0)
_LENGTHS = [37, 0, 64, 5, 64, 12]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("op", ["linear_scan", "leaky_integrate"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_scans(op, per_channel, reverse, dtype):
    # D = 700: several channel blocks, whose width depends on the thread count
    B, T, D = 6, 64, 700
    decay = _r(D, positive=True, dtype=dtype) if per_channel else _r(B, T, D, positive=True, dtype=dtype)
    f = getattr(mts_kernels, op)
    for lengths in (None, _LENGTHS):
        assert_deterministic(
            lambda d, x, h0: f(d, x, h0, reverse=reverse, lengths=lengths) if op == "linear_scan"
            else f(x, d, h0, reverse=reverse, lengths=lengths),
            [decay, _r(B, T, D, dtype=dtype), _r(B, D, dtype=dtype)])


def test_scan_many_channels_per_channel_decay():
    # B * D large: the backward's per-row decay-gradient sums run on every thread
    assert_deterministic(lambda a, v, h0: mts_kernels.leaky_integrate(v, a, h0),
                         [_r(2048, positive=True), _r(32, 40, 2048), _r(32, 2048)], repeats=1)


def _rnn_case(T, B, H, leak, skip, dilation, reverse, lengths, nonlinearity="tanh"):
    g = torch.Generator().manual_seed(T * 1000 + B * 10 + H)
    inputs = [torch.randn(T, B, H, generator=g).requires_grad_(),
              (torch.randn(H, H, generator=g) / H ** 0.5).requires_grad_(),
              torch.randn(B, H, generator=g).requires_grad_()]
    if leak:
        inputs.append(torch.rand(H, generator=g).requires_grad_())
    if skip:
        inputs.append((torch.randn(H, H, generator=g) / H ** 0.5).requires_grad_())

    def fn(p, w, h0, *rest):
        rest = list(rest)
        alpha = rest.pop(0) if leak else None
        ws = rest.pop(0) if skip else None
        return mts_kernels.leaky_rnn(p, w, h0, alpha=alpha, weight_skip=ws, skip=skip,
                                     dilation=dilation, reverse=reverse, lengths=lengths,
                                     nonlinearity=nonlinearity)
    return fn, inputs


# register-tiled loop (B*H*H <= 2**17) with T*B < 256, so the weight-gradient
# GEMMs stay below MKL's thread split too
@pytest.mark.parametrize("leak,skip,dilation,reverse,lengths,nonlinearity", [
    (False, None, 1, False, None, "tanh"),
    (True, 2, 1, False, None, "tanh"),
    (True, None, 3, True, None, "relu"),
    (True, 3, 2, True, [12, 0, 7, 12, 1, 9], "tanh"),
    (False, 2, 1, False, [3, 12, 12, 0, 8, 5], "relu"),
])
def test_leaky_rnn_register_tiled(leak, skip, dilation, reverse, lengths, nonlinearity):
    T, B, H = 12, 6, 40
    assert B * H * H <= 2 ** 17
    assert_deterministic(*_rnn_case(T, B, H, leak, skip, dilation, reverse, lengths, nonlinearity))


@pytest.mark.parametrize("B", [4, 9])  # the loop's row groups: 2 of 2 rows; 4 of 2 or 3
def test_clockwork_small(B):
    T, H = 16, 24
    w = (torch.randn(H, H) / H ** 0.5).requires_grad_()
    for lengths, t0 in ((None, 0), ([16, 3, 0, 11, 7, 16, 1, 9, 4][:B], 5)):
        assert_deterministic(
            lambda p, w, h0, a: mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2, 4, 8],
                                                          module_sizes=[6, 6, 6, 6], alpha=a,
                                                          t0=t0, lengths=lengths),
            [_r(T, B, H), w, _r(B, H), _r(H, positive=True)])


def test_modules_small():
    torch.manual_seed(0)
    rnn = mts_kernels.LeakyRNN(5, 16, num_layers=2, leak="learned", skip=2, bidirectional=True)
    cw = mts_kernels.ClockworkRNN(5, 16, periods=[1, 2, 4, 8], leak="learned")
    # its input projection once ran on F.linear, whose GEMM differed with the threads here
    deep = mts_kernels.DeepTransitionRNN(17, 65, 3)
    small = torch.randn(9, 3, 5)
    for m, x in ((rnn, small), (cw, small), (deep, torch.randn(7, 1, 17))):
        def results(m=m, x=x):
            m.zero_grad()
            xx = x.clone().requires_grad_()
            out = m(xx)[0]
            out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(2)))
            return [out.detach(), xx.grad] + [p.grad.clone() for p in m.parameters()]

        assert_same_on_threads(results)


# Sizes past the register-tiled threshold (B*H*H > 2**17: the BLAS per-step
# product, K = H up to 1100) and weight gradients with K = T*B >= 1024.
def _blas_cases():
    L = lambda B, T, seed: torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(seed))
    yield "leaky_rnn B64 H256", _rnn_case(20, 64, 256, True, 2, 1, False, None)
    yield "leaky_rnn B64 H200 ragged", _rnn_case(20, 64, 200, True, 3, 2, True, L(64, 20, 1))
    yield "leaky_rnn B1 H600", _rnn_case(6, 1, 600, True, 2, 1, False, None)
    yield "leaky_rnn B70 H1100", _rnn_case(3, 70, 1100, False, None, 1, False, None)
    # weight gradients with K = T*B = 10240: 8 reduction chunks of 1280, each past
    # the K at which MKL on AVX-512 splits a call's reduction by its thread count
    yield "leaky_rnn B80 H64 long gram", _rnn_case(128, 80, 64, True, 2, 1, False, None)
    for T, B, H in ((40, 64, 64), (24, 16, 512)):
        yield f"clockwork_rnn B{B} H{H}", (
            lambda p, w, h0, a, k=H // 4: mts_kernels.clockwork_rnn(p, w, h0, periods=[1, 2, 4, 8],
                                                                    module_sizes=[k] * 4, alpha=a),
            [_r(T, B, H), (torch.randn(H, H) / H ** 0.5).requires_grad_(), _r(B, H),
             _r(H, positive=True)])
    for T, B, H, depth, lengths in ((20, 64, 128, 2, None), (12, 40, 256, 3, L(40, 12, 2))):
        yield f"deep_transition_rnn B{B} H{H} L{depth}", (
            lambda p, w, h0, b, u, a, lengths=lengths: mts_kernels.deep_transition_rnn(
                p, w, h0, bias_hh=b, weight_shortcut=u, alpha=a, lengths=lengths),
            [_r(T, B, H), (torch.randn(depth, H, H) / H ** 0.5).requires_grad_(), _r(B, H),
             _r(depth, H), (torch.randn(H, H) / H ** 0.5).requires_grad_(), _r(H, positive=True)])


@pytest.mark.parametrize("product", ["blas", "tiled"])
@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
def test_leaky_rnn_row_groups(monkeypatch, product, ragged):
    """leaky_rnn's row groups at BLAS-sized steps (B=48: three groups, more than
    the threads of a 2-core machine), with either product
    (MTS_KERNELS_GROUP_PRODUCT): the same bits on 1, 2 and 3 threads."""
    monkeypatch.setenv("MTS_KERNELS_GROUP_PRODUCT", product)
    T, B, H = 14, 48, 96
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(3)) if ragged else None
    fn, inputs = _rnn_case(T, B, H, True, 2, 3, True, lengths)
    assert_deterministic(fn, inputs, threads=THREADS, repeats=1)


@pytest.mark.parametrize("product", ["blas", "tiled"])
@pytest.mark.parametrize("B,H", [(40, 96), (8, 40)], ids=["blas_groups", "tiled_groups"])
def test_leaky_rnn_tangent_row_groups(monkeypatch, product, B, H):
    """leaky_rnn_tangent (forward mode and the second order of leaky_rnn) on the
    same row groups, its adjoint through its registered gradient: the same bits on
    1, 2 and 3 threads."""
    monkeypatch.setenv("MTS_KERNELS_GROUP_PRODUCT", product)
    T = 10
    lengths = torch.randint(0, T + 1, (B,), generator=torch.Generator().manual_seed(4))
    inputs = [_r(T, B, H), _r(T, B, H, positive=True), (torch.randn(H, H) / H ** 0.5).requires_grad_(),
              _r(T, B, H, positive=True), (torch.randn(H, H) / H ** 0.5).requires_grad_(), _r(B, H)]
    op = torch.ops.mts_kernels.leaky_rnn_tangent
    assert_deterministic(lambda d, g, w, k, ws, s: op(d, g, w, k, ws, s, 2, 1, False, False, lengths), inputs,
                         repeats=1)


@pytest.mark.parametrize("op", ["leaky_rnn", "clockwork_rnn", "deep_transition_rnn"])
def test_second_order(op):
    """A gradient of a gradient (create_graph=True: gradient penalties, Hessian-vector
    products) is the same on 1, 2 and 3 threads: the second order's GEMMs run on
    the projection ops and the blocked GEMMs (torch's matmul and mm there had
    differed by up to 1e-4 at 3 threads at this size)."""
    T, B, H = 10, 8, 40
    gen = torch.Generator().manual_seed(5)
    inputs = [torch.randn(T, B, H, generator=gen), torch.randn(H, H, generator=gen) / H ** 0.5,
              torch.randn(B, H, generator=gen), torch.rand(H, generator=gen)]
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    if op == "leaky_rnn":
        fn = lambda p, w, h0, a: mts_kernels.leaky_rnn(p, w, h0, alpha=a, lengths=lengths)  # noqa: E731
    elif op == "clockwork_rnn":
        fn = lambda p, w, h0, a: mts_kernels.clockwork_rnn(  # noqa: E731
            p, w, h0, periods=[1, 2, 4, 8], module_sizes=[H // 4] * 4, alpha=a, lengths=lengths)
    else:  # depth 2, a shortcut
        inputs[1] = torch.randn(2, H, H, generator=gen) / H ** 0.5
        inputs.append(torch.randn(H, H, generator=gen) / H ** 0.5)
        fn = lambda p, w, h0, a, u: mts_kernels.deep_transition_rnn(  # noqa: E731
            p, w, h0, weight_shortcut=u, alpha=a, lengths=lengths)

    def second():
        xs = [t.clone().requires_grad_() for t in inputs]
        out = fn(*xs)
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        first = torch.autograd.grad(out, xs, g, create_graph=True)
        vs = [torch.randn(x.shape, generator=torch.Generator().manual_seed(2 + i)) for i, x in enumerate(first)]
        return list(torch.autograd.grad(first, xs, vs))

    assert_same_on_threads(second, what="second-order gradient of input")


@pytest.mark.parametrize("name,case", [pytest.param(n, c, id=n) for n, c in _blas_cases()])
def test_blas_sizes(name, case):
    fn, inputs = case
    T, B, H = inputs[0].shape
    if name.startswith(("leaky_rnn", "deep_transition_rnn")):
        assert B * H * H > 2 ** 17  # the BLAS per-step product
    else:
        assert B * H * (H // 4) > 2 ** 17 or T * B >= 1024
    assert_deterministic(fn, inputs, threads=(1, 2), repeats=1)


_PATHS_SCRIPT = r"""
import sys, torch, mts_kernels
torch.manual_seed(0)
T, B, H, I = 20, 64, 200, 48
p = torch.randn(T, B, H, dtype=torch.float64, requires_grad=True)
w = (torch.randn(H, H, dtype=torch.float64) / H ** 0.5).requires_grad_()
x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
wi = torch.randn(H, I, dtype=torch.float64, requires_grad=True)
L = torch.randint(0, T + 1, (B,))
h = mts_kernels.leaky_rnn(p, w, skip=None, lengths=L)
q = torch.ops.mts_kernels.input_projection(x, wi, None, None, L)
g = torch.randn(T, B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
grads = torch.autograd.grad((h * g).sum() + (q * g).sum(), [p, w, x, wi])
torch.save([h.detach(), q.detach(), *grads], sys.argv[1])
"""


@pytest.mark.parametrize("direct", ["1", "0"])
def test_blas_call_paths_agree(tmp_path, direct):
    """The CPU GEMMs call the BLAS's Fortran gemm directly (csrc/blas_blocked.h) or,
    with MTS_KERNELS_BLAS_DIRECT=0 (and where no such symbol exists), torch's
    addmm_out: both give the same results (to rounding; each is deterministic)."""
    import os
    import subprocess
    import sys
    outs = []
    for flag in ("1", direct):
        path = tmp_path / f"out{flag}.pt"
        env = dict(os.environ, MTS_KERNELS_BLAS_DIRECT=flag)
        r = subprocess.run([sys.executable, "-c", _PATHS_SCRIPT, str(path)], env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(torch.load(path))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)
        if direct == "1":
            assert torch.equal(a, b)  # the same path twice: bitwise
