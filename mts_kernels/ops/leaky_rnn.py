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
from mts_kernels.ops import _backend, _lengths, _transforms
from mts_kernels.ops import input_projection as _projection

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


_NO_HIGHER_ORDER = (
    "{op}: {what} of the fused kernels' backward is not implemented. Reverse mode in "
    "any order up to two (create_graph=True, then backward), forward mode (jvp, jacfwd) "
    "and reverse over forward work: for Hessians use torch.func.jacrev(torch.func.jacfwd(f)) "
    "or torch.func.vjp of a torch.func.jvp. Or run this computation with backend='reference' "
    "(the plain PyTorch loop, differentiable in every order)")

# bwd_name -> (tangent function, the bwd op's differentiable inputs after grad_h);
# see _BackwardFunction.backward. clockwork_rnn registers its own.
SECOND_ORDER: dict = {}


def second_order(tangent_fn, grad_h: Tensor, prims, cots):
    """Gradients of <c, J(prims)^T v> (the fused backward's outputs dotted with
    their cotangents c) with respect to v = grad_h and every primal.

    <c, J^T v> = <J c, v>: J c is the op's tangent in the direction c (the
    linearised recurrence, tangent_fn), so one reverse pass through the tangent
    gives all of them: d/dv = J c, d/dprims = d<J c, v>/dprims, with prims taken as
    the backward op's own inputs (h and u as given, not recomputed)."""
    with torch.enable_grad():
        v = grad_h.detach().requires_grad_()
        ps = [None if t is None else t.detach().requires_grad_(t.is_floating_point() and t.numel() > 0)
              for t in prims]
        y = tangent_fn(ps, cots)
        wrt = [v] + [t for t in ps if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad((y * v).sum(), wrt, allow_unused=True))
    dv = next(got)
    out = [next(got) if (t is not None and t.requires_grad) else None for t in ps]
    return (dv, *out)


class _BackwardFunction(torch.autograd.Function):
    """A fused backward op (bwd_name: "leaky_rnn_bwd", "clockwork_rnn_bwd", ...) as
    a differentiable node (create_graph=True, torch.func). Its derivative (a
    second-order gradient) comes from SECOND_ORDER; forward mode through it and a
    third order raise instead of silently being zero."""

    @staticmethod
    def forward(bwd_name, *args):
        return getattr(torch.ops.mts_kernels, bwd_name)(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[0].split("_bwd")[0]
        ctx.bwd_name = inputs[0]
        args = inputs[1:]
        ctx.is_tensor = [isinstance(a, Tensor) for a in args]
        ctx.constants = [None if isinstance(a, Tensor) else a for a in args]
        ctx.save_for_backward(*[a for a in args if isinstance(a, Tensor)])

    @staticmethod
    def backward(ctx, *grads):
        if _transforms.transform_active():
            raise RuntimeError(_NO_HIGHER_ORDER.format(
                op=ctx.op, what="a torch.func transform of its second-order gradient"))
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if is_t else c for is_t, c in zip(ctx.is_tensor, ctx.constants)]
        # the op's registered name without a backend suffix ("_triton")
        fn = SECOND_ORDER[ctx.bwd_name.replace("_triton", "")]
        out = fn(args, grads)
        if torch.is_grad_enabled():
            # create_graph=True here: the second-order gradients are computed from
            # detached inputs, so they get a node that refuses a third order
            # rather than a graph that would silently miss terms
            keys = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
            idx = [i for i, g in enumerate(out) if g is not None]
            if keys and idx:
                refused = _Refuse.apply(ctx.op, len(idx), *[out[i] for i in idx], *keys)
                out = list(out)
                for i, g in zip(idx, refused):
                    out[i] = g
        return (None, *out)

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_HIGHER_ORDER.format(
            op=ctx.op, what="forward-mode AD of its gradient (forward over reverse, "
                            "e.g. torch.func.hessian)"))

    @staticmethod
    def vmap(info, in_dims, bwd_name, *args):
        # The weight gradients are per vmapped sample (per-sample gradients), so
        # the samples cannot share one call: one fused call each.
        return _transforms.per_sample(lambda *sample: _BackwardFunction.apply(bwd_name, *sample), args,
                                      in_dims[1:], info.batch_size)


class _Refuse(torch.autograd.Function):
    """Identity on the first n tensors; its derivative (a third order) raises, in
    eager autograd and under torch.func transforms alike (setup_context style, a
    generated vmap rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(op, n, *tensors):
        return tuple(t.clone() for t in tensors[:n])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.op = inputs[0]

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_NO_HIGHER_ORDER.format(
            op=ctx.op, what="a third-order gradient (create_graph=True through a second-order one)"))

    @staticmethod
    def jvp(ctx, *tangents):
        raise RuntimeError(_NO_HIGHER_ORDER.format(
            op=ctx.op, what="forward-mode AD of a second-order gradient"))


def _leaky_second_order(args, cots):
    """leaky_rnn_bwd(grad_h, weight_hh, h, u, h0, alpha, weight_skip, skip, dilation,
    nonlinearity, reverse, lengths) -> (dp, dw, dh0, dalpha, dws): its gradients."""
    grad_h, weight_hh, h, u, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse, lengths = args
    cp, cw, ch0, calpha, cws = cots
    tangents = (cp, cw, None if h0 is None else ch0, None if alpha is None else calpha,
                None if weight_skip is None else cws)
    fn = lambda prims, c: _tangent(prims, c, skip, dilation, nonlinearity, reverse, lengths)
    g = second_order(fn, grad_h, (weight_hh, h, u, h0, alpha, weight_skip), tangents)
    # u is a non-differentiable output of the forward; its dependence on h and alpha
    # is carried by _tangent (see there)
    dgrad_h, dw, dh, _du, dh0, dalpha, dws = g
    return (dgrad_h, dw, dh, None, dh0, dalpha, dws) + (None,) * 5


SECOND_ORDER["leaky_rnn_bwd"] = _leaky_second_order


def _fused_backward(bwd_name, grad_h, saved, config, lengths):
    weight_hh, h, u, h0, alpha, weight_skip = saved
    args = (grad_h, weight_hh, h, u, h0, alpha, weight_skip, *config, lengths)
    if torch.is_grad_enabled():  # create_graph=True or torch.func: a node that refuses a 2nd order
        return _BackwardFunction.apply(bwd_name, *args)
    return getattr(torch.ops.mts_kernels, bwd_name)(*args)


def _setup_context(ctx, inputs, output):
    p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse, lengths = inputs
    h, u = output
    ctx.mark_non_differentiable(u)
    ctx.set_materialize_grads(False)  # no zeros for the grad of u (nor of an unused h): None is handled
    ctx.config = (skip, dilation, nonlinearity, reverse)
    ctx.has = (h0 is not None, alpha is not None, weight_skip is not None)
    ctx.save_for_backward(weight_hh, h, u, h0, alpha, weight_skip, lengths)


def _grads(ctx, bwd_name, grad_h):
    weight_hh, h, u, h0, alpha, weight_skip, lengths = ctx.saved_tensors
    if grad_h is None:
        grad_h = torch.zeros_like(h)
    dp, dw, dh0, dalpha, dws = _fused_backward(bwd_name, grad_h,
                                               (weight_hh, h, u, h0, alpha, weight_skip),
                                               ctx.config, lengths)
    has_h0, has_alpha, has_skip = ctx.has
    return (dp, dw, dh0 if has_h0 else None, dalpha if has_alpha else None,
            dws if has_skip else None)


def _make_backward(bwd_name: str):
    def backward(ctx, grad_h, _grad_u):
        return (*_grads(ctx, bwd_name, grad_h), None, None, None, None, None)

    return backward


def _processing_order(x: Tensor, reverse: bool, lengths: Optional[Tensor]) -> Tensor:
    """(T, B, H) in each row's processing order: step k of row b is its k-th
    processed step (reverse: t = L_b - 1 - k); padded steps stay in place. An
    involution, so it also maps back."""
    if not reverse:
        return x
    if lengths is None:
        return x.flip(0)
    t = torch.arange(x.size(0), device=x.device).unsqueeze(1)
    L = lengths.to(x.device).unsqueeze(0)
    index = torch.where(t < L, L - 1 - t, t)
    return x.gather(0, index.unsqueeze(-1).expand(x.shape))


def _live(h: Tensor, lengths: Optional[Tensor]) -> Optional[Tensor]:
    """(T, B, 1) mask of the steps each row runs (None: all)."""
    if lengths is None:
        return None
    steps = torch.arange(h.size(0), device=h.device).unsqueeze(1)
    return (steps < lengths.to(h.device).unsqueeze(0)).unsqueeze(-1)


def _delayed(x: Tensor, start: Tensor, d: int) -> Tensor:
    """x_{k-d} for every step k of a processing-order (T, B, H) tensor, start for k < d."""
    T = x.size(0)
    if d >= T:
        return start.expand(x.shape)
    return torch.cat([start.expand(d, *start.shape), x[:T - d]], 0)


def _tangent(primals, tangents, skip, dilation, nonlinearity, reverse, lengths):
    """The tangent of h for tangents of (p, weight_hh, h0, alpha, weight_skip): the
    linearised recurrence, in processing order (None tangents are zero),

        zdot_k = pdot_k + W hdot_{k-d} + Wdot h_{k-d} [+ Ws hdot_{k-s} + Wsdot h_{k-s}]
        hdot_k = alpha hdot_{k-d} + alphadot (h_{k-d} - u_k) + (1 - alpha) phi'(u_k) zdot_k

    The terms of the primal states (Wdot h, alphadot (h - u)) are one GEMM /
    pointwise pass over all steps; what stays sequential, hdot_k = drive_k +
    alpha hdot_{k-d} + gain_k (W hdot_{k-d} [+ Ws hdot_{k-s}]), is the fused
    leaky_rnn_tangent op on the CPU (its gradient: the same op on the adjoint,
    so a second order is no autograd through a loop) and a PyTorch step loop
    elsewhere (_linear_loop)."""
    weight_hh, h, u, h0, alpha, weight_skip = primals
    dp, dw, dh0, dalpha, dws = tangents
    T, B, H = h.shape
    if u.numel() == 0:  # no leak: the kernel stores h only, and h = u
        u = h
    h_ord, u_ord = _processing_order(h, reverse, lengths), _processing_order(u, reverse, lengths)
    start = h.new_zeros(B, H) if h0 is None else h0
    h_del = _delayed(h_ord, start, dilation)
    if alpha is not None:
        # u is a non-differentiable output of the op, yet a reverse-over-forward
        # derivative (jacrev(jacfwd)) must see how it moves: it is the function
        # u = (h_t - alpha h_{t-d}) / (1 - alpha) of the differentiable outputs, so
        # take the saved value with that function's gradient (alpha < 1)
        u_fn = (h_ord - alpha * h_del) / (1 - alpha)
        u_ord = u_ord + (u_fn - u_fn.detach())
    gain = (1 - u_ord * u_ord) if nonlinearity == "tanh" else (u_ord > 0).to(u_ord.dtype)
    if alpha is not None:
        gain = gain * (1 - alpha)
    # everything that does not depend on the tangent state, for all steps at once
    drive = torch.zeros_like(h_ord) if dp is None else _processing_order(dp, reverse, lengths)
    # projection ops where they apply (a second order; forward AD takes matmul):
    # the same bits on any thread count
    if dw is not None:
        drive = drive + _projection.times_t(h_del, dw)
    if skip and dws is not None:
        drive = drive + _projection.times_t(_delayed(h_ord, start, skip), dws)
    drive = gain * drive
    if dalpha is not None:
        drive = drive + dalpha * (h_del - u_ord)
    live = _live(h, lengths)
    if live is not None:  # rows that ended keep a zero tangent (their output is 0)
        drive = torch.where(live, drive, drive.new_zeros(()))
    start_dot = h.new_zeros(B, H) if dh0 is None else dh0
    ws = weight_skip if skip else None
    if _fused_tangent(drive, gain, weight_hh, alpha, ws, start_dot):
        order = lambda x: _processing_order(x, reverse, lengths)
        return tangent_op(order(drive), order(gain), weight_hh, alpha, ws, start_dot, skip, dilation, False,
                          reverse, lengths)
    out = _linear_loop(drive, gain, weight_hh, alpha, ws, start_dot, skip, dilation, live)
    return _processing_order(out, reverse, lengths)


def _linear_loop(drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, live):
    """hdot_k = drive_k + keep_k hdot_{k-d} + gain_k (W hdot_{k-d} [+ Ws hdot_{k-s}])
    in processing order (hdot = start before the first steps; keep (H,) or per step;
    live: (T, B, 1) bool mask of the steps each row runs, or None), as a PyTorch step
    loop."""
    out = []
    w_t = weight_hh.transpose(0, 1)
    ws_t = weight_skip.transpose(0, 1) if skip else None
    for k in range(drive.size(0)):
        prev = out[k - dilation] if k >= dilation else start
        z = prev @ w_t
        if skip:
            z = z + (out[k - skip] if k >= skip else start) @ ws_t
        hk = gain[k] * z + drive[k]
        if keep is not None:
            hk = hk + (keep if keep.dim() == 1 else keep[k]) * prev
        if live is not None:
            hk = torch.where(live[k], hk, hk.new_zeros(()))  # a select: no 0 * NaN
        out.append(hk)
    return torch.stack(out)


TANGENT_COMPILED = _extension.COMPILED and hasattr(torch.ops.mts_kernels, "leaky_rnn_tangent")


def _fused_tangent(*operands: Optional[Tensor]) -> bool:
    """The fused leaky_rnn_tangent op for these operands (CPU, or CUDA where
    compiled; mixed dtypes, e.g. under autocast, take the loop's type promotion).
    Under torch.func transforms it runs through _TangentFunction (tangent_op)."""
    return _backend.compiled_op_runs("leaky_rnn_tangent", operands)


def tangent_op(*args: object) -> Tensor:
    """mts_kernels::leaky_rnn_tangent(*args): the registered op (its autograd from
    register_autograd: eager, torch.compile), or under torch.func transforms and
    forward-mode AD the same op through _TangentFunction (setup_context, jvp and
    vmap rules, which the generated autograd has not got)."""
    if _transforms.transform_active():
        return _TangentFunction.apply(*args)
    return torch.ops.mts_kernels.leaky_rnn_tangent(*args)


def _tangent_fake(drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, gain_inside,
                  reverse, lengths=None):
    return drive.new_empty(drive.shape)


def _tangent_setup(ctx, inputs, output):
    drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, gain_inside, reverse, lengths = inputs
    ctx.config = (skip, dilation, gain_inside, reverse)
    ctx.has = (keep is not None, weight_skip is not None, start is not None)
    ctx.save_for_backward(gain, weight_hh, keep, weight_skip, start, output, lengths)


def _tangent_backward(ctx, grad):
    """The adjoint of the linear recurrence, lambda_k = c_k + (keep lambda)_{k+d} +
    W^T (gain lambda)_{k+d} [+ Ws^T (gain lambda)_{k+s}], is the same op with
    transposed weights, gain inside and the other processing order; the gradients
    of gain, the weights, keep and start are pointwise passes and GEMMs over all
    steps."""
    gain, w, keep, ws, start, h, lengths = ctx.saved_tensors
    skip, dilation, gain_inside, reverse = ctx.config
    if gain_inside:
        raise RuntimeError("leaky_rnn_tangent: the adjoint form (gain_inside=True) has no derivative here; "
                           "it is a third order of leaky_rnn, which raises (use backend='reference')")
    lam = tangent_op(grad, gain, w.t(), keep, None if ws is None else ws.t(), None, skip, dilation, True,
                     not reverse, lengths)
    order = lambda x: _processing_order(x, reverse, lengths)
    B, H = h.shape[1], h.shape[2]
    lam_o, h_o, gain_o = order(lam), order(h), order(gain)
    st = h.new_zeros(B, H) if start is None else start
    h_del = _delayed(h_o, st, dilation)
    e = gain_o * lam_o
    # the GEMMs through the projection ops on the CPU: the same bits on any thread count
    z = _projection.times_t(h_del, w)
    h_sk = None
    if ws is not None:
        h_sk = _delayed(h_o, st, skip)
        z = z + _projection.times_t(h_sk, ws)
    gram = _projection.gram
    d_w = gram(e, h_del)
    d_ws = gram(e, h_sk) if ws is not None else None
    d_keep = None
    if keep is not None:  # (H,), or (T, B, H): read at each step (clockwork's hold)
        d_keep = (lam_o * h_del).sum((0, 1)) if keep.dim() == 1 else order(lam_o * h_del)
    d_start = None
    if start is not None:
        # (B, H) @ (H, H) as a one-step projection by W^T (see z above)
        d_start = _projection.times_t(e[:dilation].sum(0, keepdim=True), w.t())[0]
        if keep is not None:
            kept = (keep if keep.dim() == 1 else order(keep)) * lam_o
            d_start = d_start + kept[:dilation].sum(0)
        if ws is not None:
            d_start = d_start + _projection.times_t(e[:skip].sum(0, keepdim=True), ws.t())[0]
    has_keep, has_ws, has_start = ctx.has
    return (lam, order(lam_o * z), d_w, d_keep if has_keep else None, d_ws if has_ws else None,
            d_start if has_start else None, None, None, None, None, None)


if TANGENT_COMPILED:
    torch.library.register_fake("mts_kernels::leaky_rnn_tangent")(_tangent_fake)
    torch.library.register_autograd("mts_kernels::leaky_rnn_tangent", _tangent_backward,
                                    setup_context=_tangent_setup)


class _TangentFunction(torch.autograd.Function):
    """leaky_rnn_tangent under torch.func transforms and forward-mode AD: the same
    op and gradient (_tangent_backward), a vmap rule that folds the samples into
    the batch where the weights are shared, and a jvp (forward over forward) that
    raises."""

    @staticmethod
    def forward(drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, gain_inside, reverse,
                lengths):
        return torch.ops.mts_kernels.leaky_rnn_tangent(drive, gain, weight_hh, keep, weight_skip, start, skip,
                                                       dilation, gain_inside, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _tangent_setup(ctx, inputs, output)

    @staticmethod
    def backward(ctx, grad):
        return _tangent_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, *tangents):
        # the tangent of the tangent: forward over forward, which the cells' jvp rules refuse first
        raise RuntimeError("leaky_rnn: forward mode over forward mode (torch.func.jacfwd(jacfwd(f))) through "
                           "the fused kernels is not implemented; use torch.func.jacrev(torch.func.jacfwd(f)) "
                           "or backend='reference'")

    @staticmethod
    def vmap(info, in_dims, drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, gain_inside,
             reverse, lengths):
        n = info.batch_size
        d_drive, d_gain, d_w, d_keep, d_ws, d_start, *_, d_len = in_dims
        # the arguments hold their vmapped dimension: keep's own is (H,) or (T, B, H)
        per_step = keep is not None and keep.dim() - (d_keep is not None) == 3
        if d_w is None and d_ws is None and (keep is None or per_step or d_keep is None):
            # shared weights (and per-unit keep): the samples fold into the batch, one call
            front = lambda t, d: _transforms.batch_to_front(t, d, n)  # noqa: E731
            dr = front(drive, d_drive)
            N, T, B, H = dr.shape
            fold = lambda t: t.transpose(0, 1).reshape(T, N * B, H)  # noqa: E731
            kp = fold(front(keep, d_keep)) if per_step else keep
            st = None if start is None else front(start, d_start).reshape(N * B, H)
            ln = None if lengths is None else front(lengths, d_len).reshape(N * B)
            out = _TangentFunction.apply(fold(dr), fold(front(gain, d_gain)), weight_hh, kp, weight_skip, st,
                                         skip, dilation, gain_inside, reverse, ln)
            return out.reshape(T, N, B, H).transpose(0, 1), 0
        args = (drive, gain, weight_hh, keep, weight_skip, start, skip, dilation, gain_inside, reverse, lengths)
        outs, dims = _transforms.per_sample(lambda *a: (_TangentFunction.apply(*a),), args, in_dims, n)
        return outs[0], dims[0]


class _Function(torch.autograd.Function):
    """leaky_rnn for torch.func transforms and forward-mode AD (see _transforms)."""

    @staticmethod
    def forward(suffix, p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity,
                reverse, lengths):
        return getattr(torch.ops.mts_kernels, f"leaky_rnn_fwd{suffix}")(
            p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse, lengths)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.suffix = inputs[0]
        _setup_context(ctx, inputs[1:], output)
        p, weight_hh, h0, alpha, weight_skip = inputs[1:6]
        ctx.save_for_forward(weight_hh, output[0], output[1], h0, alpha, weight_skip, inputs[-1])

    @staticmethod
    def backward(ctx, grad_h, _grad_u):
        return (None, *_grads(ctx, f"leaky_rnn_bwd{ctx.suffix}", grad_h), None, None, None, None,
                None)

    @staticmethod
    def jvp(ctx, _suffix, dp, dw, dh0, dalpha, dws, *_):
        _transforms.check_forward_over_forward("leaky_rnn")
        weight_hh, h, u, h0, alpha, weight_skip, lengths = ctx.saved_tensors
        skip, dilation, nonlinearity, reverse = ctx.config
        has_h0, has_alpha, has_skip = ctx.has
        dh = _tangent((weight_hh, h, u, h0, alpha, weight_skip),
                      (dp, dw, dh0 if has_h0 else None, dalpha if has_alpha else None,
                       dws if has_skip else None), skip, dilation, nonlinearity, reverse, lengths)
        return dh, None

    @staticmethod
    def vmap(info, in_dims, suffix, p, weight_hh, h0, alpha, weight_skip, skip, dilation,
             nonlinearity, reverse, lengths):
        n = info.batch_size
        _, dp, dw, dh0, da, dws, _, _, _, _, dl = in_dims
        if dw is None and da is None and dws is None:
            # shared weights: the vmapped samples fold into the batch, one fused call
            pb = _transforms.batch_to_front(p, dp, n)
            N, T, B, H = pb.shape
            p_f = pb.transpose(0, 1).reshape(T, N * B, H)
            h0_f = None if h0 is None else _transforms.batch_to_front(h0, dh0, n).reshape(N * B, H)
            lens_f = (None if lengths is None
                      else _transforms.batch_to_front(lengths, dl, n).reshape(N * B))
            h, u = _Function.apply(suffix, p_f, weight_hh, h0_f, alpha, weight_skip, skip, dilation,
                                   nonlinearity, reverse, lens_f)
            unfold = lambda t: t.reshape(T, N, B, -1).transpose(0, 1) if t.numel() else t.expand(N, 0)
            return (unfold(h), unfold(u)), (0, 0)
        # a weight per sample (an ensemble): one fused call per sample
        args = (p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, reverse, lengths)
        return _transforms.per_sample(lambda *sample: _Function.apply(suffix, *sample), args, in_dims[1:], n)


def _register(suffix: str) -> None:
    _transforms.register_fused("leaky_rnn", suffix, _fake_fwd, _fake_bwd, _make_backward, _setup_context)


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


def check_operand(op: str, name: str, t, shape, p: Tensor, cast=None) -> None:
    """An operand of a recurrence next to its projection p: a tensor of `shape`,
    p's dtype (as autocast hands it on: cast) and device; clear errors otherwise."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    if _transforms.effective_dtype(t, cast) != _transforms.effective_dtype(p, cast):
        raise TypeError(f"{op}: {name} has dtype {t.dtype} but p has {p.dtype}"
                        f"{' (under autocast)' if cast is not None else ''}")
    if t.device != p.device:
        raise ValueError(f"{op}: {name} is on {t.device} but p is on {p.device}")


def _check_args(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, batch_first,
                cast=None):
    op = "leaky_rnn"
    _, B, H = check_projection(op, p, batch_first)

    def check(name, t, shape):
        check_operand(op, name, t, shape, p, cast)

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
    cast = _transforms.autocast_dtype(p.device) if isinstance(p, Tensor) else None
    _check_args(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, batch_first, cast)
    T, B, _ = check_projection("leaky_rnn", p, batch_first)
    lens = _lengths.check_lengths("leaky_rnn", lengths, B, T, p.device)
    be = _backend.resolve(backend, "leaky_rnn_fwd", p.device, _transforms.effective_dtype(p, cast))
    if be == "reference":
        if cast is not None:  # the loop is not an op: autocast it by hand, as the op's kernel does
            p, weight_hh, h0, alpha, weight_skip = _transforms.autocast_inputs(
                (p, weight_hh, h0, alpha, weight_skip), p.device.type, cast)
        with torch.autocast(p.device.type, enabled=False):
            return reference.leaky_rnn(p, weight_hh, h0, lengths=lens, alpha=alpha,
                                       weight_skip=weight_skip, skip=skip, dilation=dilation,
                                       nonlinearity=nonlinearity, reverse=reverse,
                                       batch_first=batch_first)
    suffix = ""
    if be == "triton":
        from mts_kernels.triton.leaky_rnn import MAX_HIDDEN

        if p.size(2) > MAX_HIDDEN:
            raise _backend.BackendUnavailableError(
                f"leaky_rnn: the Triton kernel keeps W_hh in registers and supports hidden sizes up to "
                f"{MAX_HIDDEN}, got {p.size(2)}; build the CUDA kernels (see README) or use "
                f"backend='reference'")
        suffix = "_triton"
    pt = p.transpose(0, 1) if batch_first else p
    # a delay of T or more reads h0 at every step, as a delay of T does (and fits int64)
    args = (pt, weight_hh, h0, alpha, weight_skip, min(skip or 0, T), min(dilation, T), nonlinearity,
            reverse, lens)
    if _transforms.transform_active():
        if cast is not None:
            args = _transforms.autocast_inputs(args, p.device.type, cast)
        h, _ = _Function.apply(suffix, *args)
    else:
        h, _ = getattr(torch.ops.mts_kernels, f"leaky_rnn_fwd{suffix}")(*args)
    return h.transpose(0, 1) if batch_first else h
