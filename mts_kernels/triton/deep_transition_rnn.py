"""Triton kernels for one layer and direction of the deep-transition recurrence.

Processing steps k = 0..T-1 (time t = k, or t = T-1-k when ``reverse``), with
h_{-1} = h0 (zeros when None) before the start and depth L >= 1::

    s^0_t = h_{t-1}
    s^1_t = phi(W_1 s^0_t + p_t + b_1)
    s^l_t = phi(W_l s^{l-1}_t + b_l)                 l = 2..L
            (shortcut U, top layer: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
    h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t    (alpha None: h_t = s^L_t)

Backward, delta_t = dL/dh_t accumulated, processed k = T-1 down to 0, with
phi' taken from the saved outputs s (tanh: 1 - s^2, relu: s > 0)::

    e^L_t = phi'(s^L_t) * (1 - alpha) * delta_t
    e^l_t = phi'(s^l_t) * (e^{l+1}_t W_{l+1})       l = L-1..1    (e^1_t = dL/dp_t)
    delta_{t-1} += alpha * delta_t + e^1_t W_1 [+ e^L_t U]      (before the start: dh0)
    dalpha += sum_b delta_t * (h_{t-1} - s^L_t)

then, outside the kernel, as single large torch GEMMs / reductions::

    dW_1 = sum_t e^1_t^T h_{t-1},  dW_l = sum_t e^l_t^T s^{l-1}_t,  dU = sum_t e^L_t^T h_{t-1},
    db_l = sum_{t,b} e^l_t

Design (persistent per batch block, as mts_kernels.triton.leaky_rnn): each
program owns ``BLOCK_B`` batch rows and all hidden units (H padded to
``BLOCK_H``), holds W_1..W_L (and U) and the biases on chip for the whole
loop and walks the T steps sequentially: per step L ``tl.dot`` (L + 1 with the
shortcut) and the fused pointwise work.  There is no delay other than one
step, so the previous state (forward) and the pending delta (backward) travel
in registers and no program re-reads what it wrote: no barriers, no
workspace for the carry.  The one time loop, the tanh, the lengths handling,
the step-to-time mapping, compute types, dot precision and launch shape are
leaky_rnn's (imported from there; more warps with more resident tiles, see
``_launch_config``; ``num_stages=1`` as there: software-pipelining the
per-step p / grad_h / s loads is untried).  float16/bfloat16 inputs compute with
float32 state and accumulation (dots included), results stored in the input
dtype; float32 and float64 compute in their dtype.

On-chip weights: the L (+ 1) matrices are loaded once and kept on chip when
their compute-dtype footprint is at most ``RESIDENT_BYTES`` (128 KiB, what
leaky_rnn holds at its limit: W_hh and W_skip at H = 128 in float32).  Each
resident tile also gets a shared-memory copy for its ``tl.dot``, so beyond
that (e.g. H = 128 with L = 3 and U: 272 KiB of shared memory, more than an
H100/H200 block may have) each sub-step reloads its matrix from global memory
instead, where it stays L1/L2-resident (the loads are coalesced; the forward
transposes the tile on chip).

Limit: H <= ``MAX_HIDDEN`` (128), larger H raises ``ValueError``; callers
fall back to the C++/ATen implementation.

Variable lengths exactly as leaky_rnn (clamped to [0, T]): row b runs its
first L_b processing steps, padded steps write h = s = e = 0, read nothing
and carry nothing.  The h0 terms of dW_1 and dU pair h0 with e at each row's
first processing step, which the backward kernel keeps per row (E0, ES0):
with reverse and lengths that is a different time for each row.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from mts_kernels.triton.leaky_rnn import (
    _BLOCK_B, _block_lengths, _compute_types, _config, _delayed_weight_grad, _precision,
    _step_time, _tanh)
from mts_kernels.triton.scan import _lengths_arg

__all__ = ["deep_transition_rnn_fwd", "deep_transition_rnn_bwd", "MAX_HIDDEN", "RESIDENT_BYTES"]

# The weights must stay on chip (registers, or L1 when streamed): as leaky_rnn.
MAX_HIDDEN = 128
# On-chip budget for the resident weight tiles of one program (see module docstring).
RESIDENT_BYTES = 2 * 128 * 128 * 4


# --------------------------------------------------------------------------- #
# Kernels
# --------------------------------------------------------------------------- #


@triton.jit
def _phi(z, TANH: tl.constexpr):
    if TANH:
        return _tanh(z)
    else:
        return tl.where(z < 0.0, 0.0, z)  # NaN propagates, as torch.relu


@triton.jit
def _dphi(g, s, TANH: tl.constexpr):
    # g * phi'(z) from the output s = phi(z)
    if TANH:
        return g * (1.0 - s * s)
    else:
        return tl.where(s > 0.0, g, 0.0)


@triton.jit
def _load_w(w_ptr, l, s_w0, s_w1, s_w2, j64, mw, TRANS: tl.constexpr, CDT: tl.constexpr):
    # matrix l of a (L, H, H) stack, zero padded; TRANS: out[k, j] = W_l[j, k].
    # The load is always row-major (coalesced) and tl.trans transposes on chip.
    w = tl.load(w_ptr + l * s_w0 + j64[:, None] * s_w1 + j64[None, :] * s_w2, mask=mw,
                other=0.0).to(CDT)
    if TRANS:
        w = tl.trans(w)
    return w


@triton.jit
def _load_stack(w_ptr, s_w0, s_w1, s_w2, j64, mw, N: tl.constexpr, RESIDENT: tl.constexpr,
                TRANS: tl.constexpr, CDT: tl.constexpr):
    # the N matrices, loaded once for the whole loop (a tuple; empty when streamed)
    ws = ()
    if RESIDENT:
        for l in tl.static_range(N):
            ws = ws + (_load_w(w_ptr, l, s_w0, s_w1, s_w2, j64, mw, TRANS, CDT),)
    return ws


@triton.jit
def _weight(ws, l: tl.constexpr, w_ptr, s_w0, s_w1, s_w2, j64, mw, RESIDENT: tl.constexpr,
            TRANS: tl.constexpr, CDT: tl.constexpr):
    # matrix l, resident or reloaded
    if RESIDENT:
        return ws[l]
    else:
        return _load_w(w_ptr, l, s_w0, s_w1, s_w2, j64, mw, TRANS, CDT)


@triton.jit
def _block(pid, B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    # the program's batch rows and all hidden units, with their masks
    offs_b = pid * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    m = mask_b[:, None] & mask_h[None, :]
    mw = mask_h[:, None] & mask_h[None, :]
    return offs_b, mask_b, mask_h, m, mw, offs_b.to(tl.int64), offs_h.to(tl.int64)


@triton.jit
def _dt_rnn_fwd_kernel(
    p_ptr, w_ptr, b_ptr, ws_ptr, h0_ptr, alpha_ptr, h_ptr, s_ptr, len_ptr,
    T, B, H, s_sl, s_ht,
    s_pt, s_pb, s_ph,
    s_w0, s_w1, s_w2,
    s_b0, s_b1,
    s_ws0, s_ws1,
    s_h0b, s_h0h,
    s_a, s_len,
    DEPTH: tl.constexpr,
    HAS_LEN: tl.constexpr,
    REVERSE: tl.constexpr,
    LEAK: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SHORTCUT: tl.constexpr,
    RESIDENT: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_b, mask_b, mask_h, m, mw, b64, j64 = _block(pid, B, H, BLOCK_B, BLOCK_H)

    # W_l^T, U^T (wt[k, j] = W_l[j, k])
    wts = _load_stack(w_ptr, s_w0, s_w1, s_w2, j64, mw, DEPTH, RESIDENT, True, CDT)
    if SHORTCUT:
        ust = _load_stack(ws_ptr, 0, s_ws0, s_ws1, j64, mw, 1, RESIDENT, True, CDT)
    if HAS_BIAS:
        bs = ()
        for l in tl.static_range(DEPTH):
            bs = bs + (tl.load(b_ptr + l * s_b0 + j64 * s_b1, mask=mask_h,
                               other=0.0).to(CDT)[None, :],)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha
    if HAS_H0:
        h_prev = tl.load(h0_ptr + b64[:, None] * s_h0b + j64[None, :] * s_h0h, mask=m,
                         other=0.0).to(CDT)
    else:
        h_prev = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)

    p_rows = p_ptr + b64[:, None] * s_pb + j64[None, :] * s_ph
    off_bh = b64[:, None] * H + j64[None, :]  # h (T, B, H), s (L, T, B, H): contiguous
    h_rows = h_ptr + off_bh
    s_rows = s_ptr + off_bh

    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    for k in range(0, T):
        t64 = _step_time(k, L, REVERSE)
        valid = (k < L)[:, None]
        z = tl.load(p_rows + t64 * s_pt, mask=m & valid, other=0.0).to(CDT)
        sl = h_prev
        for l in tl.static_range(DEPTH):
            wt = _weight(wts, l, w_ptr, s_w0, s_w1, s_w2, j64, mw, RESIDENT, True, CDT)
            if l > 0:
                z = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
            if HAS_BIAS:
                z += bs[l]
            if SHORTCUT and l == DEPTH - 1:
                u = _weight(ust, 0, ws_ptr, 0, s_ws0, s_ws1, j64, mw, RESIDENT, True, CDT)
                z += tl.dot(h_prev, u, input_precision=PREC)
            z += tl.dot(sl, wt, input_precision=PREC)
            sl = tl.where(valid, _phi(z, TANH), 0.0)
            tl.store(s_rows + l * s_sl + t64 * s_ht, sl.to(s_ptr.dtype.element_ty), mask=m)
        if LEAK:
            hn = tl.where(valid, alpha * h_prev + one_m_alpha * sl, 0.0)
        else:
            hn = sl  # already 0 at padded steps
        tl.store(h_rows + t64 * s_ht, hn.to(h_ptr.dtype.element_ty), mask=m)
        h_prev = hn  # padded steps come last in processing order: carrying 0 is harmless


@triton.jit
def _dt_rnn_bwd_kernel(
    g_ptr, w_ptr, ws_ptr, alpha_ptr, h_ptr, h0_ptr, s_ptr, e_ptr, dh0_ptr, len_ptr,
    e0_ptr, es0_ptr, da_ptr,
    T, B, H, s_el, s_et,
    s_gt, s_gb, s_gh,
    s_w0, s_w1, s_w2,
    s_ws0, s_ws1,
    s_a,
    s_ht, s_hb, s_hh,
    s_h0b, s_h0h,
    s_sl, s_st, s_sb, s_sh,
    s_len,
    DEPTH: tl.constexpr,
    HAS_LEN: tl.constexpr,
    H0_TERMS: tl.constexpr,
    REVERSE: tl.constexpr,
    LEAK: tl.constexpr,
    SHORTCUT: tl.constexpr,
    RESIDENT: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # e_ptr: (L, T, B, H) contiguous compute-dtype e^1..e^L (e^1 = dp), read by
    # the weight-gradient GEMMs.  H0_TERMS: also write E0 / ES0, e^1 / e^L at
    # each row's first processing step (paired with h0 in dW_1 / dU).  LEAK:
    # h0_ptr / h_ptr give h_{t-1} for dalpha, whose per-program sums over rows
    # and steps go to da_ptr (n_programs, H).
    pid = tl.program_id(0)
    offs_b, mask_b, mask_h, m, mw, b64, j64 = _block(pid, B, H, BLOCK_B, BLOCK_H)

    # W_l, U as they are: (e @ W_l)[b, k] = sum_j e[b, j] W_l[j, k]
    ws_l = _load_stack(w_ptr, s_w0, s_w1, s_w2, j64, mw, DEPTH, RESIDENT, False, CDT)
    if SHORTCUT:
        us = _load_stack(ws_ptr, 0, s_ws0, s_ws1, j64, mw, 1, RESIDENT, False, CDT)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha
        if H0_TERMS:
            h0 = tl.load(h0_ptr + b64[:, None] * s_h0b + j64[None, :] * s_h0h, mask=m,
                         other=0.0).to(CDT)
        else:
            h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
        da = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)

    g_rows = g_ptr + b64[:, None] * s_gb + j64[None, :] * s_gh
    h_rows = h_ptr + b64[:, None] * s_hb + j64[None, :] * s_hh
    s_rows = s_ptr + b64[:, None] * s_sb + j64[None, :] * s_sh
    off_bh = b64[:, None] * H + j64[None, :]  # e, dh0, E0, ES0: contiguous
    e_rows = e_ptr + off_bh

    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    if H0_TERMS:
        e0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
        if SHORTCUT:
            es0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    # pending delta_{t-1} contribution; 0 through a row's padded steps, which
    # are processed first and where everything read is masked to 0
    carry = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    for i in range(0, T):
        k = T - 1 - i
        t64 = _step_time(k, L, REVERSE)
        valid = (k < L)[:, None]
        mv = m & valid
        dlt = tl.load(g_rows + t64 * s_gt, mask=mv, other=0.0).to(CDT) + carry
        s_top = tl.load(s_rows + (DEPTH - 1) * s_sl + t64 * s_st, mask=mv, other=0.0).to(CDT)
        if LEAK:
            e = _dphi(one_m_alpha * dlt, s_top, TANH)
        else:
            e = _dphi(dlt, s_top, TANH)
        tl.store(e_rows + (DEPTH - 1) * s_el + t64 * s_et, e.to(e_ptr.dtype.element_ty), mask=m)
        e_top = e
        for l in tl.static_range(DEPTH - 1, 0, -1):
            # e holds e^{l+1} (0-based layer l); step down to l - 1
            w = _weight(ws_l, l, w_ptr, s_w0, s_w1, s_w2, j64, mw, RESIDENT, False, CDT)
            sl = tl.load(s_rows + (l - 1) * s_sl + t64 * s_st, mask=mv, other=0.0).to(CDT)
            e = _dphi(tl.dot(e, w, input_precision=PREC), sl, TANH)
            tl.store(e_rows + (l - 1) * s_el + t64 * s_et, e.to(e_ptr.dtype.element_ty), mask=m)
        w = _weight(ws_l, 0, w_ptr, s_w0, s_w1, s_w2, j64, mw, RESIDENT, False, CDT)
        c = tl.dot(e, w, input_precision=PREC)
        if SHORTCUT:
            u = _weight(us, 0, ws_ptr, 0, s_ws0, s_ws1, j64, mw, RESIDENT, False, CDT)
            c += tl.dot(e_top, u, input_precision=PREC)
        if H0_TERMS:
            e0 += tl.where(k < 1, e, 0.0)
            if SHORTCUT:
                es0 += tl.where(k < 1, e_top, 0.0)
        if LEAK:
            c += alpha * dlt
            kp = k - 1
            hp = tl.load(h_rows + _step_time(kp, L, REVERSE) * s_ht, mask=mv & (kp >= 0),
                         other=0.0).to(CDT)
            hp = tl.where(kp >= 0, hp, h0)
            da += dlt * (hp - s_top)  # 0 at padded steps: dlt is
        carry = c
    tl.store(dh0_ptr + off_bh, carry.to(dh0_ptr.dtype.element_ty), mask=m)
    if H0_TERMS:
        tl.store(e0_ptr + off_bh, e0.to(e0_ptr.dtype.element_ty), mask=m)
        if SHORTCUT:
            tl.store(es0_ptr + off_bh, es0.to(es0_ptr.dtype.element_ty), mask=m)
    if LEAK:
        tl.store(da_ptr + pid * H + j64, tl.sum(da, axis=0).to(da_ptr.dtype.element_ty),
                 mask=mask_h)


# --------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------- #


def _check(p: torch.Tensor, weight_hh: torch.Tensor, h0: Optional[torch.Tensor],
           bias_hh: Optional[torch.Tensor], weight_shortcut: Optional[torch.Tensor],
           alpha: Optional[torch.Tensor], nonlinearity: str, name: str = "p"):
    if p.dim() != 3:
        raise ValueError(f"deep_transition_rnn: {name} must be 3-D (T, B, H), "
                         f"got shape {tuple(p.shape)}")
    if not p.dtype.is_floating_point:
        raise ValueError(f"deep_transition_rnn: {name} must be floating point, got {p.dtype}")
    T, B, H = p.shape
    if T == 0:
        raise ValueError(f"deep_transition_rnn: {name} needs at least one time step")

    def same(t, tname, shape):
        if tuple(t.shape) != shape:
            raise ValueError(f"deep_transition_rnn: {tname} must have shape {shape}, "
                             f"got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise ValueError(f"deep_transition_rnn: {tname} must be {p.dtype} on {p.device}, "
                             f"got {t.dtype} on {t.device}")

    if weight_hh.dim() != 3 or weight_hh.shape[0] < 1:
        raise ValueError("deep_transition_rnn: weight_hh must have shape (L, H, H) with a "
                         f"transition depth L >= 1, got {tuple(weight_hh.shape)}")
    depth = weight_hh.shape[0]
    same(weight_hh, "weight_hh", (depth, H, H))
    if h0 is not None:
        same(h0, "h0", (B, H))
    if bias_hh is not None:
        same(bias_hh, "bias_hh", (depth, H))
    if weight_shortcut is not None:
        if depth < 2:
            raise ValueError("deep_transition_rnn: weight_shortcut needs a transition depth "
                             f">= 2, got weight_hh of depth {depth}")
        same(weight_shortcut, "weight_shortcut", (H, H))
    if alpha is not None:
        same(alpha, "alpha", (H,))
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError("deep_transition_rnn: nonlinearity must be 'tanh' or 'relu', "
                         f"got '{nonlinearity}'")
    if H > MAX_HIDDEN:
        raise ValueError(f"deep_transition_rnn (triton): hidden size {H} exceeds the limit "
                         f"{MAX_HIDDEN} (the recurrent weights must stay on chip); use the "
                         "ATen path")
    return T, B, H, depth


def _launch_config(H: int, n_mats: int) -> Tuple[int, int]:
    """(BLOCK_H, num_warps): leaky_rnn's, with more warps when n_mats weight
    tiles are on chip, so that each thread holds at most ~48 of their elements
    (16 warps at BLOCK_H = 128, else at most 8).  Chosen from ptxas -v for
    sm_90 (no GPU timing yet): H = 64 with 3 tiles spills ~8 KB at 4 warps,
    ~0 at 8; H = 64 with 4 tiles ~180 bytes at 8 warps, ~300 at 16 (128
    registers a thread); H = 32 with 4 tiles ~700 bytes at 2 warps, none at
    4; at H = 128 the forward spills at 8 warps (~6 KB at depth 1, as
    leaky_rnn's forward does) and about half that at 16."""
    block_h, num_warps = _config(H)
    need = triton.next_power_of_2(triton.cdiv(n_mats * block_h * block_h, 32 * 48))
    return block_h, max(num_warps, min(16 if block_h >= 128 else 8, need))


def _resident(n_mats: int, block_h: int, ctorch: torch.dtype) -> bool:
    elem = torch.empty((), dtype=ctorch).element_size()
    return n_mats * block_h * block_h * elem <= RESIDENT_BYTES


def deep_transition_rnn_fwd(
    p: torch.Tensor,
    weight_hh: torch.Tensor,
    h0: Optional[torch.Tensor],
    bias_hh: Optional[torch.Tensor],
    weight_shortcut: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    nonlinearity: str,
    reverse: bool,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns (h, s): h (T, B, H) and s (L, T, B, H) with s[l-1] = s^l_t, both
    contiguous in p's dtype and 0 at padded steps t >= L_b.  p (T, B, H) is the
    input projection W_ih x_t + b_ih; weight_hh (L, H, H) holds W_1..W_L (out,
    in); bias_hh (L, H); weight_shortcut U (H, H), only with L >= 2; alpha (H,);
    h0 (B, H); lengths None or (B,) int64 on p's device."""
    T, B, H, depth = _check(p, weight_hh, h0, bias_hh, weight_shortcut, alpha, nonlinearity)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, p)
    dtype = p.dtype
    cdt, ctorch = _compute_types(dtype)
    shortcut = weight_shortcut is not None
    leak = alpha is not None

    h = torch.empty((T, B, H), dtype=dtype, device=p.device)
    s = torch.empty((depth, T, B, H), dtype=dtype, device=p.device)
    if B == 0 or H == 0:
        return h, s
    block_h, num_warps = _launch_config(H, depth + shortcut)
    _dt_rnn_fwd_kernel[(triton.cdiv(B, _BLOCK_B),)](
        p, weight_hh, bias_hh if bias_hh is not None else p,
        weight_shortcut if shortcut else p, h0 if h0 is not None else p,
        alpha if leak else p, h, s, len_arg,
        T, B, H, T * B * H, B * H,
        *p.stride(),
        *weight_hh.stride(),
        *(bias_hh.stride() if bias_hh is not None else (0, 0)),
        *(weight_shortcut.stride() if shortcut else (0, 0)),
        *(h0.stride() if h0 is not None else (0, 0)),
        alpha.stride(0) if leak else 0, s_len,
        DEPTH=depth,
        HAS_LEN=has_len,
        REVERSE=bool(reverse),
        LEAK=leak,
        HAS_H0=h0 is not None,
        HAS_BIAS=bias_hh is not None,
        SHORTCUT=shortcut,
        RESIDENT=_resident(depth + shortcut, block_h, ctorch),
        TANH=nonlinearity == "tanh",
        CDT=cdt,
        PREC=_precision(p.device, cdt),
        BLOCK_B=_BLOCK_B,
        BLOCK_H=block_h,
        num_warps=num_warps,
        num_stages=1,
    )
    return h, s


def deep_transition_rnn_bwd(
    grad_h: torch.Tensor,
    weight_hh: torch.Tensor,
    h: torch.Tensor,
    s: torch.Tensor,
    h0: Optional[torch.Tensor],
    weight_shortcut: Optional[torch.Tensor],
    alpha: Optional[torch.Tensor],
    nonlinearity: str,
    reverse: bool,
    lengths: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dp, dweight_hh, dbias_hh, dh0, dweight_shortcut, dalpha) of
    deep_transition_rnn_fwd, given grad_h = dL/dh and the forward outputs h and
    s.  dp (T, B, H), dweight_hh (L, H, H), dbias_hh (L, H), dh0 (B, H);
    dweight_shortcut (H, H) or shape (0,) without a shortcut; dalpha (H,) or
    shape (0,) without alpha; all in h's dtype.  With lengths, grad_h at
    t >= L_b is ignored and dp is 0 there."""
    T, B, H, depth = _check(h, weight_hh, h0, None, weight_shortcut, alpha, nonlinearity, "h")
    len_arg, s_len, has_len = _lengths_arg(lengths, B, h)
    if tuple(grad_h.shape) != (T, B, H):
        raise ValueError(f"deep_transition_rnn_bwd: grad_h must have shape {(T, B, H)}, "
                         f"got {tuple(grad_h.shape)}")
    if tuple(s.shape) != (depth, T, B, H):
        raise ValueError(f"deep_transition_rnn_bwd: s must have shape {(depth, T, B, H)}, "
                         f"got {tuple(s.shape)}")
    for name, t in (("grad_h", grad_h), ("s", s)):
        if t.device != h.device:
            raise ValueError(f"deep_transition_rnn_bwd: {name} must be on {h.device}, "
                             f"got {t.device}")
    dtype, dev = h.dtype, h.device
    cdt, ctorch = _compute_types(dtype)
    shortcut = weight_shortcut is not None
    leak = alpha is not None
    h0_terms = h0 is not None

    e = torch.empty((depth, T, B, H), dtype=ctorch, device=dev)
    dh0 = torch.zeros((B, H), dtype=ctorch, device=dev)
    e0, es0 = (torch.zeros((B, H), dtype=ctorch, device=dev) if (h0_terms and use) else None
               for use in (True, shortcut))
    n_prog = triton.cdiv(B, _BLOCK_B)
    da = torch.zeros((n_prog, H), dtype=ctorch, device=dev) if leak else None

    if B > 0 and H > 0:
        block_h, num_warps = _launch_config(H, depth + shortcut)
        _dt_rnn_bwd_kernel[(n_prog,)](
            grad_h, weight_hh, weight_shortcut if shortcut else e, alpha if leak else e,
            h, h0 if h0 is not None else e, s, e, dh0, len_arg,
            *(t if t is not None else dh0 for t in (e0, es0, da)),
            T, B, H, T * B * H, B * H,
            *grad_h.stride(),
            *weight_hh.stride(),
            *(weight_shortcut.stride() if shortcut else (0, 0)),
            alpha.stride(0) if leak else 0,
            *h.stride(),
            *(h0.stride() if h0 is not None else (0, 0)),
            *s.stride(),
            s_len,
            DEPTH=depth,
            HAS_LEN=has_len,
            H0_TERMS=h0_terms,
            REVERSE=bool(reverse),
            LEAK=leak,
            SHORTCUT=shortcut,
            RESIDENT=_resident(depth + shortcut, block_h, ctorch),
            TANH=nonlinearity == "tanh",
            CDT=cdt,
            PREC=_precision(dev, cdt),
            BLOCK_B=_BLOCK_B,
            BLOCK_H=block_h,
            num_warps=num_warps,
            num_stages=1,
        )

    # weight gradients: one large GEMM (batched over the layers above the first)
    hc = h.to(ctorch)
    h0c = h0.to(ctorch) if h0 is not None else None
    dw = torch.empty((depth, H, H), dtype=ctorch, device=dev)
    dw[0] = _delayed_weight_grad(e[0], hc, h0c, e0, 1, reverse)
    if depth > 1:
        torch.bmm(e[1:].reshape(depth - 1, T * B, H).transpose(1, 2),
                  s[:-1].to(ctorch).reshape(depth - 1, T * B, H), out=dw[1:])
    db = e.sum((1, 2))
    dws = _delayed_weight_grad(e[depth - 1], hc, h0c, es0, 1, reverse).to(dtype) if shortcut \
        else torch.empty(0, dtype=dtype, device=dev)
    dalpha = da.sum(0).to(dtype) if leak else torch.empty(0, dtype=dtype, device=dev)
    # dp is copied out of e (which would stay alive with it) unless it is all of e
    return e[0].to(dtype, copy=depth > 1), dw.to(dtype), db.to(dtype), dh0.to(dtype), dws, dalpha
