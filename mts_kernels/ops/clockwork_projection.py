"""The input projection of a clockwork layer at its modules' active steps only.

With the clock of clockwork_rnn (module m, units [lo_m, lo_m + k_m), active at
step t when (t0 + t) % T_m == 0) and M[t, b, i] = 1 where unit i's module is
active at t and t < L_b, else 0:

    out = M * (x W_ih^T + b_ih + b_hh)                 (T, B, H), time-major

The recurrence reads module m's projection at its active steps only, and its
gradient there is the only non-zero one, so out can stand for the dense
projection in clockwork_rnn with the same result and gradients, at 1/T_m of
module m's multiply-adds (periods 1, 2, ..., 128: a quarter of the dense
projection's). The backward is two ops over the same (t, b, module) triples:

    dx = (M * g) W_ih                              (clockwork_projection_dx)
    dW_ih = (M * g)^T x,  db = sum (M * g)         (clockwork_projection_grads)

and each one's gradient is again one of the three ops, so every order of
gradient stays on them. The two biases get separate gradient tensors.

ClockworkRNN takes it where `fused_applies` (as input_projection: a CPU float32
/ float64 batch, outside torch.func transforms, autocast and export; t0 a Python
int; and the cost rule `worth_it`: modules wide enough for their GEMMs to run
near the dense one's rate), else the dense projection (nn/_common.input_projection).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from mts_kernels import _extension
from mts_kernels.ops._lengths import check_lengths
from mts_kernels.ops.input_projection import fused_applies as _dense_applies
from mts_kernels.ops.input_projection import split_grads

_HAVE_OP = _extension.COMPILED and hasattr(torch.ops.mts_kernels, "clockwork_projection")


# The cost rule (module width and active fraction). Measured on the 2-core Xeon,
# forward + dx + dW_ih of the three ops against the dense input_projection ops,
# T * B = 16384 or 32768 rows: modules 64 wide (H=512, periods 1..128) 0.34-0.45x
# the dense time for I = 8..64; 32 wide (H=128, periods 1..8) 0.79-1.08x; 16 wide
# (H=64, periods 1..8) 0.97-1.38x, where each module's GEMM is too narrow to run
# near the dense GEMM's rate.
MIN_MODULE_WIDTH = 32
MAX_ACTIVE_FRACTION = 0.6


def worth_it(periods: Sequence[int], module_sizes: Sequence[int], T: int) -> bool:
    """Whether the clocked projection beats the dense one: modules at least
    MIN_MODULE_WIDTH units wide on average, and at most MAX_ACTIVE_FRACTION of
    the projection's entries read by the recurrence."""
    H = sum(module_sizes)
    active = sum(k / max(1, min(P, T)) for k, P in zip(module_sizes, periods))
    return H >= MIN_MODULE_WIDTH * len(module_sizes) and active <= MAX_ACTIVE_FRACTION * H


def fused_applies(x: Tensor, weight: Tensor, lengths, t0, periods: Sequence[int],
                  module_sizes: Sequence[int]) -> bool:
    """Whether ClockworkRNN takes the op (clocked_projection) for these operands
    (x time-major): where the dense projection op applies, t0 is an int, and the
    cost rule (worth_it) says so."""
    return (_HAVE_OP and isinstance(t0, int) and not isinstance(t0, bool)
            and _dense_applies(x, weight, lengths) and worth_it(periods, module_sizes, x.size(0)))


def clock_args(T: int, periods: Sequence[int], module_sizes: Sequence[int], t0: int):
    """(module_sizes, periods, first_steps) as the ops take them: module m's first
    active step (-t0) mod T_m, a period or first step beyond T as T (the same
    active steps in [0, T), and int64 arguments whatever the ints)."""
    return (list(module_sizes), [max(1, min(P, T)) for P in periods],
            [min((-t0) % P, T) for P in periods])


def clocked_projection(x: Tensor, weight: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                       periods: Sequence[int], module_sizes: Sequence[int], t0: int, lengths) -> Tensor:
    """The op: x (T, B, I) time-major (any strides) -> (T, B, H), the projection
    at each module's active steps and 0 elsewhere (where fused_applies)."""
    lens = check_lengths("clockwork_projection", lengths, x.size(1), x.size(0), x.device)
    return torch.ops.mts_kernels.clockwork_projection(
        x, weight, bias_ih, bias_hh, *clock_args(x.size(0), periods, module_sizes, t0), lens)


if _HAVE_OP:
    _OPS = torch.ops.mts_kernels

    @torch.library.register_fake("mts_kernels::clockwork_projection")
    def _fake(x, weight, bias_ih, bias_hh, module_sizes, periods, first_steps, lengths=None):
        return x.new_empty(x.shape[0], x.shape[1], weight.shape[0])

    @torch.library.register_fake("mts_kernels::clockwork_projection_dx")
    def _fake_dx(grad, weight, module_sizes, periods, first_steps, lengths=None):
        return grad.new_empty(grad.shape[0], grad.shape[1], weight.shape[1])

    @torch.library.register_fake("mts_kernels::clockwork_projection_grads")
    def _fake_grads(grad, x, module_sizes, periods, first_steps, lengths, with_bias):
        return x.new_empty(grad.shape[2], x.shape[2]), x.new_empty(grad.shape[2] if with_bias else 0)

    def _setup(ctx, inputs, output):
        x, weight, _, _, sizes, periods, firsts, lengths = inputs
        ctx.clock = (sizes, periods, firsts)
        ctx.save_for_backward(x, weight, lengths)

    def _backward(ctx, grad):
        x, weight, lengths = ctx.saved_tensors
        need_x, need_w, need_b1, need_b2 = ctx.needs_input_grad[:4]
        dx = dw = db1 = db2 = None
        if need_x:
            dx = _OPS.clockwork_projection_dx(grad, weight, *ctx.clock, lengths)
        if need_w or need_b1 or need_b2:
            dw, db1, db2 = split_grads(
                _OPS.clockwork_projection_grads(grad, x, *ctx.clock, lengths, need_b1 or need_b2),
                need_w, need_b1, need_b2)
        return dx, dw, db1, db2, None, None, None, None

    torch.library.register_autograd("mts_kernels::clockwork_projection", _backward, setup_context=_setup)

    def _setup_dx(ctx, inputs, output):
        grad, weight, sizes, periods, firsts, lengths = inputs
        ctx.clock = (sizes, periods, firsts)
        ctx.save_for_backward(grad, weight, lengths)

    def _backward_dx(ctx, g_dx):
        grad, weight, lengths = ctx.saved_tensors
        d_grad = d_weight = None
        if ctx.needs_input_grad[0]:  # M * (g_dx W^T)
            d_grad = _OPS.clockwork_projection(g_dx, weight, None, None, *ctx.clock, lengths)
        if ctx.needs_input_grad[1]:  # (M * grad)^T g_dx
            d_weight = _OPS.clockwork_projection_grads(grad, g_dx, *ctx.clock, lengths, False)[0]
        return d_grad, d_weight, None, None, None, None

    torch.library.register_autograd("mts_kernels::clockwork_projection_dx", _backward_dx,
                                    setup_context=_setup_dx)

    def _setup_grads(ctx, inputs, output):
        grad, x, sizes, periods, firsts, lengths, with_bias = inputs
        ctx.clock = (sizes, periods, firsts)
        ctx.with_bias = with_bias
        ctx.save_for_backward(grad, x, lengths)

    def _backward_grads(ctx, g_w, g_b):
        grad, x, lengths = ctx.saved_tensors
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:  # M * (x g_w^T + g_b)
            d_grad = _OPS.clockwork_projection(x, g_w, g_b if ctx.with_bias else None, None, *ctx.clock,
                                               lengths)
        if ctx.needs_input_grad[1]:  # (M * grad) g_w
            d_x = _OPS.clockwork_projection_dx(grad, g_w, *ctx.clock, lengths)
        return d_grad, d_x, None, None, None, None, None

    torch.library.register_autograd("mts_kernels::clockwork_projection_grads", _backward_grads,
                                    setup_context=_setup_grads)
