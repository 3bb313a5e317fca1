"""The input projection of a recurrent layer over the valid steps of a batch.

    out[t, b] = x[t, b] W_ih^T + b_ih + b_hh   for t < L_b,   0 at padded steps

x is time-major (T, B, I), any strides. The CPU op (csrc/projection/) runs its
GEMMs over each sequence's valid rows only, so with lengths the projection and
its gradients cost what the valid steps cost (the fused recurrences already
skip padded steps), and it allocates its (T, B, H) output from the kernels'
block cache. Its backward is itself and its weight-gradient op:

    dx[t, b] = g[t, b] W_ih                     (input_projection of g by W_ih^T)
    dW_ih = sum_{t < L_b} g[t, b]^T x[t, b],  db = sum_{t < L_b} g[t, b]   (input_projection_grads)

and the gradient of input_projection_grads is input_projection again, so every
order of gradient stays on these two ops. The two biases get separate gradient
tensors (an in-place update of one, as clip_grad_norm_ does, never touches the
other).

The modules (nn/_common.input_projection) take the op where `fused_applies`
(a CPU float32 / float64 batch, outside torch.func transforms, autocast and
export), else F.linear and an add, which torch differentiates in every mode.
Without lengths the op is one GEMM over all rows, as F.linear, but it saves the
bias broadcast into a fresh (T, B, H) result (its page faults) and the
autograd's separate bias reductions: LeakyRNN fwd+bwd at B=32, T=1024,
I=H=256 took 134-139 ms with it against 149-156 ms through F.linear (one run
each, 2-core Xeon).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from mts_kernels import _extension
from mts_kernels.ops import _transforms
from mts_kernels.ops._lengths import check_lengths

_HAVE_OP = _extension.COMPILED and hasattr(torch.ops.mts_kernels, "input_projection")
_DTYPES = (torch.float32, torch.float64)


def _exporting() -> bool:
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def fused_applies(x: Tensor, weight: Tensor, lengths) -> bool:
    """Whether the modules take the op (fused_projection) for these operands."""
    return (_HAVE_OP and x.device.type == "cpu" and x.dtype in _DTYPES
            and weight.dtype == x.dtype and not _transforms.transform_active()
            and not torch.is_autocast_enabled("cpu") and not _exporting())


def fused_projection(x: Tensor, weight: Tensor, bias_ih: Optional[Tensor], bias_hh: Optional[Tensor],
                     lengths) -> Tensor:
    """The op: x (T, B, I) time-major -> (T, B, H), 0 at padded steps (where
    fused_applies)."""
    lens = check_lengths("input_projection", lengths, x.size(1), x.size(0), x.device)
    return torch.ops.mts_kernels.input_projection(x, weight, bias_ih, bias_hh, lens)


def times_t(x: Tensor, weight: Tensor) -> Tensor:
    """x (T, B, K) @ weight^T (weight (N, K)): the op where it applies, so the CPU
    result is the same on any thread count (torch's matmul, whose MKL GEMM splits
    by the thread count, elsewhere). Differentiable in every order."""
    if fused_applies(x, weight, None):
        return torch.ops.mts_kernels.input_projection(x, weight, None, None, None)
    return x @ weight.t()


def gram(a: Tensor, b: Tensor) -> Tensor:
    """sum over all (t, b) rows of a[t, b]^T b[t, b] (a (T, B, N), b (T, B, K)):
    the weight-gradient op where it applies (fixed reduction chunks), else one
    matmul. Differentiable in every order."""
    if fused_applies(b, a, None):
        return torch.ops.mts_kernels.input_projection_grads(a, b, None, False)[0]
    return a.reshape(-1, a.shape[-1]).t() @ b.reshape(-1, b.shape[-1])


def split_grads(dw_db, need_w: bool, need_b1: bool, need_b2: bool):
    """(dW, db) of a grads op as the gradients of (weight, bias_ih, bias_hh): the
    second bias gets its own copy of db (never one tensor for both, see above)."""
    dw, db = dw_db
    return (dw if need_w else None, db if need_b1 else None,
            (db.clone() if need_b1 else db) if need_b2 else None)


if _HAVE_OP:
    _OPS = torch.ops.mts_kernels

    @torch.library.register_fake("mts_kernels::input_projection")
    def _fake(x, weight, bias_ih, bias_hh, lengths=None):
        return x.new_empty(x.shape[0], x.shape[1], weight.shape[0])

    @torch.library.register_fake("mts_kernels::input_projection_grads")
    def _fake_grads(grad, x, lengths, with_bias):
        return x.new_empty(grad.shape[2], x.shape[2]), x.new_empty(grad.shape[2] if with_bias else 0)

    def _setup(ctx, inputs, output):
        x, weight, bias_ih, bias_hh, lengths = inputs
        ctx.save_for_backward(x, weight, lengths)

    def _backward(ctx, grad):
        x, weight, lengths = ctx.saved_tensors
        need_x, need_w, need_b1, need_b2 = ctx.needs_input_grad[:4]
        dx = dw = db1 = db2 = None
        if need_x:
            dx = _OPS.input_projection(grad, weight.t(), None, None, lengths)
        if need_w or need_b1 or need_b2:
            dw, db1, db2 = split_grads(_OPS.input_projection_grads(grad, x, lengths, need_b1 or need_b2),
                                       need_w, need_b1, need_b2)
        return dx, dw, db1, db2, None

    torch.library.register_autograd("mts_kernels::input_projection", _backward, setup_context=_setup)

    def _setup_grads(ctx, inputs, output):
        grad, x, lengths, with_bias = inputs
        ctx.with_bias = with_bias
        ctx.save_for_backward(grad, x, lengths)

    def _backward_grads(ctx, g_w, g_b):
        grad, x, lengths = ctx.saved_tensors
        bias = g_b if ctx.with_bias else None
        d_grad = d_x = None
        if ctx.needs_input_grad[0]:
            d_grad = _OPS.input_projection(x, g_w, bias, None, lengths)
        if ctx.needs_input_grad[1]:
            d_x = _OPS.input_projection(grad, g_w.t(), None, None, lengths)
        return d_grad, d_x, None, None

    torch.library.register_autograd("mts_kernels::input_projection_grads", _backward_grads,
                                    setup_context=_setup_grads)

