"""leaky_rnn: one layer and direction of the dense leaky recurrence, fused.

    z_t = p_t + W_hh h_{t-d} [+ W_skip h_{t-s}],   u_t = phi(z_t)
    h_t = alpha * h_{t-d} + (1 - alpha) * u_t

The schema and the CPU/CUDA kernels come from C++ (csrc/rnn/); the fake kernels
and autograd are registered here. The backward is one fused op (a reverse loop in
C++ with one GEMM per step and the weight gradients as single GEMMs after it).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mts_kernels import _extension, reference
from mts_kernels.ops import _backend, _lengths

NONLINEARITIES = ("tanh", "relu")


def _fake_fwd(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse,
              lengths=None):
    h = p.new_empty(p.shape)
    return h, (p.new_empty(p.shape) if alpha is not None else p.new_empty((0,)))


def _fake_bwd(grad_h, weight_hh, h, u, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse,
              lengths=None):
    T, B, H = h.shape
    return (h.new_empty((T, B, H)), h.new_empty((H, H)), h.new_empty((B, H)),
            h.new_empty((H,) if alpha is not None else (0,)),
            h.new_empty((H, H) if weight_skip is not None else (0,)))


def _setup_context(ctx, inputs, output):
    p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse, lengths = inputs
    h, u = output
    ctx.mark_non_differentiable(u)
    ctx.config = (skip, dilation, nonlinearity, reverse)
    ctx.has = (h0 is not None, alpha is not None, weight_skip is not None)
    ctx.save_for_backward(weight_hh, h, u, h0, alpha, weight_skip, lengths)


def _make_backward(bwd_name: str):
    def backward(ctx, grad_h, _grad_u):
        weight_hh, h, u, h0, alpha, weight_skip, lengths = ctx.saved_tensors
        if grad_h is None:
            grad_h = torch.zeros_like(h)
        dp, dw, dh0, dalpha, dws = getattr(torch.ops.mts_kernels, bwd_name)(
            grad_h, weight_hh, h, u, h0, alpha, weight_skip, *ctx.config, lengths)
        has_h0, has_alpha, has_skip = ctx.has
        return (dp, dw, dh0 if has_h0 else None, dalpha if has_alpha else None,
                dws if has_skip else None, None, None, None, None, None)

    return backward


def _register(suffix: str) -> None:
    fwd, bwd = f"leaky_rnn_fwd{suffix}", f"leaky_rnn_bwd{suffix}"
    torch.library.register_fake(f"mts_kernels::{fwd}")(_fake_fwd)
    torch.library.register_fake(f"mts_kernels::{bwd}")(_fake_bwd)
    torch.library.register_autograd(f"mts_kernels::{fwd}", _make_backward(bwd),
                                    setup_context=_setup_context)


# The Triton path as custom ops with the C++ schemas' signatures
# (mts_kernels/triton/leaky_rnn.py; H <= its MAX_HIDDEN).
@torch.library.custom_op("mts_kernels::leaky_rnn_fwd_triton", mutates_args=())
def _leaky_rnn_fwd_triton(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor], alpha: Optional[Tensor],
                          weight_skip: Optional[Tensor], skip: int, dilation: int, nonlinearity: str,
                          reverse: bool, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    from mts_kernels.triton import leaky_rnn as triton_rnn

    return triton_rnn.leaky_rnn_fwd(p, weight_hh, h0, alpha, weight_skip, skip, dilation,
                                    nonlinearity, reverse, lengths)


@torch.library.custom_op("mts_kernels::leaky_rnn_bwd_triton", mutates_args=())
def _leaky_rnn_bwd_triton(grad_h: Tensor, weight_hh: Tensor, h: Tensor, u: Tensor, h0: Optional[Tensor],
                          alpha: Optional[Tensor], weight_skip: Optional[Tensor], skip: int,
                          dilation: int, nonlinearity: str, reverse: bool,
                          lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from mts_kernels.triton import leaky_rnn as triton_rnn

    return triton_rnn.leaky_rnn_bwd(grad_h, weight_hh, h, u, h0, alpha, weight_skip, skip,
                                    dilation, nonlinearity, reverse, lengths)


_register("_triton")
_backend.register_triton("leaky_rnn_fwd")
if _extension.COMPILED:
    _register("")


def check_projection(op: str, p, batch_first: bool):
    """Checks the input projection p of a recurrence; returns (T, B, H)."""
    layout = "(B, T, H)" if batch_first else "(T, B, H)"
    if not isinstance(p, Tensor) or p.dim() != 3:
        got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"{op}: p must be a 3-D tensor {layout}, got {got}")
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{op}: p must be float16, bfloat16, float32 or float64, got {p.dtype}")
    T = p.size(1 if batch_first else 0)
    if T == 0:
        raise ValueError(f"{op}: p must have at least one time step, got shape {tuple(p.shape)}")
    return T, p.size(0 if batch_first else 1), p.size(2)


def _check_args(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, batch_first):
    op = "leaky_rnn"
    _, B, H = check_projection(op, p, batch_first)

    def check(name, t, shape):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != p.dtype:
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but p has {p.dtype}")
        if t.device != p.device:
            raise ValueError(f"{op}: {name} is on {t.device} but p is on {p.device}")

    check("weight_hh", weight_hh, (H, H))
    if h0 is not None:
        check("h0", h0, (B, H))
    if alpha is not None:
        check("alpha", alpha, (H,))
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
        raise ValueError(f"{op}: dilation must be an int >= 1, got {dilation!r}")
    if skip is not None and (not isinstance(skip, int) or isinstance(skip, bool) or skip < 1):
        raise ValueError(f"{op}: skip must be None or an int >= 1, got {skip!r}")
    if (skip is None) != (weight_skip is None):
        raise ValueError(f"{op}: weight_skip must be given exactly when skip is "
                         f"(skip={skip!r}, weight_skip {'given' if weight_skip is not None else 'None'})")
    if weight_skip is not None:
        check("weight_skip", weight_skip, (H, H))
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def leaky_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
              alpha: Optional[Tensor] = None, weight_skip: Optional[Tensor] = None,
              skip: Optional[int] = None, dilation: int = 1, nonlinearity: str = "tanh",
              reverse: bool = False, batch_first: bool = False, lengths=None,
              backend: Optional[str] = None) -> Tensor:
    """One layer and direction of the dense leaky recurrence, fused forward and backward.

        z_t = p_t + W_hh h_{t-d} [+ W_skip h_{t-s}],   u_t = phi(z_t)
        h_t = alpha * h_{t-d} + (1 - alpha) * u_t          (alpha None: h_t = u_t, torch.nn.RNN)

    p: (T, B, H) (or (B, T, H) when batch_first): the input projection
    W_ih x_t + b_ih + b_hh for all steps, computed by the caller as one GEMM.
    weight_hh: (H, H); h0: (B, H) or None (zeros), the state for every tau <= 0;
    alpha: (H,) leak per unit or None; skip / weight_skip: an extra connection from
    s steps back; dilation d: the recurrent connection reaches d steps back (d
    interleaved chains). reverse runs t = T..1. lengths: None, or (B,) ints
    (tensor or list): sequence b runs its first L_b steps (reverse: t = L_b-1..0,
    its delays counted in its own steps) and h is 0 beyond; its final state is
    mts_kernels.final_state(h, lengths, h0, reverse=reverse, batch_first=batch_first).
    Returns h shaped like p.
    """
    _check_args(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, batch_first)
    T, B, _ = check_projection("leaky_rnn", p, batch_first)
    lens = _lengths.check_lengths("leaky_rnn", lengths, B, T, p.device)
    be = _backend.resolve(backend, "leaky_rnn_fwd", p.device, p.dtype)
    kw = dict(alpha=alpha, weight_skip=weight_skip, skip=skip, dilation=dilation,
              nonlinearity=nonlinearity, reverse=reverse, batch_first=batch_first)
    if be == "reference":
        return reference.leaky_rnn(p, weight_hh, h0, lengths=lens, **kw)
    op = torch.ops.mts_kernels.leaky_rnn_fwd
    if be == "triton":
        from mts_kernels.triton.leaky_rnn import MAX_HIDDEN

        if p.size(2) > MAX_HIDDEN:
            raise _backend.BackendUnavailableError(
                f"leaky_rnn: the Triton kernel keeps W_hh in registers and supports hidden sizes up to "
                f"{MAX_HIDDEN}, got {p.size(2)}; build the CUDA kernels (see README) or use "
                f"backend='reference'")
        op = torch.ops.mts_kernels.leaky_rnn_fwd_triton
    pt = p.transpose(0, 1) if batch_first else p
    # a delay of T or more reads h0 at every step, as a delay of T does (and fits int64)
    h, _ = op(pt, weight_hh, h0, alpha, weight_skip, min(skip or 0, T), min(dilation, T), nonlinearity,
              reverse, lens)
    return h.transpose(0, 1) if batch_first else h
