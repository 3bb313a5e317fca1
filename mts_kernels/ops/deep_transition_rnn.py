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
Forward mode and the backward's own derivative (a second order) use the
linearised recurrence (_tangent) with leaky_rnn's machinery (SECOND_ORDER).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch
from torch import Tensor

from mts_kernels import _extension, reference
from mts_kernels.ops import _backend, _lengths, _transforms
from mts_kernels.ops import input_projection as _projection
from mts_kernels.ops.leaky_rnn import (NONLINEARITIES, SECOND_ORDER, _BackwardFunction, _delayed, _live,
                                      _processing_order, _Refuse, check_operand, check_projection,
                                      second_order)

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
    ctx.set_materialize_grads(False)  # no zeros for the grad of s (nor of an unused h): None is handled
    ctx.config = (nonlinearity, reverse)
    ctx.has = (h0 is not None, bias_hh is not None, weight_shortcut is not None, alpha is not None)
    # p and bias_hh only for a second order, which recomputes s from them (_moving_s)
    ctx.save_for_backward(weight_hh, h, s, h0, weight_shortcut, alpha, lengths, p, bias_hh)


def _previous(h: Tensor, h0: Optional[Tensor], reverse: bool, lengths: Optional[Tensor]) -> Tensor:
    """h_{t-1} for every step t (the state the step reads, in each row's processing
    order; h0 or zeros at its first step); padded steps hold whatever comes out."""
    start = h.new_zeros(h.shape[1:]) if h0 is None else h0
    return _processing_order(_delayed(_processing_order(h, reverse, lengths), start, 1), reverse, lengths)


def _moving_s(s, p, weight_hh, h, h0, bias_hh, weight_shortcut, nonlinearity, reverse, lengths):
    """The saved sub-layer states s (L, T, B, H) with the derivative of their
    function of (p, h_{t-1}, W, b, U): s is a non-differentiable output of the
    op, yet a second order (or reverse over forward) must see how it moves. With
    h known every step's transition is one pass of L batched GEMMs over all T
    steps; the value stays the kernel's (zero at padded steps)."""
    phi = torch.tanh if nonlinearity == "tanh" else torch.relu
    h_prev = _previous(h, h0, reverse, lengths)
    L = weight_hh.size(0)
    x, layers = h_prev, []
    for l in range(L):
        z = _projection.times_t(x, weight_hh[l])  # the same bits on any thread count
        if l == 0:
            z = z + p
        if bias_hh is not None:
            z = z + bias_hh[l]
        if l == L - 1 and weight_shortcut is not None:
            z = z + _projection.times_t(h_prev, weight_shortcut)
        x = phi(z)
        layers.append(x)
    s_fn = torch.stack(layers)
    live = _live(h, lengths)
    if live is not None:
        s_fn = torch.where(live, s_fn, s_fn.new_zeros(()))
    return s + (s_fn - s_fn.detach())


def _grads(ctx, bwd_name, grad_h):
    weight_hh, h, s, h0, weight_shortcut, alpha, lengths, p, bias_hh = ctx.saved_tensors
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    nonlinearity, reverse = ctx.config
    grad_mode = torch.is_grad_enabled()  # create_graph=True or torch.func: a node with a second order
    if grad_mode:
        s = _moving_s(s, p, weight_hh, h, h0, bias_hh, weight_shortcut, nonlinearity, reverse, lengths)
    args = (grad_h, weight_hh, h, s, h0, weight_shortcut, alpha, *ctx.config, lengths)
    if grad_mode:
        dp, dw, db, dh0, dws, dalpha = _BackwardFunction.apply(bwd_name, *args)
    else:
        dp, dw, db, dh0, dws, dalpha = getattr(torch.ops.mts_kernels, bwd_name)(*args)
    has_h0, has_bias, has_shortcut, has_alpha = ctx.has
    return (dp, dw, dh0 if has_h0 else None, db if has_bias else None,
            dws if has_shortcut else None, dalpha if has_alpha else None)


def _make_backward(bwd_name: str):
    def backward(ctx, grad_h, _grad_s):
        return (*_grads(ctx, bwd_name, grad_h), None, None, None)

    return backward


def _tangent(primals, tangents, nonlinearity, reverse, lengths):
    """The tangent of h for tangents of (p, weight_hh, bias_hh, h0, weight_shortcut,
    alpha), the linearised recurrence (None tangents are zero), s^0 = h_{t-1},
    phi' from s^l (tanh: 1 - s^2, relu: s > 0):

        sdot^1_t = phi'(s^1_t) (W_1 hdot_{t-1} + Wdot_1 h_{t-1} + pdot_t + bdot_1)
        sdot^l_t = phi'(s^l_t) (W_l sdot^{l-1}_t + Wdot_l s^{l-1}_t + bdot_l
                               [l = L: + U hdot_{t-1} + Udot h_{t-1}])
        hdot_t   = alpha hdot_{t-1} + alphadot (h_{t-1} - s^L_t) + (1 - alpha) sdot^L_t

    sdot^l splits into a part driven by the primal states (Wdot, pdot, bdot,
    Udot), L GEMMs over all steps at once, and a part linear in hdot_{t-1}; only
    the latter (L products per step, plus the shortcut's) is sequential: the
    fused deep_transition_rnn_tangent op (CPU, CUDA; its gradient the fused
    adjoint op), or a PyTorch step loop under torch.func."""
    weight_hh, h, s, h0, weight_shortcut, alpha = primals
    dp, dw, db, dh0, dws, dalpha = tangents
    T, B, H = h.shape
    L = weight_hh.size(0)
    h_prev = _previous(h, h0, reverse, lengths)
    gains = (1 - s * s) if nonlinearity == "tanh" else (s > 0).to(s.dtype)
    # the hdot-free part of every sdot^l, for all steps at once
    drive = torch.zeros_like(h) if dp is None else dp
    for l in range(L):
        if l > 0:
            drive = _projection.times_t(drive, weight_hh[l])  # as in _moving_s
        if dw is not None:
            drive = drive + _projection.times_t(h_prev if l == 0 else s[l - 1], dw[l])
        if db is not None:
            drive = drive + db[l]
        if l == L - 1 and dws is not None:
            drive = drive + _projection.times_t(h_prev, dws)
        drive = gains[l] * drive
    gain_top = gains[L - 1]
    if alpha is not None:
        drive = (1 - alpha) * drive
        gain_top = (1 - alpha) * gain_top
    if dalpha is not None:
        drive = drive + dalpha * (h_prev - s[L - 1])
    # the sequential part: the fused op (one loop, a registered adjoint) where it can run
    if _fused_tangent(drive, gain_top, weight_hh, alpha, weight_shortcut, dh0):
        gains_t = torch.cat([gains[:L - 1], gain_top.expand(T, B, H).unsqueeze(0)])
        args = (drive, gains_t, weight_hh, alpha, weight_shortcut, dh0, reverse, lengths)
        if _transforms.transform_active():
            return _TangentFunction.apply(*args)[0]
        return torch.ops.mts_kernels.deep_transition_rnn_tangent(*args)[0]
    # else a PyTorch step loop in processing order (under torch.func, mixed dtypes)
    live = _live(h, lengths)
    drive = _processing_order(drive, reverse, lengths)
    gains = torch.stack([_processing_order(g, reverse, lengths) for g in gains[:L - 1]] +
                        [_processing_order(gain_top, reverse, lengths)])
    if live is not None:
        live = _processing_order(live.expand(T, B, 1), reverse, lengths)
    w_t = weight_hh.transpose(1, 2)
    u_t = None if weight_shortcut is None else weight_shortcut.transpose(0, 1)
    prev = h.new_zeros(B, H) if dh0 is None else dh0
    out = []
    for k in range(T):
        x = prev
        for l in range(L):
            x = x @ w_t[l]
            if l == L - 1 and u_t is not None:
                x = x + prev @ u_t
            x = gains[l, k] * x
        hk = x + drive[k]
        if alpha is not None:
            hk = hk + alpha * prev
        if live is not None:
            hk = torch.where(live[k], hk, hk.new_zeros(()))  # a select: no 0 * NaN
        out.append(hk)
        prev = hk
    return _processing_order(torch.stack(out), reverse, lengths)


def _fused_tangent(*operands) -> bool:
    """deep_transition_rnn_tangent for these operands (CPU, or CUDA where compiled;
    under torch.func through _TangentFunction)."""
    return _backend.compiled_op_runs("deep_transition_rnn_tangent", operands)


def _tangent_op_fake(drive, gains, weight_hh, keep, weight_shortcut, start, reverse, lengths=None):
    return drive.new_empty(drive.shape), drive.new_empty(gains.shape)


def _tangent_op_bwd_fake(grad_h, gains, weight_hh, keep, weight_shortcut, start, h, a, reverse, lengths=None):
    T, B, H = h.shape
    return (h.new_empty((T, B, H)), h.new_empty(gains.shape), h.new_empty(weight_hh.shape),
            h.new_empty((H,) if keep is not None else (0,)),
            h.new_empty((H, H) if weight_shortcut is not None else (0,)), h.new_empty((B, H)))


def _tangent_op_setup(ctx, inputs, output):
    drive, gains, weight_hh, keep, weight_shortcut, start, reverse, lengths = inputs
    h, a = output
    ctx.mark_non_differentiable(a)
    ctx.set_materialize_grads(False)  # no zeros for the grad of a (nor of an unused h): None is handled
    ctx.reverse = reverse
    ctx.has = (keep is not None, weight_shortcut is not None, start is not None)
    ctx.save_for_backward(gains, weight_hh, keep, weight_shortcut, start, h, a, lengths)


def _tangent_op_backward(ctx, grad_h, _grad_a):
    """The adjoint loop, one fused op (deep_tangent_step.h). It is the second order
    of deep_transition_rnn; with create_graph=True its outputs get a node whose
    derivative (a third order) raises rather than a graph that would miss terms."""
    gains, weight_hh, keep, weight_shortcut, start, h, a, lengths = ctx.saved_tensors
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    args = (grad_h.contiguous(), gains, weight_hh, keep, weight_shortcut, start, h, a, ctx.reverse, lengths)
    with torch.no_grad():
        if _transforms.transform_active():  # a vmap rule (jacrev batches this call), not the slow fallback
            out = _TangentBwdFunction.apply(*args)
        else:
            out = torch.ops.mts_kernels.deep_transition_rnn_tangent_bwd(*args)
    has_keep, has_ws, has_start = ctx.has
    out = [o if use else None for o, use in zip(out, (True, True, True, has_keep, has_ws, has_start))]
    if torch.is_grad_enabled():
        keys = [t for t in (grad_h, gains, weight_hh, keep, weight_shortcut, start, h)
                if t is not None and t.requires_grad]
        idx = [i for i, o in enumerate(out) if o is not None]
        if keys:
            for i, o in zip(idx, _Refuse.apply(_OP, len(idx), *[out[i] for i in idx], *keys)):
                out[i] = o
    return (*out, None, None)


class _TangentBwdFunction(torch.autograd.Function):
    """deep_transition_rnn_tangent_bwd under torch.func: one fused call per vmapped
    sample (the weight gradients are per sample); not differentiable (it is only
    called under no_grad, and _Refuse guards what it returns)."""

    @staticmethod
    def forward(*args):
        return torch.ops.mts_kernels.deep_transition_rnn_tangent_bwd(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(f"{_OP}: a third-order gradient of the fused kernels' backward is not implemented; "
                           "use backend='reference'")

    @staticmethod
    def vmap(info, in_dims, *args):
        return _transforms.per_sample(lambda *x: _TangentBwdFunction.apply(*x), args, in_dims, info.batch_size)


class _TangentFunction(torch.autograd.Function):
    """deep_transition_rnn_tangent under torch.func transforms (the registered
    op's generated autograd does not support them): the same op and fused adjoint,
    a vmap rule folding the samples into the batch where the weights are shared,
    and a jvp (forward over forward) that raises."""

    @staticmethod
    def forward(drive, gains, weight_hh, keep, weight_shortcut, start, reverse, lengths):
        return torch.ops.mts_kernels.deep_transition_rnn_tangent(drive, gains, weight_hh, keep, weight_shortcut,
                                                                 start, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _tangent_op_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad_h, grad_a):
        return _tangent_op_backward(ctx, grad_h, grad_a)

    @staticmethod
    def jvp(ctx, *tangents):
        _transforms.check_forward_over_forward(_OP)
        raise RuntimeError(f"{_OP}: forward mode through the tangent's fused op is forward over forward; "
                           "use torch.func.jacrev(torch.func.jacfwd(f)) or backend='reference'")

    @staticmethod
    def vmap(info, in_dims, drive, gains, weight_hh, keep, weight_shortcut, start, reverse, lengths):
        n = info.batch_size
        d_drive, d_gains, d_w, d_keep, d_ws, d_start, _, d_len = in_dims
        args = (drive, gains, weight_hh, keep, weight_shortcut, start, reverse, lengths)
        if d_w is None and d_ws is None and d_keep is None:
            front = lambda t, d: _transforms.batch_to_front(t, d, n)  # noqa: E731
            dr = front(drive, d_drive)
            N, T, B, H = dr.shape
            g = front(gains, d_gains)  # (N, L, T, B, H)
            L = g.shape[1]
            h, a = _TangentFunction.apply(
                dr.transpose(0, 1).reshape(T, N * B, H),
                g.permute(1, 2, 0, 3, 4).reshape(L, T, N * B, H), weight_hh, keep, weight_shortcut,
                None if start is None else front(start, d_start).reshape(N * B, H), reverse,
                None if lengths is None else front(lengths, d_len).reshape(N * B))
            return ((h.reshape(T, N, B, H).transpose(0, 1), a.reshape(L, T, N, B, H).permute(2, 0, 1, 3, 4)),
                    (0, 0))
        return _transforms.per_sample(lambda *x: _TangentFunction.apply(*x), args, in_dims, n)


if _extension.COMPILED and hasattr(torch.ops.mts_kernels, "deep_transition_rnn_tangent"):
    torch.library.register_fake("mts_kernels::deep_transition_rnn_tangent")(_tangent_op_fake)
    torch.library.register_fake("mts_kernels::deep_transition_rnn_tangent_bwd")(_tangent_op_bwd_fake)
    torch.library.register_autograd("mts_kernels::deep_transition_rnn_tangent", _tangent_op_backward,
                                    setup_context=_tangent_op_setup)


def _second_order(args, cots):
    """deep_transition_rnn_bwd(grad_h, weight_hh, h, s, h0, weight_shortcut, alpha,
    nonlinearity, reverse, lengths) -> (dp, dw, db, dh0, dws, dalpha): its gradients.
    p and bias_hh are no inputs of the bwd op: their part reaches them through s
    (see _moving_s)."""
    grad_h, weight_hh, h, s, h0, weight_shortcut, alpha, nonlinearity, reverse, lengths = args
    cp, cw, cb, ch0, cws, calpha = cots
    tangents = (cp, cw, cb, None if h0 is None else ch0,
                None if weight_shortcut is None else cws, None if alpha is None else calpha)
    fn = lambda prims, c: _tangent(prims, c, nonlinearity, reverse, lengths)
    g = second_order(fn, grad_h, (weight_hh, h, s, h0, weight_shortcut, alpha), tangents)
    return (*g, None, None, None)


SECOND_ORDER["deep_transition_rnn_bwd"] = _second_order


class _Function(torch.autograd.Function):
    """deep_transition_rnn for torch.func transforms and forward-mode AD (see
    _transforms)."""

    @staticmethod
    def forward(suffix, p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse,
                lengths):
        return getattr(torch.ops.mts_kernels, f"deep_transition_rnn_fwd{suffix}")(
            p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.suffix = inputs[0]
        _setup_context(ctx, inputs[1:], output)
        p, weight_hh, h0, bias_hh, weight_shortcut, alpha = inputs[1:7]
        ctx.save_for_forward(weight_hh, output[0], output[1], h0, weight_shortcut, alpha, inputs[-1],
                             p, bias_hh)

    @staticmethod
    def backward(ctx, grad_h, _grad_s):
        return (None, *_grads(ctx, f"deep_transition_rnn_bwd{ctx.suffix}", grad_h), None, None, None)

    @staticmethod
    def jvp(ctx, _suffix, dp, dw, dh0, db, dws, dalpha, *_):
        _transforms.check_forward_over_forward(_OP)
        weight_hh, h, s, h0, weight_shortcut, alpha, lengths, p, bias_hh = ctx.saved_tensors
        nonlinearity, reverse = ctx.config
        has_h0, has_bias, has_shortcut, has_alpha = ctx.has
        # reverse over forward (jacrev(jacfwd)) differentiates this through s
        s = _moving_s(s, p, weight_hh, h, h0, bias_hh, weight_shortcut, nonlinearity, reverse, lengths)
        dh = _tangent((weight_hh, h, s, h0, weight_shortcut, alpha),
                      (dp, dw, db if has_bias else None, dh0 if has_h0 else None,
                       dws if has_shortcut else None, dalpha if has_alpha else None),
                      nonlinearity, reverse, lengths)
        return dh, None

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


# the Triton kernel's hidden-size limit (its MAX_HIDDEN; not imported here: the
# package import does not import triton)
TRITON_MAX_HIDDEN = 128

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
    (the persistent kernel, H <= 128) and 'cuda' (the persistent CUDA kernel of
    csrc/deep/deep_persistent.h where its plan fits the device, else
    csrc/deep/deep_loop.h: per step L cuBLAS GEMMs and L pointwise kernels, any H);
    'auto' picks Triton up to H = 128 and CUDA beyond; 'reference' is the plain PyTorch loop. Forward mode (jvp, jacfwd, forward_ad)
    and a second order (create_graph=True, then backward; jacrev(jacfwd)) work
    through the linearised recurrence; a third order raises (backend='reference').
    Returns h shaped like p.
    """
    cast = _transforms.autocast_dtype(p.device) if isinstance(p, Tensor) else None
    _check_args(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity, batch_first, cast)
    T, B, _ = check_projection(_OP, p, batch_first)
    lens = _lengths.check_lengths(_OP, lengths, B, T, p.device)
    be = _backend.resolve(backend, "deep_transition_rnn_fwd", p.device, _transforms.effective_dtype(p, cast))
    requested = backend if backend is not None else os.environ.get(_backend.ENV_VAR)
    if be == "cuda" and requested in (None, "auto") and p.size(2) <= TRITON_MAX_HIDDEN and \
            _backend.why_unavailable("triton", "deep_transition_rnn_fwd", p.device, p.dtype) is None:
        # the cost rule on CUDA tensors: the persistent Triton kernel (all W_l on
        # chip, one launch per call) where it fits, the CUDA loop (2 L launches
        # per step) beyond, where Triton cannot run
        be = "triton"
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
