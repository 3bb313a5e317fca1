"""Triton kernels for the first-order linear recurrence (a.k.a. linear scan).

Per channel (b, d), in processing order p = 0..T-1 (time t = p, or t = T-1-p
when ``reverse``)::

    linear: h_p = a_p * h_{p-1} + x_p
    leaky:  h_p = a_p * h_{p-1} + (1 - a_p) * x_p
    h_{-1} = h0[b, d]  (0 when h0 is None)

Each program owns one batch row ``b`` and a block of ``BLOCK_D`` contiguous
channels and walks the sequence in chunks of ``BLOCK_T`` steps.  Inside a chunk
the recurrence is solved with ``tl.associative_scan`` over affine maps
(A, X): h -> A * h + X, and the state is carried between chunks in float32
(float64 for float64 inputs).

The backward pass runs the same scan on ``delta`` in the opposite processing
order (decay shifted by one step)::

    delta_p = g_p + a_{p+1} * delta_{p+1}      (delta_T = 0)
    dx_p = delta_p                 (leaky: (1 - a_p) * delta_p)
    da_p = delta_p * h_{p-1}       (leaky: delta_p * (h_{p-1} - x_p))
    dh0  = a_0 * delta_0

Variable lengths (``lengths``, one L_b per batch row, clamped to [0, T] in the
kernel): row b runs only its first L_b time steps (reverse: t = L_b-1 .. 0).
Padded elements t >= L_b are the identity map (A=1, X=0), so the carried state
passes through them unchanged (reverse: h0 reaches t = L_b-1), their outputs
and input gradients are written as 0 and their inputs are never read.  The
backward's boundaries follow L_b: delta_{L_b-1} = g_{L_b-1} (forward), and
the previous state of the reverse scan's first step t = L_b-1 is h0.

Reverse mode is pure index mapping; nothing is flipped in memory.  ``a`` may be
(B, T, D) or a per-channel (D,) decay, which is broadcast inside the kernel and
whose gradient is reduced over t inside the kernel (one float32/float64 row per
batch row) and over b with a deterministic ``torch.sum``.

This module only depends on torch and triton.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

__all__ = ["scan_fwd", "scan_bwd"]


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #


@triton.jit
def _affine_combine(a1, x1, a2, x2):
    # (A1, X1) followed by (A2, X2):  h -> A2 * (A1 * h + X1) + X2
    return a2 * a1, a2 * x1 + x2


@triton.jit
def _row_length(len_ptr, b64, s_len, T, HAS_LEN: tl.constexpr):
    # L_b clamped to [0, T] (memory safety), or T without lengths
    if HAS_LEN:
        n = tl.load(len_ptr + b64 * s_len)
        return tl.minimum(tl.maximum(n, 0), T).to(tl.int32)
    else:
        return T


@triton.jit
def _scan_fwd_kernel(
    a_ptr, x_ptr, h0_ptr, h_ptr, len_ptr,
    T, D, n_dblk,
    s_ab, s_at, s_ad,
    s_xb, s_xt, s_xd,
    s_h0b, s_h0d,
    s_hb, s_ht, s_hd,
    s_len,
    REVERSE: tl.constexpr,
    LEAKY: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LEN: tl.constexpr,
    A_PER_CHANNEL: tl.constexpr,
    CDT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_b = pid // n_dblk
    pid_d = pid % n_dblk

    b64 = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    d64 = offs_d.to(tl.int64)
    rows = tl.arange(0, BLOCK_T)
    L = _row_length(len_ptr, b64, s_len, T, HAS_LEN)

    x_base = x_ptr + b64 * s_xb + d64[None, :] * s_xd
    h_base = h_ptr + b64 * s_hb + d64[None, :] * s_hd
    if A_PER_CHANNEL:
        a_row = tl.load(a_ptr + d64 * s_ad, mask=mask_d, other=1.0).to(CDT)
    else:
        a_base = a_ptr + b64 * s_ab + d64[None, :] * s_ad

    if HAS_H0:
        carry = tl.load(h0_ptr + b64 * s_h0b + d64 * s_h0d, mask=mask_d, other=0.0).to(CDT)
    else:
        carry = tl.zeros([BLOCK_D], dtype=CDT)

    n_chunks = tl.cdiv(T, BLOCK_T)
    for c in range(0, n_chunks):
        p = c * BLOCK_T + rows  # processing index
        mask_t = p < T
        if REVERSE:
            t = T - 1 - p
        else:
            t = p
        t64 = t.to(tl.int64)
        m = mask_t[:, None] & mask_d[None, :]
        valid = mask_t & (t < L)
        mv = valid[:, None] & mask_d[None, :]

        # padded rows (past T or past L_b) get the identity map (A=1, X=0)
        x = tl.load(x_base + t64[:, None] * s_xt, mask=mv, other=0.0).to(CDT)
        if A_PER_CHANNEL:
            a = tl.where(valid[:, None], a_row[None, :], 1.0)
        else:
            a = tl.load(a_base + t64[:, None] * s_at, mask=mv, other=1.0).to(CDT)
        if LEAKY:
            xin = (1.0 - a) * x
        else:
            xin = x

        acum, xcum = tl.associative_scan((a, xin), 0, _affine_combine)
        h = acum * carry[None, :] + xcum
        h_out = tl.where(valid[:, None], h, 0.0)
        tl.store(h_base + t64[:, None] * s_ht, h_out.to(h_ptr.dtype.element_ty), mask=m)
        # padded rows are identity maps, so the last row holds the state
        # after the last valid step of this chunk
        carry = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, h, 0.0), axis=0)


@triton.jit
def _scan_bwd_kernel(
    g_ptr, a_ptr, x_ptr, h_ptr, h0_ptr, len_ptr,
    dx_ptr, da_ptr, dh0_ptr,
    T, D, n_dblk,
    s_gb, s_gt, s_gd,
    s_ab, s_at, s_ad,
    s_xb, s_xt, s_xd,
    s_hb, s_ht, s_hd,
    s_h0b, s_h0d,
    s_dxb, s_dxt, s_dxd,
    s_dab, s_dat, s_dad,
    s_dh0b, s_dh0d,
    s_len,
    REVERSE: tl.constexpr,
    LEAKY: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_LEN: tl.constexpr,
    A_PER_CHANNEL: tl.constexpr,
    CDT: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_b = pid // n_dblk
    pid_d = pid % n_dblk

    b64 = pid_b.to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    d64 = offs_d.to(tl.int64)
    rows = tl.arange(0, BLOCK_T)
    L = _row_length(len_ptr, b64, s_len, T, HAS_LEN)
    # time of the first processing step (its previous state is h0)
    if REVERSE:
        t_first = L - 1
    else:
        t_first = 0

    g_base = g_ptr + b64 * s_gb + d64[None, :] * s_gd
    x_base = x_ptr + b64 * s_xb + d64[None, :] * s_xd
    h_base = h_ptr + b64 * s_hb + d64[None, :] * s_hd
    dx_base = dx_ptr + b64 * s_dxb + d64[None, :] * s_dxd
    if A_PER_CHANNEL:
        a_row = tl.load(a_ptr + d64 * s_ad, mask=mask_d, other=1.0).to(CDT)
        da_acc = tl.zeros([BLOCK_D], dtype=CDT)
    else:
        a_base = a_ptr + b64 * s_ab + d64[None, :] * s_ad
        da_base = da_ptr + b64 * s_dab + d64[None, :] * s_dad

    if HAS_H0:
        h0_row = tl.load(h0_ptr + b64 * s_h0b + d64 * s_h0d, mask=mask_d, other=0.0).to(CDT)

    carry = tl.zeros([BLOCK_D], dtype=CDT)  # delta after the last processing step
    n_chunks = tl.cdiv(T, BLOCK_T)
    for c in range(0, n_chunks):
        # q: backward processing index (q = 0 is the last forward step p = T-1)
        q = c * BLOCK_T + rows
        mask_t = q < T
        # t: time of step p = T-1-q; t_next: time of p+1; t_prev: time of p-1
        if REVERSE:
            t = q
            t_next = q - 1
            t_prev = q + 1
        else:
            t = T - 1 - q
            t_next = T - q
            t_prev = T - 2 - q
        t64 = t.to(tl.int64)
        m = mask_t[:, None] & mask_d[None, :]
        # padded steps (t >= L_b) are identity maps with g = 0: delta stays 0
        # through the forward direction's tail and delta_{first} passes
        # through the reverse direction's tail to the end (dh0)
        valid = mask_t & (t < L)
        mv = valid[:, None] & mask_d[None, :]
        has_next = valid & (t_next >= 0) & (t_next < L)
        has_prev = valid & (t_prev >= 0) & (t_prev < L)

        g = tl.load(g_base + t64[:, None] * s_gt, mask=mv, other=0.0).to(CDT)
        if A_PER_CHANNEL:
            a_nxt = tl.where(has_next[:, None], a_row[None, :], 1.0)
        else:
            a_nxt = tl.load(
                a_base + t_next.to(tl.int64)[:, None] * s_at,
                mask=has_next[:, None] & mask_d[None, :],
                other=1.0,
            ).to(CDT)

        acum, gcum = tl.associative_scan((a_nxt, g), 0, _affine_combine)
        delta = acum * carry[None, :] + gcum
        carry = tl.sum(tl.where(rows[:, None] == BLOCK_T - 1, delta, 0.0), axis=0)

        # dx
        if LEAKY:
            if A_PER_CHANNEL:
                a_cur = a_row[None, :]
            else:
                a_cur = tl.load(a_base + t64[:, None] * s_at, mask=mv, other=0.0).to(CDT)
            dx = (1.0 - a_cur) * delta
        else:
            dx = delta
        dx = tl.where(mv, dx, 0.0)
        tl.store(dx_base + t64[:, None] * s_dxt, dx.to(dx_ptr.dtype.element_ty), mask=m)

        # da
        h_prev = tl.load(
            h_base + t_prev.to(tl.int64)[:, None] * s_ht,
            mask=has_prev[:, None] & mask_d[None, :],
            other=0.0,
        ).to(CDT)
        if HAS_H0:
            h_prev = tl.where((t == t_first)[:, None], h0_row[None, :], h_prev)
        if LEAKY:
            x = tl.load(x_base + t64[:, None] * s_xt, mask=mv, other=0.0).to(CDT)
            da = delta * (h_prev - x)
        else:
            da = delta * h_prev
        da = tl.where(mv, da, 0.0)
        if A_PER_CHANNEL:
            da_acc += tl.sum(da, axis=0)
        else:
            tl.store(da_base + t64[:, None] * s_dat, da.to(da_ptr.dtype.element_ty), mask=m)

    # dh0 = a_first * delta_first (0 when L_b = 0: carry is 0 then)
    if A_PER_CHANNEL:
        a_first = a_row
    else:
        a_first = tl.load(
            a_ptr + t_first.to(tl.int64) * s_at + b64 * s_ab + d64 * s_ad,
            mask=mask_d & (L > 0), other=0.0
        ).to(CDT)
    dh0 = a_first * carry
    tl.store(dh0_ptr + b64 * s_dh0b + d64 * s_dh0d, dh0.to(dh0_ptr.dtype.element_ty), mask=mask_d)

    if A_PER_CHANNEL:
        # per-batch-row partial sums, reduced over b on the host side
        tl.store(da_ptr + b64 * s_dab + d64 * s_dad, da_acc.to(da_ptr.dtype.element_ty), mask=mask_d)


# --------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------- #

_MAX_BLOCK_T = 64
_MAX_BLOCK_D = 32
_MIN_BLOCK = 16
_MIN_PROGRAMS = 264  # ~2 waves of programs on a 132-SM GPU


def _compute_types(dtype: torch.dtype):
    if dtype == torch.float64:
        return tl.float64, torch.float64
    return tl.float32, torch.float32


def _blocks(B: int, T: int, D: int):
    block_t = max(_MIN_BLOCK, min(_MAX_BLOCK_T, triton.next_power_of_2(max(T, 1))))
    block_d = max(_MIN_BLOCK, min(_MAX_BLOCK_D, triton.next_power_of_2(max(D, 1))))
    # each program walks all of T sequentially: prefer more, narrower programs
    # when B * D is too small to fill the GPU
    while block_d > _MIN_BLOCK and B * triton.cdiv(D, block_d) < _MIN_PROGRAMS:
        block_d //= 2
    n_dblk = triton.cdiv(D, block_d)
    num_warps = 4 if block_t * block_d >= 2048 else (2 if block_t * block_d >= 512 else 1)
    return block_t, block_d, n_dblk, num_warps


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    """The allocation rule used everywhere: keep t if its last dim is unit-stride."""
    return t if t.stride(-1) == 1 else t.contiguous()


def _check(a: torch.Tensor, x: torch.Tensor, h0: Optional[torch.Tensor]):
    if x.dim() != 3:
        raise ValueError(f"x must be (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if a.dim() == 3:
        if tuple(a.shape) != (B, T, D):
            raise ValueError(f"a must be (B, T, D)={tuple(x.shape)} or (D,), got {tuple(a.shape)}")
    elif a.dim() == 1:
        if a.shape[0] != D:
            raise ValueError(f"per-channel a must be (D,)=({D},), got {tuple(a.shape)}")
    else:
        raise ValueError(f"a must be (B, T, D) or (D,), got shape {tuple(a.shape)}")
    if h0 is not None and tuple(h0.shape) != (B, D):
        raise ValueError(f"h0 must be (B, D)=({B}, {D}), got {tuple(h0.shape)}")


def _lengths_arg(lengths: Optional[torch.Tensor], B: int, like: torch.Tensor):
    """(pointer argument, stride, HAS_LEN) for a kernel's lengths operand."""
    if lengths is None:
        return like, 0, False
    if lengths.dim() != 1 or lengths.size(0) != B:
        raise ValueError(f"lengths must be a 1-D tensor of B = {B} entries, "
                         f"got shape {tuple(lengths.shape)}")
    if lengths.device != like.device:
        raise ValueError(f"lengths must be on {like.device}, got {lengths.device}")
    lengths = lengths.to(torch.int64)
    return lengths, lengths.stride(0), True


def scan_fwd(
    a: torch.Tensor,
    x: torch.Tensor,
    h0: Optional[torch.Tensor],
    reverse: bool,
    leaky: bool,
    lengths: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + x_t  (leaky: + (1 - a_t) * x_t); returns h like x.

    lengths: None or (B,) int64 on x's device: row b runs its first L_b steps
    and h is 0 beyond."""
    _check(a, x, h0)
    x = _unit_last(x)
    h = torch.empty_like(x)
    B, T, D = x.shape
    if B == 0 or T == 0 or D == 0:
        return h

    per_channel = a.dim() == 1
    if per_channel:
        s_a = (0, 0, a.stride(0))
    else:
        s_a = a.stride()
    has_h0 = h0 is not None
    h0_arg = h0 if has_h0 else x
    s_h0 = h0.stride() if has_h0 else (0, 0)
    cdt, _ = _compute_types(x.dtype)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, x)
    block_t, block_d, n_dblk, num_warps = _blocks(B, T, D)

    _scan_fwd_kernel[(B * n_dblk,)](
        a, x, h0_arg, h, len_arg,
        T, D, n_dblk,
        *s_a,
        *x.stride(),
        *s_h0,
        *h.stride(),
        s_len,
        REVERSE=bool(reverse),
        LEAKY=bool(leaky),
        HAS_H0=has_h0,
        HAS_LEN=has_len,
        A_PER_CHANNEL=per_channel,
        CDT=cdt,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    return h


def scan_bwd(
    grad_h: torch.Tensor,
    a: torch.Tensor,
    x: Optional[torch.Tensor],
    h: torch.Tensor,
    h0: Optional[torch.Tensor],
    reverse: bool,
    leaky: bool,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dx, da, dh0) of scan_fwd given grad_h = dL/dh and the forward output h.

    x (v) is read only when leaky; the linear scan may pass None, and dx then
    follows h's layout (as the C++ kernels do).  With lengths, grad_h at
    t >= L_b is ignored and dx, da are 0 there."""
    if x is None:
        if leaky:
            raise ValueError("scan_bwd: the leaky integrator's backward needs v")
        x = h
    _check(a, x, h0)
    B, T, D = x.shape
    if tuple(grad_h.shape) != (B, T, D) or tuple(h.shape) != (B, T, D):
        raise ValueError("grad_h and h must have the shape of x")

    x = _unit_last(x)
    dx = torch.empty_like(x)
    per_channel = a.dim() == 1
    if per_channel:
        da = torch.empty((D,), dtype=a.dtype, device=a.device)
    else:
        a = _unit_last(a)
        da = torch.empty_like(a)
    dh0 = torch.empty((B, D), dtype=x.dtype, device=x.device)

    if B == 0 or T == 0 or D == 0:
        dh0.zero_()
        if per_channel:
            da.zero_()
        return dx, da, dh0

    cdt, acc_torch = _compute_types(x.dtype)
    if per_channel:
        s_a = (0, 0, a.stride(0))
        da_out = torch.empty((B, D), dtype=acc_torch, device=x.device)
        s_da = (da_out.stride(0), 0, da_out.stride(1))
    else:
        s_a = a.stride()
        da_out = da
        s_da = da.stride()
    has_h0 = h0 is not None
    h0_arg = h0 if has_h0 else x
    s_h0 = h0.stride() if has_h0 else (0, 0)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, x)
    block_t, block_d, n_dblk, num_warps = _blocks(B, T, D)

    _scan_bwd_kernel[(B * n_dblk,)](
        grad_h, a, x, h, h0_arg, len_arg,
        dx, da_out, dh0,
        T, D, n_dblk,
        *grad_h.stride(),
        *s_a,
        *x.stride(),
        *h.stride(),
        *s_h0,
        *dx.stride(),
        *s_da,
        *dh0.stride(),
        s_len,
        REVERSE=bool(reverse),
        LEAKY=bool(leaky),
        HAS_H0=has_h0,
        HAS_LEN=has_len,
        A_PER_CHANNEL=per_channel,
        CDT=cdt,
        BLOCK_T=block_t,
        BLOCK_D=block_d,
        num_warps=num_warps,
    )
    if per_channel:
        da.copy_(da_out.sum(dim=0))
    return dx, da, dh0
