"""The Triton deep-transition kernels (mts_kernels.triton.deep_transition_rnn)
against a plain PyTorch loop of the recurrence, forward and every gradient.

Small sizes: on a CPU-only machine the kernels run in the Triton interpreter
(TRITON_INTERPRET=1, set by conftest.py), which has no bfloat16 math, so the
float16/bfloat16 checks are CUDA-only.
"""

import pytest
import torch

from mts_kernels.ops import _backend

pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _backend.triton_available(), reason="needs triton"),
    pytest.mark.skipif(not torch.cuda.is_available() and not _backend.triton_interpreted(),
                       reason="Triton on CPU tensors needs TRITON_INTERPRET=1"),
]

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F64 = dict(rtol=1e-10, atol=1e-10)
F32 = dict(rtol=2e-4, atol=2e-5)


def _dt():
    from mts_kernels.triton import deep_transition_rnn as dt
    return dt


# The test's own loop, because it also returns s (the sub-layers' activations,
# which the kernels save); its h is checked against mts_kernels.reference in
# _run_reference, so the two oracles cannot drift apart.
def _loop_reference(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse,
                    lengths=None):
    """(h, s) of the contract's recurrence, one step per Python iteration, so
    that autograd through it gives the backward.  Row b runs its first L_b
    processing steps (reverse: t = L_b-1 .. 0); h and s are 0 at t >= L_b."""
    T, B, H = p.shape
    depth = weight_hh.shape[0]
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    n = lengths.to(p.device) if lengths is not None else torch.full((B,), T, device=p.device)
    rows = torch.arange(B, device=p.device)
    h = h0 if h0 is not None else p.new_zeros(B, H)
    steps_h, steps_s, times = [], [], []
    for k in range(T):
        valid = (k < n)[:, None]
        t = torch.where(k < n, n - 1 - k, k) if reverse else torch.full_like(n, k)
        sl = h
        outs = []
        for l in range(depth):
            z = sl @ weight_hh[l].t()
            if l == 0:
                z = z + p[t, rows]
            if bias_hh is not None:
                z = z + bias_hh[l]
            if weight_shortcut is not None and l == depth - 1:
                z = z + h @ weight_shortcut.t()
            sl = torch.where(valid, phi(z), 0.0)
            outs.append(sl)
        hn = sl if alpha is None else alpha * h + (1 - alpha) * sl
        h = torch.where(valid, hn, 0.0)
        steps_h.append(h)
        steps_s.append(torch.stack(outs))
        times.append(t)
    # processing order -> time order (each time of a row is visited exactly once)
    order = torch.stack(times).argsort(dim=0)  # (T, B): step k that visited time t
    idx = order[:, :, None].expand(T, B, H)
    h_out = torch.stack(steps_h).gather(0, idx)
    s_out = torch.stack(steps_s, 1).gather(1, idx.expand(depth, T, B, H))
    return h_out, s_out


def _inputs(T, B, H, depth, shortcut, leak, has_h0, has_bias, dtype, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=gen, dtype=torch.float64)).to(dtype).to(DEV)

    t = dict(p=rand(T, B, H),
             weight_hh=rand(depth, H, H, scale=0.9 / H ** 0.5),
             h0=rand(B, H) if has_h0 else None,
             bias_hh=rand(depth, H, scale=0.3) if has_bias else None,
             weight_shortcut=rand(H, H, scale=0.6 / H ** 0.5) if shortcut else None,
             alpha=torch.rand(H, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
             if leak else None)
    return gen, t


def _lengths(B, T, gen):
    """0, 1 and T first, then random lengths."""
    fixed = [0, 1, T][:B]
    rest = torch.randint(0, T + 1, (B - len(fixed),), generator=gen).tolist()
    return torch.tensor(fixed + rest, dtype=torch.int64, device=DEV)


def _run_kernels(t, nonlinearity, reverse, lengths, gh):
    dt = _dt()
    h, s = dt.deep_transition_rnn_fwd(t["p"], t["weight_hh"], t["h0"], t["bias_hh"],
                                      t["weight_shortcut"], t["alpha"], nonlinearity, reverse,
                                      lengths)
    grads = dt.deep_transition_rnn_bwd(gh, t["weight_hh"], h, s, t["h0"], t["weight_shortcut"],
                                       t["alpha"], nonlinearity, reverse, lengths)
    return h, s, grads


def _run_reference(t, nonlinearity, reverse, lengths, gh):
    """h, s and the six gradients of sum(h * gh) by autograd through the loop
    (float64); a missing bias / h0 is a zero leaf, whose gradient is what the
    kernels return for it."""
    T, B, H = t["p"].shape
    depth = t["weight_hh"].shape[0]
    leaves = {k: (v.detach().double().clone().requires_grad_() if v is not None else None)
              for k, v in t.items()}
    for k, shape in (("bias_hh", (depth, H)), ("h0", (B, H))):
        if leaves[k] is None:
            leaves[k] = torch.zeros(shape, dtype=torch.float64, device=DEV, requires_grad=True)
    h, s = _loop_reference(leaves["p"], leaves["weight_hh"], leaves["h0"], leaves["bias_hh"],
                           leaves["weight_shortcut"], leaves["alpha"], nonlinearity, reverse,
                           lengths)
    from mts_kernels import reference
    torch.testing.assert_close(h, reference.deep_transition_rnn(
        leaves["p"], leaves["weight_hh"], leaves["h0"], bias_hh=leaves["bias_hh"],
        weight_shortcut=leaves["weight_shortcut"], alpha=leaves["alpha"], nonlinearity=nonlinearity,
        reverse=reverse, lengths=lengths), rtol=1e-12, atol=1e-12)
    names = ["p", "weight_hh", "bias_hh", "h0", "weight_shortcut", "alpha"]
    used = [leaves[k] for k in names if leaves[k] is not None]
    got = iter(torch.autograd.grad((h * gh.double()).sum(), used, allow_unused=True))
    grads = [next(got) if leaves[k] is not None else torch.empty(0, dtype=torch.float64)
             for k in names]
    return h.detach(), s.detach(), [g if g is not None else torch.zeros_like(leaves[k])
                                    for k, g in zip(names, grads)]


GRAD_NAMES = ["dp", "dweight_hh", "dbias_hh", "dh0", "dweight_shortcut", "dalpha"]


def _check_against_reference(T, B, H, depth, shortcut, leak, has_h0, has_bias, nonlinearity,
                             reverse, with_lengths, dtype, tol, seed=5):
    gen, t = _inputs(T, B, H, depth, shortcut, leak, has_h0, has_bias, dtype, seed)
    lengths = _lengths(B, T, gen) if with_lengths else None
    gh = torch.randn(T, B, H, generator=gen, dtype=torch.float64).to(dtype).to(DEV)
    h, s, grads = _run_kernels(t, nonlinearity, reverse, lengths, gh)
    h_ref, s_ref, grads_ref = _run_reference(t, nonlinearity, reverse, lengths, gh)
    ctx = f"depth={depth} shortcut={shortcut} leak={leak} h0={has_h0} bias={has_bias} " \
          f"{nonlinearity} reverse={reverse} lengths={lengths}"
    assert h.dtype == dtype and s.dtype == dtype and h.shape == (T, B, H)
    assert s.shape == (depth, T, B, H)
    torch.testing.assert_close(h.double(), h_ref, **tol, msg=lambda m: f"h, {ctx}: {m}")
    torch.testing.assert_close(s.double(), s_ref, **tol, msg=lambda m: f"s, {ctx}: {m}")
    for name, g, r in zip(GRAD_NAMES, grads, grads_ref):
        assert g.dtype == dtype, name
        assert g.shape == r.shape, (name, g.shape, r.shape)
        torch.testing.assert_close(g.double(), r.to(g.device), **tol,
                                   msg=lambda m, name=name: f"{name}, {ctx}: {m}")
    if lengths is not None:
        pad = (torch.arange(T, device=DEV)[:, None] >= lengths[None, :])[..., None]
        assert not h.masked_select(pad).any() and not s.masked_select(pad[None]).any()
        assert not grads[0].masked_select(pad).any()
    return grads_ref


# depth, shortcut: the shortcut needs depth >= 2
STRUCTURES = [(1, False), (2, False), (2, True), (3, False), (3, True)]


@pytest.mark.parametrize("depth,shortcut", STRUCTURES, ids=lambda v: str(v))
@pytest.mark.parametrize("leak", [False, True], ids=["noleak", "leak"])
@pytest.mark.parametrize("reverse", [False, True], ids=["fwd_time", "rev_time"])
def test_matches_loop_reference_float64(depth, shortcut, leak, reverse):
    # odd sizes: B = 5 rows in one program, H = 5 padded to 16.  Two of the four
    # (h0, bias, nonlinearity, lengths) cases per structure, alternating, keep
    # the interpreter's time down; every case meets every structure and each
    # time direction, and each half has a call with and one without lengths.
    cases = [(True, True, "tanh", True), (False, False, "relu", False), (True, False, "relu", True),
             (False, True, "tanh", False)]
    first = 2 * (reverse ^ leak)
    for has_h0, has_bias, nonlinearity, with_lengths in cases[first:first + 2]:
        grads_ref = _check_against_reference(6, 5, 5, depth, shortcut, leak, has_h0, has_bias,
                                             nonlinearity, reverse, with_lengths, torch.float64,
                                             F64)
        # a test that cannot fail is a defect: the gradients checked are not trivially 0
        for name, g in zip(GRAD_NAMES, grads_ref):
            if g.numel():
                assert g.abs().max() > 0, name


@pytest.mark.parametrize("depth,shortcut", [(1, False), (3, True)], ids=str)
def test_matches_loop_reference_float32(depth, shortcut):
    # B = 18: two programs of 16 rows, the second one partly empty; H = 17 -> BLOCK_H = 32
    for reverse, leak in [(False, True), (True, False)]:
        _check_against_reference(5, 18, 17, depth, shortcut, leak, True, True, "tanh", reverse,
                                 True, torch.float32, F32, seed=3)


def test_streamed_weights(monkeypatch):
    """The path that reloads the weights each sub-step (too many for registers)
    gives what the resident one gives."""
    dt = _dt()
    gen, t = _inputs(5, 3, 7, 3, True, True, True, True, torch.float64, 9)
    lengths = _lengths(3, 5, gen)
    gh = torch.randn(5, 3, 7, generator=gen, dtype=torch.float64).to(DEV)
    for reverse in (False, True):
        resident = _run_kernels(t, "tanh", reverse, lengths, gh)
        monkeypatch.setattr(dt, "RESIDENT_BYTES", 0)
        streamed = _run_kernels(t, "tanh", reverse, lengths, gh)
        monkeypatch.undo()
        torch.testing.assert_close(streamed[0], resident[0], rtol=0, atol=0)
        torch.testing.assert_close(streamed[1], resident[1], rtol=0, atol=0)
        for name, a, b in zip(GRAD_NAMES, streamed[2], resident[2]):
            torch.testing.assert_close(a, b, **F64, msg=lambda m, name=name: f"{name}: {m}")
    ref = _run_reference(t, "tanh", True, lengths, gh)
    torch.testing.assert_close(streamed[0], ref[0], **F64)


def test_strided_inputs():
    """Non-contiguous operands (a batch_first transpose, transposed weight
    storage) give what their contiguous copies give."""
    gen, t = _inputs(5, 3, 6, 2, True, True, True, True, torch.float64, 12)
    lengths = _lengths(3, 5, gen)
    gh = torch.randn(5, 3, 6, generator=gen, dtype=torch.float64).to(DEV)

    def strided(v, time_major=False):
        if time_major:  # (T, B, H) as a view of a (B, T, H) tensor
            return v.transpose(0, 1).contiguous().transpose(0, 1)
        if v.dim() >= 2:  # matrices stored transposed
            return v.transpose(-1, -2).contiguous().transpose(-1, -2)
        return torch.stack([v, v], -1)[..., 0]  # stride 2
    ts = {k: strided(v, k == "p") for k, v in t.items()}
    assert not any(v.is_contiguous() for v in ts.values())
    want = _run_kernels(t, "tanh", True, lengths, gh)
    got = _run_kernels(ts, "tanh", True, lengths, strided(gh, True))
    for a, b in zip(got[:2] + tuple(got[2]), want[:2] + tuple(want[2])):
        torch.testing.assert_close(a, b, **F64)


def test_resident_budget():
    """H = 128 at depth 3 with the shortcut would need 256 KiB of registers:
    streamed; leaky_rnn's largest resident set (two 128 x 128 tiles) stays resident."""
    dt = _dt()
    assert dt._resident(2, 128, torch.float32) and not dt._resident(4, 128, torch.float32)
    assert dt._resident(4, 64, torch.float32) and not dt._resident(2, 128, torch.float64)
    # more warps for more resident tiles (ptxas spills otherwise), one tile as leaky_rnn
    from mts_kernels.triton.leaky_rnn import _config
    assert [dt._launch_config(h, 1) for h in (5, 17, 64, 128)] == \
        [_config(h)[:1] + (max(_config(h)[1], w),) for h, w in ((5, 1), (17, 1), (64, 4), (128, 16))]
    assert dt._launch_config(32, 4) == (32, 4) and dt._launch_config(64, 4) == (64, 8)


def test_depth1_is_leaky_rnn():
    """Depth 1 without a shortcut is leaky_rnn with b_1 folded into p
    (independently written kernels)."""
    from mts_kernels.triton import leaky_rnn as lr
    gen, t = _inputs(6, 4, 9, 1, False, True, True, True, torch.float64, 2)
    lengths = _lengths(4, 6, gen)
    gh = torch.randn(6, 4, 9, generator=gen, dtype=torch.float64).to(DEV)
    h, s, (dp, dw, db, dh0, dws, dalpha) = _run_kernels(t, "tanh", True, lengths, gh)
    p1 = t["p"] + t["bias_hh"][0]
    h_l, u_l = lr.leaky_rnn_fwd(p1, t["weight_hh"][0], t["h0"], t["alpha"], None, 0, 1, "tanh",
                                True, lengths)
    dp_l, dw_l, dh0_l, dalpha_l, _ = lr.leaky_rnn_bwd(gh, t["weight_hh"][0], h_l, u_l, t["h0"],
                                                      t["alpha"], None, 0, 1, "tanh", True, lengths)
    for a, b in [(h, h_l), (s[0], u_l), (dp, dp_l), (dw[0], dw_l), (db[0], dp_l.sum((0, 1))),
                 (dh0, dh0_l), (dalpha, dalpha_l)]:
        torch.testing.assert_close(a, b, **F64)
    assert dws.shape == (0,)


def test_padding_is_ignored():
    """Non-finite inputs and incoming gradients at padded steps change nothing."""
    T, B, H = 6, 4, 6
    gen, t = _inputs(T, B, H, 2, True, True, True, True, torch.float64, 4)
    lengths = _lengths(B, T, gen)
    pad = (torch.arange(T, device=DEV)[:, None] >= lengths[None, :])[..., None]
    gh = torch.randn(T, B, H, generator=gen, dtype=torch.float64).to(DEV)
    for reverse in (False, True):
        clean = _run_kernels(t, "relu", reverse, lengths, gh)
        dirty = _run_kernels(dict(t, p=t["p"].masked_fill(pad, float("nan"))), "relu", reverse,
                             lengths, gh.masked_fill(pad, float("inf")))
        for a, b in zip(clean[:2] + tuple(clean[2]), dirty[:2] + tuple(dirty[2])):
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def _bad_calls():
    p = torch.randn(3, 2, 4, device=DEV)
    w = torch.randn(2, 4, 4, device=DEV)
    ok = dict(p=p, weight_hh=w, h0=None, bias_hh=None, weight_shortcut=None, alpha=None,
              nonlinearity="tanh", reverse=False)
    return ok, [
        (dict(p=p[0]), r"p must be 3-D"),
        (dict(p=p[:0]), r"at least one time step"),
        (dict(p=p.int()), r"p must be floating point"),
        (dict(weight_hh=w[0]), r"weight_hh must have shape \(L, H, H\)"),
        (dict(weight_hh=w[:0]), r"transition depth L >= 1"),
        (dict(weight_hh=torch.randn(2, 4, 3, device=DEV)), r"weight_hh must have shape \(2, 4, 4\)"),
        (dict(weight_hh=w.double()), r"weight_hh must be torch.float32"),
        (dict(h0=torch.randn(3, 4, device=DEV)), r"h0 must have shape \(2, 4\)"),
        (dict(bias_hh=torch.randn(4, device=DEV)), r"bias_hh must have shape \(2, 4\)"),
        (dict(weight_hh=w[:1], weight_shortcut=torch.randn(4, 4, device=DEV)),
         r"weight_shortcut needs a transition depth >= 2"),
        (dict(weight_shortcut=torch.randn(4, 5, device=DEV)), r"weight_shortcut must have shape"),
        (dict(alpha=torch.rand(4, device=DEV).half()), r"alpha must be torch.float32"),
        (dict(nonlinearity="sigmoid"), r"nonlinearity must be 'tanh' or 'relu'"),
        (dict(p=torch.randn(3, 2, 130, device=DEV), weight_hh=torch.randn(2, 130, 130, device=DEV)),
         r"hidden size 130 exceeds the limit 128"),
    ]


def test_bad_input():
    dt = _dt()
    ok, bad = _bad_calls()
    for change, match in bad:
        with pytest.raises(ValueError, match=match):
            dt.deep_transition_rnn_fwd(**dict(ok, **change))
    with pytest.raises(ValueError, match=r"lengths must be a 1-D tensor of B = 2"):
        dt.deep_transition_rnn_fwd(**ok, lengths=torch.tensor([1, 2, 3], device=DEV))
    h, s = dt.deep_transition_rnn_fwd(**ok)
    bwd = dict(grad_h=torch.ones_like(h), weight_hh=ok["weight_hh"], h=h, s=s, h0=None,
               weight_shortcut=None, alpha=None, nonlinearity="tanh", reverse=False)
    with pytest.raises(ValueError, match=r"grad_h must have shape \(3, 2, 4\)"):
        dt.deep_transition_rnn_bwd(**dict(bwd, grad_h=h[:2]))
    with pytest.raises(ValueError, match=r"s must have shape \(2, 3, 2, 4\)"):
        dt.deep_transition_rnn_bwd(**dict(bwd, s=s[:1]))
    with pytest.raises(ValueError, match=r"h must be 3-D"):
        dt.deep_transition_rnn_bwd(**dict(bwd, h=h[0]))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("depth,shortcut", [(1, False), (2, True), (3, True)], ids=str)
def test_low_precision_cuda(dtype, depth, shortcut):
    """float16/bfloat16 inputs: float32 state and accumulation, so the error
    is that of the inputs' and stored outputs' rounding, measured against the
    float32 kernels on the same (rounded) inputs."""
    T, B, H = 20, 19, 48
    gen, t = _inputs(T, B, H, depth, shortcut, True, True, True, dtype, 6)
    lengths = _lengths(B, T, gen)
    gh = torch.randn(T, B, H, generator=gen).to(dtype).to(DEV)
    t32 = {k: (v.float() if v is not None else None) for k, v in t.items()}
    for reverse in (False, True):
        low = _run_kernels(t, "tanh", reverse, lengths, gh)
        full = _run_kernels(t32, "tanh", reverse, lengths, gh.float())
        eps = torch.finfo(dtype).eps
        for name, a, b in zip(["h", "s"] + GRAD_NAMES, low[:2] + tuple(low[2]),
                              full[:2] + tuple(full[2])):
            assert a.dtype == dtype, name
            scale = b.abs().max().clamp_min(1.0).item()
            err = (a.float() - b).abs().max().item()
            assert err <= 16 * eps * scale * (T if name.startswith("d") else 1), (name, err, scale)


@pytest.mark.cuda
@pytest.mark.parametrize("H", [64, 128])
def test_large_hidden_cuda(H):
    """Compiled kernels at the sizes the limit allows (H = 128, depth 3 with
    the shortcut streams its weights), float32 against the float64 loop."""
    _check_against_reference(9, 21, H, 3, True, True, True, True, "tanh", True, True,
                             torch.float32, dict(rtol=1e-3, atol=1e-4), seed=8)


_COMPILE_SCRIPT = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mts_kernels.triton import deep_transition_rnn as dt

def compile_(kernel, consts):
    sig = {n: "constexpr" if n in consts else ("*i64" if n == "len_ptr" else "*fp32")
           if n.endswith("_ptr") else "i32" for n in kernel.arg_names}
    triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts),
                   target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1, num_stages=1))

# every constexpr branch: resident and streamed weights, shortcut, leak, lengths, h0, bias
for resident, flag in ((True, True), (False, False)):
    common = dict(DEPTH=3 if resident else 2, HAS_LEN=flag, REVERSE=flag, LEAK=flag, SHORTCUT=True,
                  RESIDENT=resident, TANH=flag, CDT=tl.float32, PREC="ieee", BLOCK_B=16,
                  BLOCK_H=16)
    compile_(dt._dt_rnn_fwd_kernel, dict(common, HAS_H0=flag, HAS_BIAS=flag))
    compile_(dt._dt_rnn_bwd_kernel, dict(common, H0_TERMS=flag))
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """The interpreter runs kernels the compiler rejects (it executes the
    Python): compile both kernels for an H100/H200 (sm_90, down to the cubin,
    no GPU needed) with every constexpr branch taken once."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    try:
        import triton.backends.nvidia  # noqa: F401
    except ImportError:
        pytest.skip("triton has no NVIDIA backend")
    env = dict(os.environ, TRITON_INTERPRET="0")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent)] + [p for p in [env.get("PYTHONPATH")] if p])
    out = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-4000:]
