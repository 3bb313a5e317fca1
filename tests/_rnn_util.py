"""Helpers shared by the recurrent-cell tests."""

import torch


def ran_op(fn, name):
    """Whether calling fn ran the registered op mts_kernels::<name>."""
    with torch.profiler.profile() as prof:
        fn()
    return any(e.name == f"mts_kernels::{name}" for e in prof.events())


def grads(out, h_n, inputs, seed=0):
    """Gradients of a random linear function of (output, h_n) with respect to inputs."""
    gen = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=gen, dtype=out.dtype).to(out.device)
    g_h = torch.randn(h_n.shape, generator=gen, dtype=h_n.dtype).to(h_n.device)
    return torch.autograd.grad((out * g_out).sum() + (h_n * g_h).sum(), inputs)


def clockwork_case(seed, T, B, sizes, dtype=torch.float64, leak=False, with_h0=True, device="cpu"):
    """(p, weight_hh, h0, alpha) of a clockwork_rnn call: random, drawn in float64."""
    gen = torch.Generator().manual_seed(seed)
    H = sum(sizes)
    p = torch.randn(T, B, H, generator=gen, dtype=torch.float64)
    w = torch.randn(H, H, generator=gen, dtype=torch.float64) * (0.9 / H ** 0.5)
    h0 = torch.randn(B, H, generator=gen, dtype=torch.float64) if with_h0 else None
    alpha = torch.rand(H, generator=gen, dtype=torch.float64) * 0.9 if leak else None
    return [None if t is None else t.to(dtype).to(device) for t in (p, w, h0, alpha)]


def grads_wrt(out, ins, g):
    """d(out . g) / d ins for the given (non-None) inputs, zeros where unused."""
    ins = [t for t in ins if t is not None]
    return torch.autograd.grad(out, ins, g, allow_unused=True, materialize_grads=True)


def record_clockwork_path(monkeypatch, cw_ops):
    """The path decisions clockwork_rnn makes from now on (True: the fused op)."""
    calls = []
    real = cw_ops._use_fused
    monkeypatch.setattr(cw_ops, "_use_fused", lambda *a: (calls.append(real(*a)), calls[-1])[1])
    return calls


def cuda_kernel_names(fn):
    """The names of the CUDA kernels fn() launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.name for e in prof.events()}


def set_persistent_mode(monkeypatch, mode):
    """MTS_KERNELS_RNN_PERSISTENT: None (unset: the persistent kernels where they fit), "grid", "0"."""
    if mode is None:
        monkeypatch.delenv("MTS_KERNELS_RNN_PERSISTENT", raising=False)
    else:
        monkeypatch.setenv("MTS_KERNELS_RNN_PERSISTENT", mode)


def check_persistent_ran(names, mode):
    """That a fwd + bwd under `mode` ran the persistent kernels (the grid ones under "grid") or not ("0")."""
    ran = any("persist_fwd_kernel" in n for n in names) and any("persist_bwd_kernel" in n for n in names)
    assert ran == (mode != "0"), sorted(names)
    if mode == "grid":
        assert any("persist_fwd_kernel<true>" in n for n in names), sorted(names)


def assert_outputs_close(got, want, names, label="", rtol=1e-11, atol=1e-11):
    """Each output of got against want (shapes equal), named in the failure message."""
    for name, a, b in zip(names, got, want, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a.cpu(), b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}{label}: {m}")


def assert_low_precision_close(got, want, names, dtype):
    """Outputs stored in `dtype` after float32 compute, against the same computation
    elsewhere: within 1e-4 of each output's scale plus 4 rounding steps of dtype."""
    for name, a, b in zip(names, got, want, strict=True):
        assert a.dtype == dtype, name
        scale = b.double().abs().max().item()
        err = (a.double() - b.double()).abs().max().item()
        assert err <= 1e-4 * scale + 4 * torch.finfo(dtype).eps * scale, f"{name}: {err:.3g} of {scale:.3g}"
