"""linear_scan and leaky_integrate: the functional API, fake kernels, Triton
custom ops and autograd of the scan ops.

    linear_scan:      h_t = a_t * h_{t-1} + x_t
    leaky_integrate:  h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t

Schemas and the CPU/CUDA kernels come from C++ (csrc/registration.cpp,
csrc/scan/); the Triton path (mts_kernels/triton/scan.py) is registered here as
custom ops with the same signatures. Every forward op's autograd calls the
matching fused backward op, never a loop.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mts_kernels import _extension, reference
from mts_kernels.ops import _backend, _lengths

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------- fake kernels
# Outputs mirror the kernels' allocation (csrc/scan/scan_ops.h): at::empty_like of
# the operand made unit-stride along D, so a time-major input gives a time-major output.

def _d_contiguous(t: Tensor) -> Tensor:
    return t if (t.size(-1) <= 1 or t.stride(-1) == 1) else t.contiguous()


def _fake_fwd(decay: Tensor, x: Tensor) -> Tensor:
    return torch.empty_like(_d_contiguous(x))


def _fake_decay_grad(decay: Tensor) -> Tensor:
    if decay.dim() == 1:
        return decay.new_empty(decay.shape)
    return torch.empty_like(_d_contiguous(decay))


def _fake_dh0(h: Tensor) -> Tensor:
    return h.new_empty((h.size(0), h.size(2)))


def _fake_linear_scan_fwd(a, x, h0, reverse, lengths=None):
    return _fake_fwd(a, x)


def _fake_linear_scan_bwd(grad_h, a, h, h0, reverse, lengths=None):
    return _fake_decay_grad(a), torch.empty_like(_d_contiguous(h)), _fake_dh0(h)


def _fake_leaky_integrate_fwd(v, alpha, h0, reverse, lengths=None):
    return _fake_fwd(alpha, v)


def _fake_leaky_integrate_bwd(grad_h, v, alpha, h, h0, reverse, lengths=None):
    return torch.empty_like(_d_contiguous(v)), _fake_decay_grad(alpha), _fake_dh0(h)


# --------------------------------------------------------------------------- Triton ops

@torch.library.custom_op("mts_kernels::linear_scan_fwd_triton", mutates_args=())
def _linear_scan_fwd_triton(a: Tensor, x: Tensor, h0: Optional[Tensor], reverse: bool,
                            lengths: Optional[Tensor] = None) -> Tensor:
    from mts_kernels.triton import scan as triton_scan

    return triton_scan.scan_fwd(a, x, h0, reverse, False, lengths)


@torch.library.custom_op("mts_kernels::linear_scan_bwd_triton", mutates_args=())
def _linear_scan_bwd_triton(grad_h: Tensor, a: Tensor, h: Tensor, h0: Optional[Tensor],
                            reverse: bool, lengths: Optional[Tensor] = None
                            ) -> tuple[Tensor, Tensor, Tensor]:
    from mts_kernels.triton import scan as triton_scan

    dx, da, dh0 = triton_scan.scan_bwd(grad_h, a, None, h, h0, reverse, False, lengths)
    return da, dx, dh0


@torch.library.custom_op("mts_kernels::leaky_integrate_fwd_triton", mutates_args=())
def _leaky_integrate_fwd_triton(v: Tensor, alpha: Tensor, h0: Optional[Tensor],
                                reverse: bool, lengths: Optional[Tensor] = None) -> Tensor:
    from mts_kernels.triton import scan as triton_scan

    return triton_scan.scan_fwd(alpha, v, h0, reverse, True, lengths)


@torch.library.custom_op("mts_kernels::leaky_integrate_bwd_triton", mutates_args=())
def _leaky_integrate_bwd_triton(grad_h: Tensor, v: Tensor, alpha: Tensor, h: Tensor,
                                h0: Optional[Tensor], reverse: bool,
                                lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    from mts_kernels.triton import scan as triton_scan

    dv, dalpha, dh0 = triton_scan.scan_bwd(grad_h, alpha, v, h, h0, reverse, True, lengths)
    return dv, dalpha, dh0


# --------------------------------------------------------------------------- autograd

def _register_linear_scan(suffix: str) -> None:
    fwd, bwd = f"mts_kernels::linear_scan_fwd{suffix}", f"linear_scan_bwd{suffix}"
    torch.library.register_fake(fwd)(_fake_linear_scan_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(_fake_linear_scan_bwd)

    def setup_context(ctx, inputs, output):
        a, _x, h0, reverse, lengths = inputs
        ctx.reverse = reverse
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(a, output, h0, lengths)

    def backward(ctx, grad_h):
        a, h, h0, lengths = ctx.saved_tensors
        da, dx, dh0 = getattr(torch.ops.mts_kernels, bwd)(grad_h, a, h, h0, ctx.reverse, lengths)
        return da, dx, (dh0 if ctx.has_h0 else None), None, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


def _register_leaky_integrate(suffix: str) -> None:
    fwd, bwd = f"mts_kernels::leaky_integrate_fwd{suffix}", f"leaky_integrate_bwd{suffix}"
    torch.library.register_fake(fwd)(_fake_leaky_integrate_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(_fake_leaky_integrate_bwd)

    def setup_context(ctx, inputs, output):
        v, alpha, h0, reverse, lengths = inputs
        ctx.reverse = reverse
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(v, alpha, output, h0, lengths)

    def backward(ctx, grad_h):
        v, alpha, h, h0, lengths = ctx.saved_tensors
        dv, dalpha, dh0 = getattr(torch.ops.mts_kernels, bwd)(grad_h, v, alpha, h, h0, ctx.reverse,
                                                              lengths)
        return dv, dalpha, (dh0 if ctx.has_h0 else None), None, None

    torch.library.register_autograd(fwd, backward, setup_context=setup_context)


_register_linear_scan("_triton")
_register_leaky_integrate("_triton")
_backend.register_triton("linear_scan_fwd")
_backend.register_triton("leaky_integrate_fwd")
if _extension.COMPILED:
    _register_linear_scan("")
    _register_leaky_integrate("")


# --------------------------------------------------------------------------- public API

def _check_args(op: str, x_name: str, x, decay_name: str, decay, h0, batch_first: bool) -> None:
    layout = "(B, T, D)" if batch_first else "(T, B, D)"
    for name, t in ((x_name, x), (decay_name, decay)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{op}: {x_name} must be 3-D {layout} (batch_first={batch_first}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {x_name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if decay.dtype != x.dtype:
        raise TypeError(f"{op}: {decay_name} has dtype {decay.dtype} but {x_name} has {x.dtype}; "
                        f"pass both in the same dtype")
    if decay.device != x.device:
        raise ValueError(f"{op}: {decay_name} is on {decay.device} but {x_name} is on {x.device}")
    D = x.size(2)
    if decay.shape != x.shape and decay.shape != (D,):
        raise ValueError(f"{op}: {decay_name} must have the shape of {x_name} {tuple(x.shape)} "
                         f"or ({D},) for one decay per channel, got {tuple(decay.shape)}")
    time_dim = 1 if batch_first else 0
    if x.size(time_dim) == 0:
        raise ValueError(f"{op}: {x_name} must have at least one time step, got shape "
                         f"{tuple(x.shape)} with batch_first={batch_first}")
    if h0 is not None:
        if not isinstance(h0, Tensor):
            raise TypeError(f"{op}: h0 must be a torch.Tensor or None, got {type(h0).__name__}")
        B = x.size(1 - time_dim)
        if h0.shape != (B, D):
            raise ValueError(f"{op}: h0 must have shape (B, D) = ({B}, {D}), got {tuple(h0.shape)}")
        if h0.dtype != x.dtype:
            raise TypeError(f"{op}: h0 has dtype {h0.dtype} but {x_name} has {x.dtype}")
        if h0.device != x.device:
            raise ValueError(f"{op}: h0 is on {h0.device} but {x_name} is on {x.device}")


def _bt(x: Tensor, batch_first: bool) -> tuple[int, int]:
    """(B, T) of a 3-D operand."""
    return (x.size(0), x.size(1)) if batch_first else (x.size(1), x.size(0))


def _btd(t: Tensor, batch_first: bool) -> Tensor:
    return t if (batch_first or t.dim() == 1) else t.transpose(0, 1)


def linear_scan(a: Tensor, x: Tensor, h0: Optional[Tensor] = None, *, reverse: bool = False,
                batch_first: bool = True, lengths=None, backend: Optional[str] = None) -> Tensor:
    """First-order linear recurrence, fused forward and backward.

        h_t = a_t * h_{t-1} + x_t,   h_0 = h0 (zeros when None)

    x: (B, T, D) (batch_first) or (T, B, D); a: the same shape, or (D,) for one
    decay per channel (broadcast inside the kernel, its gradient reduced there).
    h0: (B, D) or None. reverse=True runs t = T..1. lengths: None, or (B,) ints
    (tensor or list): sequence b runs its first L_b steps (reverse: t = L_b-1..0)
    and h is 0 beyond (mts_kernels.ops._lengths). Returns h, shaped like x; the
    final state is h[:, -1] (h[:, 0] when reverse), mts_kernels.final_state with
    lengths. backend: see mts_kernels.ops._backend.
    """
    _check_args("linear_scan", "x", x, "a", a, h0, batch_first)
    lens = _lengths.check_lengths("linear_scan", lengths, *_bt(x, batch_first), x.device)
    be = _backend.resolve(backend, "linear_scan_fwd", x.device, x.dtype)
    if be == "reference":
        return reference.linear_scan(a, x, h0, reverse=reverse, batch_first=batch_first, lengths=lens)
    op = torch.ops.mts_kernels.linear_scan_fwd_triton if be == "triton" else torch.ops.mts_kernels.linear_scan_fwd
    h = op(_btd(a, batch_first), _btd(x, batch_first), h0, reverse, lens)
    return _btd(h, batch_first)


def leaky_integrate(v: Tensor, alpha: Tensor, h0: Optional[Tensor] = None, *,
                    reverse: bool = False, batch_first: bool = True, lengths=None,
                    backend: Optional[str] = None) -> Tensor:
    """Leaky integrator (exponential moving average with a leak per step),
    fused forward and backward.

        h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t,   h_0 = h0 (zeros when None)

    v: (B, T, D) (batch_first) or (T, B, D); alpha: the same shape, or (D,) for
    one leak per channel. Otherwise (h0, reverse, lengths) as linear_scan.
    """
    _check_args("leaky_integrate", "v", v, "alpha", alpha, h0, batch_first)
    lens = _lengths.check_lengths("leaky_integrate", lengths, *_bt(v, batch_first), v.device)
    be = _backend.resolve(backend, "leaky_integrate_fwd", v.device, v.dtype)
    if be == "reference":
        return reference.leaky_integrate(v, alpha, h0, reverse=reverse, batch_first=batch_first,
                                         lengths=lens)
    op = (torch.ops.mts_kernels.leaky_integrate_fwd_triton if be == "triton"
          else torch.ops.mts_kernels.leaky_integrate_fwd)
    h = op(_btd(v, batch_first), _btd(alpha, batch_first), h0, reverse, lens)
    return _btd(h, batch_first)
