"""The registered scan ops: schema/fake/autograd consistency (opcheck) and
torch.compile(fullgraph=True) without graph breaks."""

import pytest
import torch

import mts_kernels
from mts_kernels import reference

HAS_CUDA = torch.cuda.is_available()


def _samples(device, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)

    def r(*s, lo=None):
        t = torch.rand(*s, generator=g) * 0.9 + 0.05 if lo else torch.randn(*s, generator=g)
        return t.to(device=device, dtype=dtype).requires_grad_()

    B, T, D = 2, 7, 5
    time_major = torch.randn(T, B, D, generator=g).to(device=device, dtype=dtype).transpose(0, 1)
    return [
        (r(B, T, D, lo=True), r(B, T, D), r(B, D), False),
        (r(D, lo=True), r(B, T, D), None, True),
        (r(B, T, D, lo=True), time_major.requires_grad_(), None, False),
    ]


def _op_variants():
    out = [pytest.param("", "cpu", id="cpu")]
    out.append(pytest.param("_triton", "cuda" if HAS_CUDA else "cpu", id="triton", marks=pytest.mark.triton))
    out.append(pytest.param("", "cuda", id="cuda", marks=pytest.mark.cuda))
    return out


@pytest.mark.parametrize("suffix,device", _op_variants())
@pytest.mark.parametrize("name", ["linear_scan", "leaky_integrate"])
def test_opcheck(suffix, device, name):
    fwd = getattr(torch.ops.mts_kernels, f"{name}_fwd{suffix}")
    bwd = getattr(torch.ops.mts_kernels, f"{name}_bwd{suffix}")
    for decay, x, h0, reverse in _samples(device):
        args = (decay, x, h0, reverse) if name == "linear_scan" else (x, decay, h0, reverse)
        torch.library.opcheck(fwd, args)
        h = fwd(*args).detach()
        g = torch.randn_like(h)
        bargs = (g, decay, h, h0, reverse) if name == "linear_scan" else (g, x, decay, h, h0, reverse)
        bargs = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in bargs)
        torch.library.opcheck(bwd, bargs, test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()

    def model(v, alpha, h0, w):
        h = mts_kernels.leaky_integrate(v @ w, alpha, h0)
        back = mts_kernels.linear_scan(alpha.flip(1), h, reverse=True)
        return (back * back).mean()

    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 20, 8, generator=g)
    w = torch.randn(8, 8, generator=g, requires_grad=True)
    alpha = (torch.rand(3, 20, 8, generator=g) * 0.9).requires_grad_()
    h0 = torch.randn(3, 8, generator=g, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    loss_c = compiled(v, alpha, h0, w)
    grads_c = torch.autograd.grad(loss_c, (alpha, h0, w))
    loss_e = model(v, alpha, h0, w)
    grads_e = torch.autograd.grad(loss_e, (alpha, h0, w))
    torch.testing.assert_close(loss_c, loss_e)
    for a, b in zip(grads_c, grads_e):
        torch.testing.assert_close(a, b)
    # and both agree with the reference loop
    loss_r = (reference.linear_scan(alpha.flip(1), reference.leaky_integrate(v @ w, alpha, h0),
                                    reverse=True) ** 2).mean()
    torch.testing.assert_close(loss_c, loss_r)
