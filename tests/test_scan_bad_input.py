"""Bad input to the scan ops raises a clear error naming the argument and what
was expected; nothing crashes and nothing is silently broadcast."""

import pytest
import torch

import mts_kernels

B, T, D = 2, 5, 3


def _ok():
    return torch.randn(B, T, D), torch.rand(B, T, D), torch.randn(B, D)


CASES = [
    # (description, build kwargs from (v, alpha, h0), exception, message regex)
    ("v not 3-D", lambda v, a, h: dict(v=v[0], alpha=a[0]), ValueError, r"v must be 3-D \(B, T, D\).*\(5, 3\)"),
    ("v 4-D", lambda v, a, h: dict(v=v[None], alpha=a[None]), ValueError, r"v must be 3-D"),
    ("alpha shape mismatch", lambda v, a, h: dict(v=v, alpha=a[:, :4]), ValueError,
     r"alpha must have the shape of v \(2, 5, 3\) or \(3,\).*got \(2, 4, 3\)"),
    ("alpha would broadcast", lambda v, a, h: dict(v=v, alpha=a[:1]), ValueError, r"alpha must have the shape of v"),
    ("alpha (1, 1, D)", lambda v, a, h: dict(v=v, alpha=a[:1, :1]), ValueError, r"alpha must have the shape of v"),
    ("per-channel alpha wrong length", lambda v, a, h: dict(v=v, alpha=torch.rand(4)), ValueError,
     r"or \(3,\) for one decay per channel, got \(4,\)"),
    ("scalar alpha", lambda v, a, h: dict(v=v, alpha=torch.tensor(0.5)), ValueError, r"alpha must have the shape"),
    ("integer v", lambda v, a, h: dict(v=v.long(), alpha=a), TypeError,
     r"v must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("bool v", lambda v, a, h: dict(v=v > 0, alpha=a), TypeError, r"got torch.bool"),
    ("mixed dtypes", lambda v, a, h: dict(v=v, alpha=a.double()), TypeError,
     r"alpha has dtype torch.float64 but v has torch.float32"),
    ("integer alpha", lambda v, a, h: dict(v=v, alpha=a.long()), TypeError, r"alpha has dtype torch.int64"),
    ("h0 wrong shape", lambda v, a, h: dict(v=v, alpha=a, h0=h[:1]), ValueError,
     r"h0 must have shape \(B, D\) = \(2, 3\), got \(1, 3\)"),
    ("h0 3-D", lambda v, a, h: dict(v=v, alpha=a, h0=h[:, None]), ValueError, r"h0 must have shape"),
    ("h0 dtype", lambda v, a, h: dict(v=v, alpha=a, h0=h.double()), TypeError, r"h0 has dtype torch.float64"),
    ("not a tensor", lambda v, a, h: dict(v=v.tolist(), alpha=a), TypeError, r"v must be a torch.Tensor, got list"),
    ("empty sequence", lambda v, a, h: dict(v=v[:, :0], alpha=a[:, :0]), ValueError, r"at least one time step"),
]


@pytest.mark.parametrize("desc,make,exc,msg", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_bad_input(desc, make, exc, msg, backend):
    kw = make(*_ok())
    with pytest.raises(exc, match=msg):
        mts_kernels.leaky_integrate(kw.pop("v"), kw.pop("alpha"), kw.pop("h0", None), backend=backend)


def test_linear_scan_names_its_arguments():
    x, a, h = _ok()
    with pytest.raises(ValueError, match=r"a must have the shape of x"):
        mts_kernels.linear_scan(a[:, :2], x)
    with pytest.raises(TypeError, match=r"a has dtype torch.float16 but x has torch.float32"):
        mts_kernels.linear_scan(a.half(), x)


def test_time_major_layout_named_in_error():
    v, a, _ = _ok()
    with pytest.raises(ValueError, match=r"v must be 3-D \(T, B, D\) \(batch_first=False\)"):
        mts_kernels.leaky_integrate(v[0], a[0], batch_first=False)
    # time-major h0 is (B, D) with B = v.size(1)
    with pytest.raises(ValueError, match=r"h0 must have shape \(B, D\) = \(5, 3\)"):
        mts_kernels.leaky_integrate(v, a, torch.randn(2, 3), batch_first=False)


@pytest.mark.cuda
def test_mixed_devices():
    v, a, h = _ok()
    with pytest.raises(ValueError, match=r"alpha is on cpu but v is on cuda"):
        mts_kernels.leaky_integrate(v.cuda(), a)
    with pytest.raises(ValueError, match=r"h0 is on cpu but v is on cuda"):
        mts_kernels.leaky_integrate(v.cuda(), a.cuda(), h)


def test_mixed_devices_meta():
    # Device mismatch is checked before any kernel runs; meta tensors show it without a GPU.
    v, a, _ = _ok()
    with pytest.raises(ValueError, match=r"alpha is on meta but v is on cpu"):
        mts_kernels.leaky_integrate(v, a.to("meta"))


@pytest.mark.parametrize("name", ["linear_scan_fwd", "leaky_integrate_fwd"])
def test_raw_op_checks_do_not_crash(name):
    """Direct torch.ops callers skip the Python checks; the C++ checks catch them."""
    op = getattr(torch.ops.mts_kernels, name)
    x = torch.randn(B, T, D)
    with pytest.raises(RuntimeError, match=r"must have shape"):
        op(torch.rand(B, T, 2), x, None, False) if name.startswith("linear") else op(x, torch.rand(4), None, False)
    with pytest.raises(RuntimeError, match=r"h0 must have shape"):
        op(torch.rand(D), x, torch.randn(1, D), False) if name.startswith("linear") else op(x, torch.rand(D), torch.randn(1, D), False)
    with pytest.raises(RuntimeError, match=r"dtype"):
        op(torch.rand(D).double(), x, None, False) if name.startswith("linear") else op(x, torch.rand(D).double(), None, False)
    with pytest.raises(RuntimeError, match=r"must be 3-D"):
        op(torch.rand(D), x[0], None, False) if name.startswith("linear") else op(x[0], torch.rand(D), None, False)
