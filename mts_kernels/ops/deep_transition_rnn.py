"""deep_transition_rnn: one layer and direction of the deep-transition recurrence
(Pascanu et al. 2013), fused. L sub-layers per step, s^0_t = h_{t-1}:

    s^1_t = phi(W_1 h_{t-1} + p_t + b_1)
    s^l_t = phi(W_l s^{l-1}_t + b_l)                      l = 2..L
            (shortcut U: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
    h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t          (alpha None: h_t = s^L_t)

The schema and the CPU kernels come from C++ (csrc/deep/); the Triton launchers
from mts_kernels/triton/deep_transition_rnn.py, as custom ops with the same
signatures; the fake kernels and autograd are registered here. The forward keeps
every s^l_t; the backward is one fused reverse loop (L products per step, plus the
shortcut's) with the weight gradients as single GEMMs after it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor

from mts_kernels import _extension, reference
from mts_kernels.ops import _backend, _lengths, _transforms
from mts_kernels.ops.leaky_rnn import NONLINEARITIES, check_operand, check_projection

_OP = "deep_transition_rnn"


def _fake_fwd(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lengths=None):
    return p.new_empty(p.shape), p.new_empty((weight_hh.size(0), *p.shape))


def _fake_bwd(grad_h, weight_hh, h, s, h0, weight_shortcut, alpha, nonlinearity, reverse, lengths=None):
    T, B, H = h.shape
    L = weight_hh.size(0)
    return (h.new_empty((T, B, H)), h.new_empty((L, H, H)), h.new_empty((L, H)), h.new_empty((B, H)),
            h.new_empty((H, H) if weight_shortcut is not None else (0,)),
            h.new_empty((H,) if alpha is not None else (0,)))


def _setup_context(ctx, inputs, output):
    p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lengths = inputs
    h, s = output
    ctx.mark_non_differentiable(s)
    ctx.config = (nonlinearity, reverse)
    ctx.has = (h0 is not None, bias_hh is not None, weight_shortcut is not None, alpha is not None)
    ctx.save_for_backward(weight_hh, h, s, h0, weight_shortcut, alpha, lengths)


_NO_HIGHER_ORDER = (
    "deep_transition_rnn: {what} of the fused kernels' backward is not implemented (it needs "
    "the derivative of the adjoint recurrence, which has no kernel yet). Reverse mode once "
    "(grad, vjp, jacrev) and vmap of it work; for higher orders run this computation with "
    "backend='reference' (the plain PyTorch loop, differentiable in every order)")


class _BackwardOp(torch.autograd.Function):
    """The fused backward op (bwd_name, with its backend suffix) as a differentiable
    node, for create_graph=True and torch.func: its own derivative raises instead
    of silently being zero (leaky_rnn's _BackwardFunction does the same for ops
    that have a second order)."""

    @staticmethod
    def forward(bwd_name, *args):
        return getattr(torch.ops.mts_kernels, bwd_name)(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_HIGHER_ORDER.format(
            what="a second-order gradient (create_graph=True, reverse over reverse)"))

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_HIGHER_ORDER.format(what="forward-mode AD of its gradient"))

    @staticmethod
    def vmap(info, in_dims, bwd_name, *args):
        # per-sample weight gradients: one fused call per vmapped sample
        return _transforms.per_sample(lambda *sample: _BackwardOp.apply(bwd_name, *sample), args,
                                      in_dims[1:], info.batch_size)


def _grads(ctx, bwd_name, grad_h):
    weight_hh, h, s, h0, weight_shortcut, alpha, lengths = ctx.saved_tensors
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    args = (grad_h, weight_hh, h, s, h0, weight_shortcut, alpha, *ctx.config, lengths)
    if torch.is_grad_enabled():  # create_graph=True or torch.func: a node that refuses a 2nd order
        dp, dw, db, dh0, dws, dalpha = _BackwardOp.apply(bwd_name, *args)
    else:
        dp, dw, db, dh0, dws, dalpha = getattr(torch.ops.mts_kernels, bwd_name)(*args)
    has_h0, has_bias, has_shortcut, has_alpha = ctx.has
    return (dp, dw, dh0 if has_h0 else None, db if has_bias else None,
            dws if has_shortcut else None, dalpha if has_alpha else None)


def _make_backward(bwd_name: str):
    def backward(ctx, grad_h, _grad_s):
        return (*_grads(ctx, bwd_name, grad_h), None, None, None)

    return backward


_NO_FORWARD_MODE = (
    "deep_transition_rnn: forward-mode AD (torch.func.jvp, jacfwd, hessian, "
    "torch.autograd.forward_ad) of the fused kernels is not implemented (no tangent kernel "
    "yet); reverse mode (grad, vjp, jacrev) and vmap work. Run this computation with "
    "backend='reference' (the plain PyTorch loop, differentiable in every mode and order)")


class _Function(torch.autograd.Function):
    """deep_transition_rnn for torch.func transforms (see _transforms): grad, vjp,
    jacrev and vmap run the fused kernels; forward mode raises."""

    @staticmethod
    def forward(suffix, p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse,
                lengths):
        return getattr(torch.ops.mts_kernels, f"deep_transition_rnn_fwd{suffix}")(
            p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.suffix = inputs[0]
        _setup_context(ctx, inputs[1:], output)

    @staticmethod
    def backward(ctx, grad_h, _grad_s):
        return (None, *_grads(ctx, f"deep_transition_rnn_bwd{ctx.suffix}", grad_h), None, None, None)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_FORWARD_MODE)

    @staticmethod
    def vmap(info, in_dims, suffix, p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity,
             reverse, lengths):
        n = info.batch_size
        _, dp, dw, dh0, db, dws, da, _, _, dl = in_dims
        if dw is None and db is None and dws is None and da is None:
            # shared weights: the vmapped samples fold into the batch, one fused call
            pb = _transforms.batch_to_front(p, dp, n)
            N, T, B, H = pb.shape
            p_f = pb.transpose(0, 1).reshape(T, N * B, H)
            h0_f = None if h0 is None else _transforms.batch_to_front(h0, dh0, n).reshape(N * B, H)
            lens_f = (None if lengths is None
                      else _transforms.batch_to_front(lengths, dl, n).reshape(N * B))
            h, s = _Function.apply(suffix, p_f, weight_hh, h0_f, bias_hh, weight_shortcut, alpha,
                                   nonlinearity, reverse, lens_f)
            L = s.size(0)
            return ((h.reshape(T, N, B, H).transpose(0, 1),
                     s.reshape(L, T, N, B, H).permute(2, 0, 1, 3, 4)), (0, 0))
        # a weight per sample (an ensemble): one fused call per sample
        args = (p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lengths)
        return _transforms.per_sample(lambda *sample: _Function.apply(suffix, *sample), args, in_dims[1:], n)


def _register(suffix: str) -> None:
    _transforms.register_fused(_OP, suffix, _fake_fwd, _fake_bwd, _make_backward, _setup_context)


# The Triton path as custom ops with the C++ schemas' signatures
# (mts_kernels/triton/deep_transition_rnn.py, imported on first call).
@torch.library.custom_op("mts_kernels::deep_transition_rnn_fwd_triton", mutates_args=())
def _deep_transition_rnn_fwd_triton(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor],
                                    bias_hh: Optional[Tensor], weight_shortcut: Optional[Tensor],
                                    alpha: Optional[Tensor], nonlinearity: str, reverse: bool,
                                    lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    from mts_kernels.triton import deep_transition_rnn as triton_dt

    return triton_dt.deep_transition_rnn_fwd(p, weight_hh, h0, bias_hh, weight_shortcut, alpha,
                                             nonlinearity, reverse, lengths)


@torch.library.custom_op("mts_kernels::deep_transition_rnn_bwd_triton", mutates_args=())
def _deep_transition_rnn_bwd_triton(grad_h: Tensor, weight_hh: Tensor, h: Tensor, s: Tensor,
                                    h0: Optional[Tensor], weight_shortcut: Optional[Tensor],
                                    alpha: Optional[Tensor], nonlinearity: str, reverse: bool,
                                    lengths: Optional[Tensor] = None
                                    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    from mts_kernels.triton import deep_transition_rnn as triton_dt

    return triton_dt.deep_transition_rnn_bwd(grad_h, weight_hh, h, s, h0, weight_shortcut, alpha,
                                             nonlinearity, reverse, lengths)


_register("_triton")
# a backend candidate once the Triton launchers are there (the package import does not import triton)
TRITON_KERNEL = importlib.util.find_spec("mts_kernels.triton.deep_transition_rnn") is not None
if TRITON_KERNEL:
    _backend.register_triton("deep_transition_rnn_fwd")
CPU_COMPILED = _extension.COMPILED and hasattr(torch.ops.mts_kernels, "deep_transition_rnn_fwd")
if CPU_COMPILED:
    _register("")


def _check_args(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, batch_first, cast=None):
    op = _OP
    _, B, H = check_projection(op, p, batch_first)

    def check(name, t, shape):
        check_operand(op, name, t, shape, p, cast)

    if not isinstance(weight_hh, Tensor):
        raise TypeError(f"{op}: weight_hh must be a torch.Tensor, got {type(weight_hh).__name__}")
    if weight_hh.dim() != 3 or weight_hh.size(0) < 1:
        raise ValueError(f"{op}: weight_hh must be (L, H, H) = (transition depth >= 1, {H}, {H}), "
                         f"got {tuple(weight_hh.shape)}")
    L = weight_hh.size(0)
    check("weight_hh", weight_hh, (L, H, H))
    if h0 is not None:
        check("h0", h0, (B, H))
    if bias_hh is not None:
        check("bias_hh", bias_hh, (L, H))
    if weight_shortcut is not None:
        if L < 2:
            raise ValueError(f"{op}: weight_shortcut needs a transition depth >= 2 (weight_hh.size(0)), "
                             f"got {L}")
        check("weight_shortcut", weight_shortcut, (H, H))
    if alpha is not None:
        check("alpha", alpha, (H,))
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")


def deep_transition_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                        bias_hh: Optional[Tensor] = None, weight_shortcut: Optional[Tensor] = None,
                        alpha: Optional[Tensor] = None, nonlinearity: str = "tanh",
                        reverse: bool = False, batch_first: bool = False, lengths=None,
                        backend: Optional[str] = None) -> Tensor:
    """One layer and direction of the deep-transition recurrence, fused forward and backward.

        s^1_t = phi(W_1 h_{t-1} + p_t + b_1)
        s^l_t = phi(W_l s^{l-1}_t + b_l)                     l = 2..L
                (weight_shortcut U: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
        h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t         (alpha None: h_t = s^L_t)

    p: (T, B, H) (or (B, T, H) when batch_first): the input projection W_ih x_t + b_ih
    for all steps, computed by the caller as one GEMM. weight_hh: (L, H, H), rows
    W_1..W_L as nn.Linear weights (L = 1 without shortcut is torch.nn.RNN, b_1
    playing bias_hh); bias_hh: (L, H) or None; weight_shortcut: (H, H) or None
    (needs L >= 2); alpha: (H,) leak per unit or None; h0: (B, H) or None (zeros).
    reverse runs t = T..1. lengths: None, or (B,) ints (tensor or list): sequence b
    runs its first L_b steps (reverse: t = L_b-1..0) and h is 0 beyond.

    Backends: 'cpu' (the fused C++ loop) for CPU tensors; for CUDA tensors 'triton'
    (there is no CUDA C++ kernel for this op yet, so 'auto' picks Triton there);
    'reference' is the plain PyTorch loop. A second-order gradient
    (create_graph=True twice) and forward-mode AD raise; use backend='reference'.
    Returns h shaped like p.
    """
    cast = _transforms.autocast_dtype(p.device) if isinstance(p, Tensor) else None
    _check_args(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, batch_first, cast)
    T, B, _ = check_projection(_OP, p, batch_first)
    lens = _lengths.check_lengths(_OP, lengths, B, T, p.device)
    requested = backend if backend is not None else os.environ.get(_backend.ENV_VAR)
    if requested == "cuda":
        raise _backend.BackendUnavailableError(
            "mts_kernels.deep_transition_rnn: there is no CUDA C++ kernel for this op yet; "
            "use backend='triton' (what backend='auto' picks for CUDA tensors) or 'reference'")
    be = _backend.resolve(backend, "deep_transition_rnn_fwd", p.device, _transforms.effective_dtype(p, cast))
    if be == "reference":
        if cast is not None:  # the loop is not an op: autocast it by hand, as the op's kernel does
            p, weight_hh, h0, bias_hh, weight_shortcut, alpha = _transforms.autocast_inputs(
                (p, weight_hh, h0, bias_hh, weight_shortcut, alpha), p.device.type, cast)
        with torch.autocast(p.device.type, enabled=False):
            return reference.deep_transition_rnn(
                p, weight_hh, h0, bias_hh=bias_hh, weight_shortcut=weight_shortcut, alpha=alpha,
                nonlinearity=nonlinearity, reverse=reverse, batch_first=batch_first, lengths=lens)
    suffix = "_triton" if be == "triton" else ""
    if be == "triton":
        from mts_kernels.triton import deep_transition_rnn as triton_dt

        max_hidden = getattr(triton_dt, "MAX_HIDDEN", None)
        if max_hidden is not None and p.size(2) > max_hidden:
            raise _backend.BackendUnavailableError(
                f"deep_transition_rnn: the Triton kernel supports hidden sizes up to {max_hidden}, "
                f"got {p.size(2)}; use backend='reference'")
    pt = p.transpose(0, 1) if batch_first else p
    args = (pt, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lens)
    if _transforms.transform_active():
        if cast is not None:
            args = _transforms.autocast_inputs(args, p.device.type, cast)
        h, _ = _Function.apply(suffix, *args)
    else:
        h, _ = getattr(torch.ops.mts_kernels, f"deep_transition_rnn_fwd{suffix}")(*args)
    return h.transpose(0, 1) if batch_first else h
