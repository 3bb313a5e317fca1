"""Triton kernels for one layer and direction of the dense leaky recurrence.

Processing steps k = 0..T-1 (time t = k, or t = T-1-k when ``reverse``), with
delays d (``dilation``) and s (``skip``, 0 = none) counted in processing steps
and h = h0 (zeros when None) before the start::

    z_t = p_t + h_{t-d} @ W_hh^T [+ h_{t-s} @ W_skip^T],   u_t = phi(z_t)
    h_t = alpha * h_{t-d} + (1 - alpha) * u_t          (alpha None: h_t = u_t)

Backward, delta_t = dL/dh_t accumulated, processed k = T-1 down to 0::

    e_t = (1 - alpha) * phi'(z_t) * delta_t          (= dL/dp_t)
    delta_{t-d} += alpha * delta_t + e_t @ W_hh,  delta_{t-s} += e_t @ W_skip
    (a delay reaching before the start lands in dh0)

then, outside the kernel, as single large torch GEMMs / reductions::

    dW_hh = sum_t e_t^T h_{t-d},  dW_skip = sum_t e_t^T h_{t-s},
    dalpha = sum_{t,b} delta_t * (h_{t-d} - u_t)

Design (persistent per batch block): each program owns ``BLOCK_B`` (16) batch
rows and ALL hidden units (H padded to ``BLOCK_H``, a power of two >= 16),
loads W_hh^T (and W_skip^T) once into registers, and walks the T steps
sequentially: one ``tl.dot`` per step (two with skip) plus the fused pointwise
work.  State and accumulation are float32 (float64 for float64 inputs, dot
included); float16/bfloat16 inputs are upcast on load and the results stored
in the input dtype, as the C++ implementation does.  float32 dots use IEEE
precision (``FP32_DOT_PRECISION``) unless ``torch.backends.cuda.matmul.allow_tf32``
is set (the same switch cuBLAS honours in the C++ CUDA path); float64 dots
need a triton whose ``tl.dot`` accepts float64 (3.6 and later do).

Delays: with d == 1 the previous state (forward) / the pending delta
contribution (backward) is carried in registers.  Otherwise (and for the skip
term) the program re-reads rows of h it wrote itself at earlier steps
(forward), or read-modify-writes the float32/float64 delta rows of its own
batch block (backward).  Those rows were written by other threads of the same
program, so every such store is followed by ``tl.debug_barrier()`` (a CTA
barrier, which also orders global memory within the block), and the kernels
are launched with ``num_stages=1`` so the loop is not software-pipelined (a
prefetch of the next step's row would race the store).  The interpreter runs
one program at a time, so there the barrier is a no-op.  Rows that are
re-read are always kept in the compute dtype (a float32 workspace for
float16/bfloat16 inputs), so re-reading never loses precision.

Limit: H <= ``MAX_HIDDEN`` (128) -- W_hh^T (and W_skip^T) must stay resident
in registers (a 128 x 128 float32 tile is 64 KiB, 64 registers per thread at
8 warps).  Larger H raises ``ValueError`` and callers are expected to fall
back to the C++/ATen implementation.

Variable lengths (``lengths``, one L_b per batch row, clamped to [0, T] in the
kernels): row b runs processing steps k < L_b only, at time t = k (reverse:
L_b-1-k), its delays counted in its own steps.  Each kernel still walks
k = 0..T-1 for the whole block; a padded step k >= L_b of row b visits time
t = k (each time of a row is visited exactly once), where h, u and dp are
written as 0, nothing is read and nothing propagates.  The weight gradients'
h0 terms pair h0 with e summed over each row's first d (s) processing steps,
which the backward kernel accumulates per row (E0, ES0; D0 = the same sum of
delta for dalpha): with reverse and lengths those are different times for
different rows.  The remaining pairs of time slices stay right because h is 0
at padded times.

Reverse mode is pure index mapping; nothing is flipped in memory.
This module only depends on torch, triton and its sibling scan module (the
lengths operand's check).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from mts_kernels.triton.scan import _lengths_arg

__all__ = ["leaky_rnn_fwd", "leaky_rnn_bwd", "MAX_HIDDEN"]

MAX_HIDDEN = 128
# tl.dot input precision for float32 compute on CUDA when TF32 is not allowed
# (torch.backends.cuda.matmul.allow_tf32 selects "tf32").  "ieee" is exact
# float32 (FMA, no tensor cores); "tf32x3" would use tensor cores at nearly
# float32 accuracy.
FP32_DOT_PRECISION = "ieee"
_BLOCK_B = 16  # batch rows per program (>= 16 for tl.dot)
_MIN_BLOCK_H = 16  # tl.dot needs K, N >= 16


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #


@triton.jit
def _tanh(z):
    # tanh from exp (libdevice is not available in the interpreter): the
    # odd-symmetric (1 - e) / (1 + e), e = exp(-2|z|) <= 1, never overflows and
    # is accurate to a few ulp in absolute terms; a short Taylor series keeps
    # full relative accuracy for small |z|.
    a = tl.abs(z)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    z2 = z * z
    # z - z^3/3 + 2 z^5/15 - 17 z^7/315 + 62 z^9/2835 (next term ~ 0.0089 z^11)
    small = z * (1.0 + z2 * (-0.3333333333333333 + z2 * (0.13333333333333333 + z2 * (
        -0.05396825396825397 + z2 * 0.021869488536155203))))
    big = tl.where(z < 0, -big, big)
    return tl.where(a < 0.0625, small, big)


@triton.jit
def _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN: tl.constexpr,
                   BLOCK_B: tl.constexpr):
    # (BLOCK_B,) row lengths clamped to [0, T] (T without lengths)
    if HAS_LEN:
        n = tl.load(len_ptr + offs_b.to(tl.int64) * s_len, mask=mask_b, other=0)
        return tl.minimum(tl.maximum(n, 0), T).to(tl.int32)
    else:
        return tl.zeros([BLOCK_B], dtype=tl.int32) + T


@triton.jit
def _step_time(k, L, REVERSE: tl.constexpr):
    # (BLOCK_B,) int64 time of processing step k of each row; a padded step
    # k >= L_b maps to t = k, so every time of a row is visited exactly once
    if REVERSE:
        t = tl.where(k < L, L - 1 - k, k)
    else:
        t = k + tl.zeros_like(L)
    return t.to(tl.int64)[:, None]


@triton.jit
def _leaky_rnn_fwd_kernel(
    p_ptr, w_ptr, ws_ptr, h0_ptr, alpha_ptr, h_ptr, u_ptr, len_ptr,
    T, B, H, dilation, skip, s_ht,
    s_pt, s_pb, s_ph,
    s_w0, s_w1,
    s_ws0, s_ws1,
    s_h0b, s_h0h,
    s_a, s_len,
    HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr,
    LEAK: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    DIL_REGS: tl.constexpr,
    BARRIER: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    m = mask_b[:, None] & mask_h[None, :]
    mw = mask_h[:, None] & mask_h[None, :]
    b64 = offs_b.to(tl.int64)
    j64 = offs_h.to(tl.int64)

    # W^T resident for the whole loop: wt[k, j] = W[j, k] (zero padded)
    wt = tl.load(w_ptr + j64[None, :] * s_w0 + j64[:, None] * s_w1, mask=mw, other=0.0).to(CDT)
    if HAS_SKIP:
        wst = tl.load(ws_ptr + j64[None, :] * s_ws0 + j64[:, None] * s_ws1, mask=mw,
                      other=0.0).to(CDT)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha
    if HAS_H0:
        h0 = tl.load(h0_ptr + b64[:, None] * s_h0b + j64[None, :] * s_h0h, mask=m,
                     other=0.0).to(CDT)
    else:
        h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)

    p_rows = p_ptr + b64[:, None] * s_pb + j64[None, :] * s_ph
    off_bh = b64[:, None] * H + j64[None, :]  # h, u: contiguous (T, B, H)
    h_rows = h_ptr + off_bh
    u_rows = u_ptr + off_bh

    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    h_prev = h0
    for k in range(0, T):
        t64 = _step_time(k, L, REVERSE)
        valid = (k < L)[:, None]
        mv = m & valid
        z = tl.load(p_rows + t64 * s_pt, mask=mv, other=0.0).to(CDT)

        if DIL_REGS:
            hd = h_prev
        else:
            kd = k - dilation
            hd = tl.load(h_rows + _step_time(kd, L, REVERSE) * s_ht, mask=mv & (kd >= 0),
                         other=0.0).to(CDT)
            hd = tl.where(kd >= 0, hd, h0)
        z += tl.dot(hd, wt, input_precision=PREC)
        if HAS_SKIP:
            ks = k - skip
            hs = tl.load(h_rows + _step_time(ks, L, REVERSE) * s_ht, mask=mv & (ks >= 0),
                         other=0.0).to(CDT)
            hs = tl.where(ks >= 0, hs, h0)
            z += tl.dot(hs, wst, input_precision=PREC)

        if TANH:
            u = _tanh(z)
        else:
            u = tl.where(z < 0.0, 0.0, z)  # NaN propagates, as torch.relu

        if LEAK:
            u = tl.where(valid, u, 0.0)
            hn = alpha * hd + one_m_alpha * u
            tl.store(u_rows + t64 * s_ht, u.to(u_ptr.dtype.element_ty), mask=m)
        else:
            hn = u
        hn = tl.where(valid, hn, 0.0)  # padded steps: h = 0 (and 0 carried)
        tl.store(h_rows + t64 * s_ht, hn.to(h_ptr.dtype.element_ty), mask=m)
        if BARRIER:
            # later steps re-read this row through other threads of the program
            tl.debug_barrier()
        h_prev = hn


@triton.jit
def _leaky_rnn_bwd_kernel(
    g_ptr, w_ptr, ws_ptr, alpha_ptr, u_ptr, delta_ptr, e_ptr, dh0_ptr, len_ptr,
    e0_ptr, es0_ptr, d0_ptr,
    T, B, H, dilation, skip, s_ht,
    s_gt, s_gb, s_gh,
    s_w0, s_w1,
    s_ws0, s_ws1,
    s_a,
    s_ut, s_ub, s_uh,
    s_len,
    HAS_LEN: tl.constexpr,
    H0_TERMS: tl.constexpr,
    ZERO_PAD: tl.constexpr,
    REVERSE: tl.constexpr,
    LEAK: tl.constexpr,
    HAS_SKIP: tl.constexpr,
    DIL_REGS: tl.constexpr,
    STORE_DELTA: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # g_ptr: grad_h itself (DIL_REGS and no skip), or else a private
    # contiguous compute-dtype copy of it that the delayed contributions are
    # accumulated into in place (rows < k only, so the row of step k is
    # complete when step k reads it).  H0_TERMS: also write the per-row sums of
    # e over the first `dilation` / `skip` processing steps (E0, ES0) and of
    # delta over the first `dilation` steps (D0, with LEAK): the terms of
    # dW_hh, dW_skip and dalpha that pair with h0.  ZERO_PAD: g ends up holding
    # delta, so zero its padded rows (which hold grad_h).
    pid = tl.program_id(0)
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    m = mask_b[:, None] & mask_h[None, :]
    mw = mask_h[:, None] & mask_h[None, :]
    b64 = offs_b.to(tl.int64)
    j64 = offs_h.to(tl.int64)

    # W resident: (e @ W)[b, k] = sum_j e[b, j] W[j, k]
    w = tl.load(w_ptr + j64[:, None] * s_w0 + j64[None, :] * s_w1, mask=mw, other=0.0).to(CDT)
    if HAS_SKIP:
        ws = tl.load(ws_ptr + j64[:, None] * s_ws0 + j64[None, :] * s_ws1, mask=mw,
                     other=0.0).to(CDT)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha

    g_rows = g_ptr + b64[:, None] * s_gb + j64[None, :] * s_gh
    u_rows = u_ptr + b64[:, None] * s_ub + j64[None, :] * s_uh
    off_bh = b64[:, None] * H + j64[None, :]  # delta, e, dh0: contiguous
    d_rows = delta_ptr + off_bh
    e_rows = e_ptr + off_bh

    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    dh0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    if H0_TERMS:
        e0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
        if HAS_SKIP:
            es0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
        if LEAK:
            d0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    # DIL_REGS: pending delta_{k-1}; it stays 0 through a row's padded steps
    # k >= L_b (processed first), where dlt, e and c are all 0
    carry = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    for i in range(0, T):
        k = T - 1 - i
        t64 = _step_time(k, L, REVERSE)
        valid = (k < L)[:, None]
        mv = m & valid
        dlt = tl.load(g_rows + t64 * s_gt, mask=mv, other=0.0).to(CDT)
        if DIL_REGS:
            dlt += carry
        if STORE_DELTA:
            tl.store(d_rows + t64 * s_ht, dlt.to(delta_ptr.dtype.element_ty), mask=m)
        if ZERO_PAD:
            tl.store(g_rows + t64 * s_gt, tl.zeros_like(dlt).to(g_ptr.dtype.element_ty),
                     mask=m & (k >= L)[:, None])
        uu = tl.load(u_rows + t64 * s_ut, mask=mv, other=0.0).to(CDT)
        if TANH:
            e = dlt * (1.0 - uu * uu)
        else:
            e = tl.where(uu > 0.0, dlt, 0.0)
        if LEAK:
            e = e * one_m_alpha
        tl.store(e_rows + t64 * s_ht, e.to(e_ptr.dtype.element_ty), mask=m)
        if H0_TERMS:
            e0 += tl.where(k < dilation, e, 0.0)
            if LEAK:
                d0 += tl.where(k < dilation, dlt, 0.0)

        c = tl.dot(e, w, input_precision=PREC)
        if LEAK:
            c += alpha * dlt
        if DIL_REGS:
            carry = c
        else:
            kd = k - dilation
            md = mv & (kd >= 0)
            tgt = g_rows + _step_time(kd, L, REVERSE) * s_gt
            old = tl.load(tgt, mask=md, other=0.0)
            tl.store(tgt, old + c.to(old.dtype), mask=md)
            dh0 += tl.where(kd >= 0, 0.0, c)
            tl.debug_barrier()
        if HAS_SKIP:
            cs = tl.dot(e, ws, input_precision=PREC)
            ks = k - skip
            ms = mv & (ks >= 0)
            tgt = g_rows + _step_time(ks, L, REVERSE) * s_gt
            old = tl.load(tgt, mask=ms, other=0.0)
            tl.store(tgt, old + cs.to(old.dtype), mask=ms)
            dh0 += tl.where(ks >= 0, 0.0, cs)
            if H0_TERMS:
                es0 += tl.where(ks >= 0, 0.0, e)
            tl.debug_barrier()
    if DIL_REGS:
        dh0 += carry  # the contribution of step 0
    tl.store(dh0_ptr + off_bh, dh0.to(dh0_ptr.dtype.element_ty), mask=m)
    if H0_TERMS:
        tl.store(e0_ptr + off_bh, e0.to(e0_ptr.dtype.element_ty), mask=m)
        if HAS_SKIP:
            tl.store(es0_ptr + off_bh, es0.to(es0_ptr.dtype.element_ty), mask=m)
        if LEAK:
            tl.store(d0_ptr + off_bh, d0.to(d0_ptr.dtype.element_ty), mask=m)


# --------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------- #


def _compute_types(dtype: torch.dtype):
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def _precision(device: torch.device, cdt) -> str:
    if cdt != tl.float32 or device.type != "cuda":
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else FP32_DOT_PRECISION


def _config(H: int):
    block_h = max(_MIN_BLOCK_H, triton.next_power_of_2(max(H, 1)))
    num_warps = max(1, min(8, _BLOCK_B * block_h // 256))
    return block_h, num_warps


def _check(p: torch.Tensor, weight_hh: torch.Tensor, h0: Optional[torch.Tensor],
           alpha: Optional[torch.Tensor], weight_skip: Optional[torch.Tensor], skip: int,
           dilation: int, nonlinearity: str, name: str = "p"):
    if p.dim() != 3:
        raise ValueError(f"leaky_rnn: {name} must be 3-D (T, B, H), got shape {tuple(p.shape)}")
    if not p.dtype.is_floating_point:
        raise ValueError(f"leaky_rnn: {name} must be floating point, got {p.dtype}")
    T, B, H = p.shape
    if T == 0:
        raise ValueError("leaky_rnn: p needs at least one time step")

    def same(t, tname, shape):
        if tuple(t.shape) != shape:
            raise ValueError(f"leaky_rnn: {tname} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise ValueError(f"leaky_rnn: {tname} must be {p.dtype} on {p.device}, "
                             f"got {t.dtype} on {t.device}")

    same(weight_hh, "weight_hh", (H, H))
    if h0 is not None:
        same(h0, "h0", (B, H))
    if alpha is not None:
        same(alpha, "alpha", (H,))
    if dilation < 1:
        raise ValueError(f"leaky_rnn: dilation must be >= 1, got {dilation}")
    if skip < 0:
        raise ValueError(f"leaky_rnn: skip must be >= 1 (or 0 for none), got {skip}")
    if (skip > 0) != (weight_skip is not None):
        raise ValueError("leaky_rnn: weight_skip must be given exactly when skip > 0")
    if weight_skip is not None:
        same(weight_skip, "weight_skip", (H, H))
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"leaky_rnn: nonlinearity must be 'tanh' or 'relu', got '{nonlinearity}'")
    if H > MAX_HIDDEN:
        raise ValueError(f"leaky_rnn (triton): hidden size {H} exceeds the limit {MAX_HIDDEN} "
                         "(the recurrent weights must stay resident on chip); use the ATen path")
    return T, B, H


def leaky_rnn_fwd(
    p: torch.Tensor,
    weight_hh: torch.Tensor,
    h0: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    weight_skip: Optional[torch.Tensor],
    skip: int,
    dilation: int,
    nonlinearity: str,
    reverse: bool,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (h, u): h (T, B, H) contiguous in p's dtype; u (T, B, H) when
    alpha is given (the activations phi(z_t), needed by the backward), else
    an empty tensor.  lengths: None or (B,) int64 on p's device; h and u are 0
    at t >= L_b."""
    skip, dilation = int(skip), int(dilation)
    T, B, H = _check(p, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, p)
    dtype = p.dtype
    leak = alpha is not None
    has_skip = skip > 0
    cdt, ctorch = _compute_types(dtype)

    h = torch.empty((T, B, H), dtype=dtype, device=p.device)
    u = torch.empty((T, B, H), dtype=dtype, device=p.device) if leak else \
        torch.empty(0, dtype=dtype, device=p.device)
    if B == 0 or H == 0:
        return h, u

    dil_regs = dilation == 1
    rereads = (not dil_regs) or has_skip
    # rows of h that are re-read are kept in the compute dtype
    h_buf = torch.empty((T, B, H), dtype=ctorch, device=p.device) \
        if (rereads and dtype != ctorch) else h
    block_h, num_warps = _config(H)

    _leaky_rnn_fwd_kernel[(triton.cdiv(B, _BLOCK_B),)](
        p, weight_hh, weight_skip if has_skip else weight_hh, h0 if h0 is not None else p,
        alpha if leak else p, h_buf, u if leak else h_buf, len_arg,
        T, B, H, dilation, skip, B * H,
        *p.stride(),
        *weight_hh.stride(),
        *(weight_skip.stride() if has_skip else (0, 0)),
        *(h0.stride() if h0 is not None else (0, 0)),
        alpha.stride(0) if leak else 0, s_len,
        HAS_LEN=has_len,
        REVERSE=bool(reverse),
        LEAK=leak,
        HAS_H0=h0 is not None,
        HAS_SKIP=has_skip,
        DIL_REGS=dil_regs,
        BARRIER=rereads,
        TANH=nonlinearity == "tanh",
        CDT=cdt,
        PREC=_precision(p.device, cdt),
        BLOCK_B=_BLOCK_B,
        BLOCK_H=block_h,
        num_warps=num_warps,
        num_stages=1,
    )
    if h_buf is not h:
        h.copy_(h_buf)
    return h, u


def _delay_split(T: int, delay: int, reverse: bool):
    """Slices (main_e, main_h, pad) over time: for times in main_e the state
    `delay` processing steps back is h at main_h; times in pad see h0.  With
    lengths, a time in main_e may see h0 instead (reverse: t in [L_b - delay,
    L_b)); it is paired with h at a padded time, which is 0, and the h0 terms
    come from the kernel's per-row sums."""
    n = min(delay, T)
    if reverse:
        return slice(0, T - n), slice(n, T), slice(T - n, T)
    return slice(n, T), slice(0, T - n), slice(0, n)


def _delayed_weight_grad(e: torch.Tensor, hc: torch.Tensor, h0c: Optional[torch.Tensor],
                         e_first: Optional[torch.Tensor], delay: int, reverse: bool) -> torch.Tensor:
    """sum_t e_t^T h_{t-delay} over (T, B, H) e and h (processing order), as one
    GEMM; h0c pairs with e_first, the per-row sums of e over the first `delay`
    processing steps (see _delay_split)."""
    T, _, H = e.shape
    main_e, main_h, _ = _delay_split(T, delay, reverse)
    e_main = e[main_e].flatten(0, 1)  # not reshape(-1, H): H may be 0
    dw = e_main.t().mm(hc[main_h].flatten(0, 1)) if e_main.shape[0] > 0 else \
        torch.zeros((H, H), dtype=e.dtype, device=e.device)
    if h0c is not None:
        dw.addmm_(e_first.t(), h0c)
    return dw


def leaky_rnn_bwd(
    grad_h: torch.Tensor,
    weight_hh: torch.Tensor,
    h: torch.Tensor,
    u: torch.Tensor,
    h0: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    weight_skip: Optional[torch.Tensor],
    skip: int,
    dilation: int,
    nonlinearity: str,
    reverse: bool,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dp, dweight_hh, dh0, dalpha, dweight_skip) of leaky_rnn_fwd,
    given grad_h = dL/dh and the forward outputs h and u (u only used when
    alpha is given).  dh0 is always (B, H); dalpha / dweight_skip are empty
    when alpha / weight_skip are None.  With lengths, grad_h at t >= L_b is
    ignored and dp is 0 there."""
    skip, dilation = int(skip), int(dilation)
    T, B, H = _check(h, weight_hh, h0, alpha, weight_skip, skip, dilation, nonlinearity, "h")
    len_arg, s_len, has_len = _lengths_arg(lengths, B, h)
    if tuple(grad_h.shape) != (T, B, H):
        raise ValueError(f"leaky_rnn_bwd: grad_h must have shape {(T, B, H)}, "
                         f"got {tuple(grad_h.shape)}")
    leak = alpha is not None
    if leak and tuple(u.shape) != (T, B, H):
        raise ValueError(f"leaky_rnn_bwd: u must have shape {(T, B, H)} when alpha is given, "
                         f"got {tuple(u.shape)}")
    dtype = h.dtype
    dev = h.device
    has_skip = skip > 0
    cdt, ctorch = _compute_types(dtype)
    if not leak:
        u = h

    dil_regs = dilation == 1
    acc_global = (not dil_regs) or has_skip
    if acc_global:
        # private accumulation buffer, completed in place (ends up holding delta)
        g = torch.empty((T, B, H), dtype=ctorch, device=dev)
        g.copy_(grad_h)
        delta = g
    else:
        g = grad_h
        delta = torch.empty((T, B, H), dtype=ctorch, device=dev) if leak else None
    store_delta = leak and dil_regs
    e = torch.empty((T, B, H), dtype=ctorch, device=dev)
    dh0 = torch.zeros((B, H), dtype=ctorch, device=dev)
    h0_terms = h0 is not None
    # per-row sums over the first d (s) processing steps: e (E0, ES0), delta (D0)
    e0, es0, d0 = (torch.zeros((B, H), dtype=ctorch, device=dev) if (h0_terms and use) else None
                   for use in (True, has_skip, leak))

    if B > 0 and H > 0:
        block_h, num_warps = _config(H)
        _leaky_rnn_bwd_kernel[(triton.cdiv(B, _BLOCK_B),)](
            g, weight_hh, weight_skip if has_skip else weight_hh, alpha if leak else e,
            u, delta if delta is not None else e, e, dh0, len_arg,
            *(t if t is not None else dh0 for t in (e0, es0, d0)),
            T, B, H, dilation, skip, B * H,
            *g.stride(),
            *weight_hh.stride(),
            *(weight_skip.stride() if has_skip else (0, 0)),
            alpha.stride(0) if leak else 0,
            *u.stride(),
            s_len,
            HAS_LEN=has_len,
            H0_TERMS=h0_terms,
            ZERO_PAD=has_len and leak and acc_global,
            REVERSE=bool(reverse),
            LEAK=leak,
            HAS_SKIP=has_skip,
            DIL_REGS=dil_regs,
            STORE_DELTA=store_delta,
            TANH=nonlinearity == "tanh",
            CDT=cdt,
            PREC=_precision(dev, cdt),
            BLOCK_B=_BLOCK_B,
            BLOCK_H=block_h,
            num_warps=num_warps,
            num_stages=1,
        )
    elif leak and delta is not None:
        delta.copy_(grad_h)  # empty

    # weight / decay gradients: one large GEMM (reduction) each, in the compute dtype
    hc = h.to(ctorch)
    h0c = h0.to(ctorch) if h0 is not None else None

    dw = _delayed_weight_grad(e, hc, h0c, e0, dilation, reverse)
    dw_skip = _delayed_weight_grad(e, hc, h0c, es0, skip, reverse).to(dtype) if has_skip else \
        torch.empty(0, dtype=dtype, device=dev)
    if leak:
        uc = u.to(ctorch)
        main_e, main_h, pad = _delay_split(T, dilation, reverse)
        dalpha = (delta[main_e] * (hc[main_h] - uc[main_e])).sum((0, 1)) \
            - (delta[pad] * uc[pad]).sum((0, 1))
        if h0c is not None:
            dalpha += (d0 * h0c).sum(0)
        dalpha = dalpha.to(dtype)
    else:
        dalpha = torch.empty(0, dtype=dtype, device=dev)
    return e.to(dtype), dw.to(dtype), dh0.to(dtype), dalpha, dw_skip
