"""FLOP formulas of the custom ops, so torch.utils.flop_counter.FlopCounterMode
counts them (the C++ ops and the Triton custom ops alike).

FlopCounterMode counts matmul-like work only (torch's own formulas cover mm,
addmm, bmm, convolutions, attention); for the recurrences the same convention
is kept: 2 FLOPs per multiply-add of the recurrent products, nothing for the
nonlinearity, the leak or the carries. The scans have no matmul at all, so for
them the pointwise work is counted instead (otherwise they would not appear):
2 per element and step forward (h = a h + x), 4 backward (the adjoint scan
delta = g + a delta', and the decay gradient delta * h_prev).

The formulas see shapes only: with `lengths` every row is counted over the full
T steps, though the kernels run row b over its own L_b steps only (and the
clockwork decomposition's cross-module GEMMs are torch's own mm / addmm, counted
by torch).
"""

from __future__ import annotations

from math import prod

import torch
from torch.utils.flop_counter import register_flop_formula

from mts_kernels import _extension

_SCAN_FWD_FLOPS_PER_ELEMENT = 2
_SCAN_BWD_FLOPS_PER_ELEMENT = 4


def _ops(name: str) -> list:
    """The C++ op (when compiled) and the Triton custom op of a name."""
    ops = [getattr(torch.ops.mts_kernels, f"{name}_triton")]
    if _extension.COMPILED and hasattr(torch.ops.mts_kernels, name):
        ops.append(getattr(torch.ops.mts_kernels, name))
    return ops


def leaky_rnn_fwd_flop(p_shape, weight_hh_shape, h0_shape, alpha_shape, weight_skip_shape,
                       *args, out_shape=None, **kwargs) -> int:
    """Forward of one layer and direction: per step and recurrent matrix (W_hh,
    and W_skip with skip) one (B, H) x (H, H) product, 2*B*H*H FLOPs, over all T
    steps (with lengths too: the formula sees only shapes). The input projection
    p is the caller's GEMM, counted by torch."""
    T, B, H = p_shape
    return 2 * T * B * H * H * (1 + (weight_skip_shape is not None))


def leaky_rnn_bwd_flop(grad_h_shape, weight_hh_shape, h_shape, u_shape, h0_shape, alpha_shape,
                       weight_skip_shape, skip=0, dilation=1, *args, out_shape=None, **kwargs) -> int:
    """Backward: the adjoint recurrence (per step and matrix e_t W, 2*B*H*H, all
    T steps: the first ones' go to dh0) and the weight gradients (dW = sum_t
    e_t h_{t-d}^T as one GEMM, 2*B*H*H per step it covers: all T with h0, else
    the T - d steps that read h, since h0 = 0 adds nothing; T - s for W_skip).
    With lengths every row still counts T steps."""
    T, B, H = h_shape
    step = 2 * B * H * H

    def gram_steps(delay):
        return T if h0_shape is not None else max(T - min(delay, T), 0)

    flops = step * (T + gram_steps(dilation))
    if weight_skip_shape is not None:
        flops += step * (T + gram_steps(skip))
    return flops


def scan_fwd_flop(decay_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    """h_t = a_t h_{t-1} + x_t: 2 FLOPs per element of (B, T, D) (see the module
    docstring for why a scan is counted at all)."""
    return _SCAN_FWD_FLOPS_PER_ELEMENT * prod(out_shape)


def scan_bwd_flop(grad_h_shape, *args, out_shape=None, **kwargs) -> int:
    """The adjoint scan and the decay gradient: 4 FLOPs per element of (B, T, D)."""
    return _SCAN_BWD_FLOPS_PER_ELEMENT * prod(grad_h_shape)


register_flop_formula(_ops("leaky_rnn_fwd"))(leaky_rnn_fwd_flop)
register_flop_formula(_ops("leaky_rnn_bwd"))(leaky_rnn_bwd_flop)
register_flop_formula(_ops("linear_scan_fwd") + _ops("leaky_integrate_fwd"))(scan_fwd_flop)
register_flop_formula(_ops("linear_scan_bwd") + _ops("leaky_integrate_bwd"))(scan_bwd_flop)


def _clockwork_active_steps(T: int, period: int, first: int) -> int:
    return 0 if first >= T else -(-(T - first) // period)


def clockwork_rnn_fwd_flop(p_shape, weight_hh_shape, h0_shape, alpha_shape, module_sizes, periods,
                           first_steps, *args, out_shape=None, **kwargs) -> int:
    """The fused clockwork loop: module i's rows, at its active steps only, times
    the block-upper-triangular columns j >= i: 2 * B * k_i * sum_{j>=i} k_j per
    active step (all rows of the batch, whatever the lengths)."""
    T, B, _ = p_shape
    flops = 0
    for i, (k, P, f) in enumerate(zip(module_sizes, periods, first_steps)):
        flops += 2 * B * k * sum(module_sizes[i:]) * _clockwork_active_steps(T, P, f)
    return flops


def clockwork_rnn_bwd_flop(grad_h_shape, weight_hh_shape, h_shape, u_shape, h0_shape, alpha_shape,
                           module_sizes, periods, first_steps, *args, out_shape=None, **kwargs) -> int:
    """The adjoint of the same products and the weight gradient over the same
    blocks and active steps: twice the forward."""
    return 2 * clockwork_rnn_fwd_flop(h_shape, weight_hh_shape, h0_shape, alpha_shape, module_sizes,
                                      periods, first_steps)


# (the Triton kernel's dot spans the masked full tile; the count is the schedule's work)
register_flop_formula(_ops("clockwork_rnn_fwd"))(clockwork_rnn_fwd_flop)
register_flop_formula(_ops("clockwork_rnn_bwd"))(clockwork_rnn_bwd_flop)


def deep_transition_rnn_fwd_flop(p_shape, weight_hh_shape, h0_shape, bias_hh_shape, weight_shortcut_shape,
                                 *args, out_shape=None, **kwargs) -> int:
    """Forward of one layer and direction: per step L products (B, H) x (H, H),
    plus one for the shortcut, 2*B*H*H FLOPs each, over all T steps (with
    lengths too). The input projection p is the caller's GEMM, counted by torch."""
    T, B, H = p_shape
    L = weight_hh_shape[0]
    return 2 * T * B * H * H * (L + (weight_shortcut_shape is not None))


def deep_transition_rnn_bwd_flop(grad_h_shape, weight_hh_shape, h_shape, s_shape, h0_shape,
                                 weight_shortcut_shape, *args, out_shape=None, **kwargs) -> int:
    """Backward: the adjoint products (the forward's L, plus the shortcut's, at
    every step) and the weight gradients as GEMMs over the steps: dW_2..dW_L over
    all T, dW_1 (and dU) over the steps that read h_{t-1}: all T with h0, else
    the T - 1 after the first (h0 = 0 adds nothing)."""
    T, B, H = h_shape
    L = weight_hh_shape[0]
    u = weight_shortcut_shape is not None
    prev_steps = T if h0_shape is not None else T - 1
    return 2 * B * H * H * (T * (L + u) + (L - 1) * T + (1 + u) * prev_steps)


def leaky_rnn_tangent_flop(drive_shape, gain_shape, weight_hh_shape, keep_shape, weight_skip_shape,
                           *args, out_shape=None, **kwargs) -> int:
    """The linearised recurrence (leaky_rnn's tangent, or its adjoint): per step and
    recurrent matrix one (B, H) x (H, H) product, as the forward."""
    T, B, H = drive_shape
    return 2 * T * B * H * H * (1 + (weight_skip_shape is not None))


if _extension.COMPILED and hasattr(torch.ops.mts_kernels, "leaky_rnn_tangent"):
    register_flop_formula(torch.ops.mts_kernels.leaky_rnn_tangent)(leaky_rnn_tangent_flop)
register_flop_formula(_ops("deep_transition_rnn_fwd"))(deep_transition_rnn_fwd_flop)
register_flop_formula(_ops("deep_transition_rnn_bwd"))(deep_transition_rnn_bwd_flop)


def deep_transition_rnn_tangent_flop(drive_shape, gains_shape, weight_hh_shape, keep_shape,
                                     weight_shortcut_shape, *args, out_shape=None, **kwargs) -> int:
    """The sequential part of deep_transition_rnn's tangent: per step L products
    (B, H) x (H, H), plus the shortcut's, as the forward."""
    T, B, H = drive_shape
    return 2 * T * B * H * H * (weight_hh_shape[0] + (weight_shortcut_shape is not None))


def deep_transition_rnn_tangent_bwd_flop(grad_h_shape, gains_shape, weight_hh_shape, keep_shape,
                                         weight_shortcut_shape, *args, out_shape=None, **kwargs) -> int:
    """Its adjoint: the same products per step, and the weight gradients as GEMMs
    over all T steps: twice the forward."""
    return 2 * deep_transition_rnn_tangent_flop(grad_h_shape, gains_shape, weight_hh_shape, keep_shape,
                                                weight_shortcut_shape)


if _extension.COMPILED and hasattr(torch.ops.mts_kernels, "deep_transition_rnn_tangent"):
    register_flop_formula(torch.ops.mts_kernels.deep_transition_rnn_tangent)(deep_transition_rnn_tangent_flop)
    register_flop_formula(torch.ops.mts_kernels.deep_transition_rnn_tangent_bwd)(
        deep_transition_rnn_tangent_bwd_flop)


def input_projection_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    """The projection's GEMM, 2 * T * B * K * N over all (T, B) rows (with lengths
    too, as torch's addmm of the same projection counts them)."""
    T, B, K = x_shape
    return 2 * T * B * K * weight_shape[0]


def input_projection_grads_flop(grad_shape, x_shape, *args, out_shape=None, **kwargs) -> int:
    """The weight gradient's GEMM over all (T, B) rows: 2 * T * B * N * K."""
    T, B, N = grad_shape
    return 2 * T * B * N * x_shape[2]


if _extension.COMPILED and hasattr(torch.ops.mts_kernels, "input_projection"):
    register_flop_formula(torch.ops.mts_kernels.input_projection)(input_projection_flop)
    register_flop_formula(torch.ops.mts_kernels.input_projection_grads)(input_projection_grads_flop)


def _clocked_rows(T: int, B: int, module_sizes, periods, first_steps) -> int:
    """Sum over modules of k_m times its active (t, b) rows (all rows of the batch,
    whatever the lengths)."""
    return sum(k * B * _clockwork_active_steps(T, P, f) for k, P, f in zip(module_sizes, periods, first_steps))


def clockwork_projection_flop(x_shape, weight_shape, bias_ih_shape, bias_hh_shape, module_sizes, periods,
                              first_steps, *args, out_shape=None, **kwargs) -> int:
    """Each module's GEMM at its active steps: 2 * K * k_m * B * (its active steps)."""
    T, B, K = x_shape
    return 2 * K * _clocked_rows(T, B, module_sizes, periods, first_steps)


def clockwork_projection_dx_flop(grad_shape, weight_shape, module_sizes, periods, first_steps, *args,
                                 out_shape=None, **kwargs) -> int:
    """The same products, transposed."""
    T, B, _ = grad_shape
    return 2 * weight_shape[1] * _clocked_rows(T, B, module_sizes, periods, first_steps)


def clockwork_projection_grads_flop(grad_shape, x_shape, module_sizes, periods, first_steps, *args,
                                    out_shape=None, **kwargs) -> int:
    """The weight gradient's GEMMs over the same rows."""
    T, B, _ = grad_shape
    return 2 * x_shape[2] * _clocked_rows(T, B, module_sizes, periods, first_steps)


if _extension.COMPILED and hasattr(torch.ops.mts_kernels, "clockwork_projection"):
    register_flop_formula(torch.ops.mts_kernels.clockwork_projection)(clockwork_projection_flop)
    register_flop_formula(torch.ops.mts_kernels.clockwork_projection_dx)(clockwork_projection_dx_flop)
    register_flop_formula(torch.ops.mts_kernels.clockwork_projection_grads)(clockwork_projection_grads_flop)
