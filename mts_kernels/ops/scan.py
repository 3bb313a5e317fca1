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
from mts_kernels.ops import _backend, _lengths, _transforms

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


# --------------------------------------------------------------------------- derivatives
# The derivatives of a scan are scans (DESIGN-NOTES §2), written here once with a
# differentiable `scan(a, x, h0, reverse, lengths)` (a linear_scan op) and pointwise
# torch ops, so they are themselves differentiable to any order, batch under vmap
# and carry tangents. Layout (B, T, D); decay (B, T, D) or (D,). With
# h_t = a_t prev_t + x_t (leaky: x_t = (1 - a_t) v_t) in processing order:
#   adjoint   g_t = dL/dh_t + a_next_t g_next_t      (the scan run the other way)
#   vjp       dx_t = g_t, da_t = g_t prev_t (leaky: dv = g (1 - a), da = g (prev - v)),
#             dh0 = a_first g_first
#   tangent   hdot_t = a_t hdot_prev_t + adot_t prev_t + xdot_t

def _steps(T: int, device) -> Tensor:
    return torch.arange(T, device=device)


def _valid(lengths: Optional[Tensor], T: int, device) -> Optional[Tensor]:
    """(B, T, 1): step t of row b is inside its sequence."""
    if lengths is None:
        return None
    return (_steps(T, device).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)


def _first_step(lengths: Optional[Tensor], B: int, T: int, reverse: bool, device) -> Tensor:
    """(B, T, 1): the row's first step in processing order (none when L_b = 0)."""
    t = _steps(T, device).unsqueeze(0)
    if lengths is None:
        first = torch.full((B, 1), T - 1 if reverse else 0, device=device)
        return (t == first).unsqueeze(-1)
    first = lengths.unsqueeze(1) - 1 if reverse else torch.zeros_like(lengths).unsqueeze(1)
    return ((t == first) & (t < lengths.unsqueeze(1))).unsqueeze(-1)


def _prev_state(h: Tensor, h0: Optional[Tensor], reverse: bool, lengths: Optional[Tensor]) -> Tensor:
    """The state each step reads: h_{t-1} (reverse: h_{t+1}), h0 at the row's first step."""
    init = (h0 if h0 is not None else h.new_zeros(h.size(0), h.size(2))).unsqueeze(1)
    if not reverse:
        return torch.cat([init, h[:, :-1]], 1)
    shifted = torch.cat([h[:, 1:], init], 1)
    if lengths is None:
        return shifted
    return torch.where(_first_step(lengths, h.size(0), h.size(1), True, h.device), init, shifted)


def _adjoint_decay(a: Tensor, reverse: bool, lengths: Optional[Tensor]) -> Tensor:
    """a_next: the decay that carries g from the next processed step back to t."""
    if a.dim() == 1:  # per channel: the adjoint chain starts from a zero state
        return a
    zero = a.new_zeros(a[:, :1].shape)
    if reverse:  # the forward read h_{t+1}, so h_{t-1} read h_t through a_{t-1}
        return torch.cat([zero, a[:, :-1]], 1)
    nxt = torch.cat([a[:, 1:], zero], 1)
    if lengths is not None:  # a_{L_b} lies in the padding: it must not reach g
        keep = (_steps(a.size(1), a.device).unsqueeze(0) + 1 < lengths.unsqueeze(1)).unsqueeze(-1)
        nxt = torch.where(keep, nxt, zero)
    return nxt


def scan_vjp(scan, grad_h: Tensor, decay: Tensor, v: Optional[Tensor], h: Tensor,
             h0: Optional[Tensor], reverse: bool, lengths: Optional[Tensor], leaky: bool,
             need=(True, True, True)):
    """(d decay, d x-or-v, d h0) of a linear scan (leaky=False) or leaky
    integrator (leaky=True) for the cotangent grad_h; entries not in `need` are None."""
    B, T, _ = h.shape
    g = scan(_adjoint_decay(decay, reverse, lengths), grad_h, None, not reverse, lengths)
    valid = _valid(lengths, T, h.device)
    d_in = g * (1 - decay) if leaky else g
    if valid is not None and leaky:  # 0 * (1 - NaN) in the padding is NaN
        d_in = torch.where(valid, d_in, d_in.new_zeros(()))
    d_decay = d_h0 = None
    if need[0]:
        prev = _prev_state(h, h0, reverse, lengths)
        d_decay = g * (prev - v) if leaky else g * prev
        if valid is not None:
            d_decay = torch.where(valid, d_decay, d_decay.new_zeros(()))
        if decay.dim() == 1:
            d_decay = d_decay.sum((0, 1))
    if need[2] and h0 is not None:
        first = _first_step(lengths, B, T, reverse, h.device)
        d_h0 = torch.where(first, decay * g, g.new_zeros(())).sum(1)
    return d_decay, (d_in if need[1] else None), d_h0


def scan_jvp(scan, d_decay: Optional[Tensor], d_v: Optional[Tensor], d_h0: Optional[Tensor],
             decay: Tensor, v: Tensor, h: Tensor, h0: Optional[Tensor], reverse: bool,
             lengths: Optional[Tensor], leaky: bool) -> Tensor:
    """The tangent of h for tangents of (decay, x-or-v, h0) (None: zero)."""
    r = torch.zeros_like(h)
    if d_v is not None:
        r = r + ((1 - decay) * d_v if leaky else d_v)
    if d_decay is not None:
        prev = _prev_state(h, h0, reverse, lengths)
        r = r + d_decay * ((prev - v) if leaky else prev)
    return scan(decay, r, d_h0, reverse, lengths)


def _op(leaky: bool, suffix: str):
    return getattr(torch.ops.mts_kernels, f"{'leaky_integrate' if leaky else 'linear_scan'}_fwd{suffix}")


def _call(leaky: bool, suffix: str, decay, v, h0, reverse, lengths):
    """Both ops as (decay, input, ...): linear_scan takes (a, x), leaky_integrate (v, alpha)."""
    return _op(leaky, suffix)(v, decay, h0, reverse, lengths) if leaky else \
        _op(False, suffix)(decay, v, h0, reverse, lengths)


class _ScanFunction(torch.autograd.Function):
    """The scan ops for torch.func transforms and forward-mode AD (see _transforms)."""

    @staticmethod
    def forward(decay, v, h0, reverse, lengths, leaky, suffix):
        return _call(leaky, suffix, decay, v, h0, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        decay, v, h0, reverse, lengths, leaky, suffix = inputs
        ctx.config = (reverse, leaky, suffix, h0 is not None)
        ctx.save_for_backward(decay, v, h0, lengths, output)
        ctx.save_for_forward(decay, v, h0, lengths, output)

    @staticmethod
    def backward(ctx, grad_h):
        decay, v, h0, lengths, h = ctx.saved_tensors
        reverse, leaky, suffix, _ = ctx.config
        need = ctx.needs_input_grad
        d_decay, d_v, d_h0 = scan_vjp(_function_scan(suffix), grad_h, decay, v, h, h0, reverse,
                                      lengths, leaky, (need[0], need[1], need[2]))
        return d_decay, d_v, d_h0, None, None, None, None

    @staticmethod
    def jvp(ctx, d_decay, d_v, d_h0, *_):
        decay, v, h0, lengths, h = ctx.saved_tensors
        reverse, leaky, suffix, has_h0 = ctx.config
        return scan_jvp(_function_scan(suffix), d_decay, d_v, d_h0 if has_h0 else None, decay, v, h,
                        h0, reverse, lengths, leaky)

    @staticmethod
    def vmap(info, in_dims, decay, v, h0, reverse, lengths, leaky, suffix):
        # The vmapped dimension folds into the batch: one kernel call for all of it.
        n = info.batch_size
        dd, dv, dh, _, dl, _, _ = in_dims
        vb = _transforms.batch_to_front(v, dv, n)
        N, B, T, D = vb.shape
        if decay.dim() - (dd is not None) == 1:  # per channel
            if dd is None:
                decay_f = decay
            else:  # a decay per vmapped sample: per step in the folded batch
                decay_f = decay.movedim(dd, 0)[:, None, None, :].expand(N, B, T, D).reshape(N * B, T, D)
        else:
            decay_f = _transforms.batch_to_front(decay, dd, n).reshape(N * B, T, D)
        h0_f = None if h0 is None else _transforms.batch_to_front(h0, dh, n).reshape(N * B, D)
        lens_f = None if lengths is None else _transforms.batch_to_front(lengths, dl, n).reshape(N * B)
        out = _ScanFunction.apply(decay_f, vb.reshape(N * B, T, D), h0_f, reverse, lens_f, leaky,
                                  suffix)
        return out.view(N, B, T, D), 0


def _function_scan(suffix: str):
    return lambda a, x, h0, reverse, lengths: _ScanFunction.apply(a, x, h0, reverse, lengths, False,
                                                                  suffix)


def _op_scan(suffix: str):
    return _op(False, suffix)


def _register(leaky: bool, suffix: str) -> None:
    name = "leaky_integrate" if leaky else "linear_scan"
    fwd, bwd = f"{name}_fwd{suffix}", f"{name}_bwd{suffix}"
    torch.library.register_fake(f"mts_kernels::{fwd}")(
        _fake_leaky_integrate_fwd if leaky else _fake_linear_scan_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(
        _fake_leaky_integrate_bwd if leaky else _fake_linear_scan_bwd)

    def setup_context(ctx, inputs, output):
        first, second, h0, reverse, lengths = inputs
        decay, v = (second, first) if leaky else (first, second)
        ctx.reverse = reverse
        ctx.has_h0 = h0 is not None
        ctx.save_for_backward(decay, v if leaky else None, output, h0, lengths)

    def backward(ctx, grad_h):
        decay, v, h, h0, lengths = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            # create_graph=True: the derivative as registered scans, differentiable again
            need_decay, need_v = (need[1], need[0]) if leaky else (need[0], need[1])
            d_decay, d_v, d_h0 = scan_vjp(_op_scan(suffix), grad_h, decay, v, h, h0, ctx.reverse,
                                          lengths, leaky, (need_decay, need_v, need[2]))
        else:  # one fused kernel
            bwd_op = getattr(torch.ops.mts_kernels, bwd)
            if leaky:
                d_v, d_decay, d_h0 = bwd_op(grad_h, v, decay, h, h0, ctx.reverse, lengths)
            else:
                d_decay, d_v, d_h0 = bwd_op(grad_h, decay, h, h0, ctx.reverse, lengths)
        d_h0 = d_h0 if ctx.has_h0 else None
        if leaky:
            return d_v, d_decay, d_h0, None, None
        return d_decay, d_v, d_h0, None, None

    torch.library.register_autograd(f"mts_kernels::{fwd}", backward, setup_context=setup_context)
    _transforms.register_autocast(f"mts_kernels::{fwd}")


for _suffix in ("_triton",) + (("",) if _extension.COMPILED else ()):
    _register(False, _suffix)
    _register(True, _suffix)
_backend.register_triton("linear_scan_fwd")
_backend.register_triton("leaky_integrate_fwd")


# --------------------------------------------------------------------------- public API

def _check_args(op: str, x_name: str, x, decay_name: str, decay, h0, batch_first: bool,
                cast: Optional[torch.dtype] = None) -> None:
    """cast: the autocast dtype when autocast is on for x's device (float inputs
    then meet in that dtype inside the op)."""
    layout = "(B, T, D)" if batch_first else "(T, B, D)"
    for name, t in ((x_name, x), (decay_name, decay)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 3:
        raise ValueError(f"{op}: {x_name} must be 3-D {layout} (batch_first={batch_first}), "
                         f"got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: {x_name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    dtype = _transforms.effective_dtype(x, cast)
    if _transforms.effective_dtype(decay, cast) != dtype:
        raise TypeError(f"{op}: {decay_name} has dtype {decay.dtype} but {x_name} has {x.dtype}"
                        f"{' (under autocast)' if cast is not None else ''}; pass both in the same dtype")
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
        if _transforms.effective_dtype(h0, cast) != dtype:
            raise TypeError(f"{op}: h0 has dtype {h0.dtype} but {x_name} has {x.dtype}")
        if h0.device != x.device:
            raise ValueError(f"{op}: h0 is on {h0.device} but {x_name} is on {x.device}")


def _bt(x: Tensor, batch_first: bool) -> tuple[int, int]:
    """(B, T) of a 3-D operand."""
    return (x.size(0), x.size(1)) if batch_first else (x.size(1), x.size(0))


def _btd(t: Tensor, batch_first: bool) -> Tensor:
    return t if (batch_first or t.dim() == 1) else t.transpose(0, 1)


def _scan(op: str, leaky: bool, x_name: str, x, decay_name: str, decay, h0, reverse: bool,
          batch_first: bool, lengths, backend: Optional[str]) -> Tensor:
    cast = _transforms.autocast_dtype(x.device) if isinstance(x, Tensor) else None
    _check_args(op, x_name, x, decay_name, decay, h0, batch_first, cast)
    lens = _lengths.check_lengths(op, lengths, *_bt(x, batch_first), x.device)
    be = _backend.resolve(backend, f"{op}_fwd", x.device, _transforms.effective_dtype(x, cast))
    if be == "reference":
        if cast is not None:  # the loop is not an op: autocast it by hand, as the op's kernel does
            decay, x, h0 = _transforms.autocast_inputs((decay, x, h0), x.device.type, cast)
        with torch.autocast(x.device.type, enabled=False):
            fn = reference.leaky_integrate if leaky else reference.linear_scan
            args = (x, decay) if leaky else (decay, x)
            return fn(*args, h0, reverse=reverse, batch_first=batch_first, lengths=lens)
    suffix = "_triton" if be == "triton" else ""
    decay_btd, x_btd = _btd(decay, batch_first), _btd(x, batch_first)
    if _transforms.transform_active():
        if cast is not None:
            decay_btd, x_btd, h0 = _transforms.autocast_inputs((decay_btd, x_btd, h0), x.device.type,
                                                               cast)
        h = _ScanFunction.apply(decay_btd, x_btd, h0, reverse, lens, leaky, suffix)
    else:
        h = _call(leaky, suffix, decay_btd, x_btd, h0, reverse, lens)
    return _btd(h, batch_first)


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

    Derivatives: reverse mode, create_graph=True (any order), forward mode (jvp)
    and torch.func (grad, vmap, jacrev, jacfwd): its derivatives are scans too.
    Under torch.autocast the scan runs in the autocast dtype (float32 state inside).
    """
    return _scan("linear_scan", False, "x", x, "a", a, h0, reverse, batch_first, lengths, backend)


def leaky_integrate(v: Tensor, alpha: Tensor, h0: Optional[Tensor] = None, *,
                    reverse: bool = False, batch_first: bool = True, lengths=None,
                    backend: Optional[str] = None) -> Tensor:
    """Leaky integrator (exponential moving average with a leak per step),
    fused forward and backward.

        h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t,   h_0 = h0 (zeros when None)

    v: (B, T, D) (batch_first) or (T, B, D); alpha: the same shape, or (D,) for
    one leak per channel. Otherwise (h0, reverse, lengths, derivatives, autocast)
    as linear_scan.
    """
    return _scan("leaky_integrate", True, "v", v, "alpha", alpha, h0, reverse, batch_first, lengths,
                 backend)
