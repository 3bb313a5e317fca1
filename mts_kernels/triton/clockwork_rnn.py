"""Triton kernels of the clockwork recurrence in one fused time loop.

Modules of ``module_sizes`` units, fast to slow; unit j belongs to module m(j),
which is active at step t when t >= first_m and (t - first_m) % T_m == 0::

    active:    u_j(t) = phi(p_j(t) + sum_{k: m(k) >= m(j)} W_jk h_k(t-1))
               h_j(t) = alpha_j h_j(t-1) + (1 - alpha_j) u_j(t)   (alpha None: u_j(t))
    inactive:  h_j(t) = h_j(t-1),  u_j(t) = 0

Backward, delta = dL/dh(t) carried, t = T-1 down to 0::

    e_j(t) = (1 - alpha_j) phi'(u_j) delta_j     active (= dL/dp_j(t)); 0 inactive
    dL/dh(t-1) = where(active, alpha delta, delta) + e(t) @ W_upper
    dalpha_j = sum_{active t, b} delta_j (h_j(t-1) - u_j(t))

and dW = sum_t e(t)^T h(t-1) (block upper part) as one GEMM after the kernel.

Design: the persistent per-batch-block loop of mts_kernels/triton/leaky_rnn.py.
Each program owns BLOCK_B batch rows and all H units, keeps the block-upper
part of W_hh^T in registers (the lower blocks are masked on load, so they are
never read: a NaN there changes nothing) and walks the T steps. The clock is
per unit (module index, period and first step as three (H,) vectors): a unit's
activity is one integer test per step, the held value comes from the state in
registers, so nothing is gathered or concatenated. The step's product is one
``tl.dot`` over the whole (masked) tile: with H <= MAX_HIDDEN it is a single
tensor-core instruction sequence whose cost does not shrink with fewer active
rows, so the schedule's skipped FLOPs are skipped only in the pointwise work and
the loads of p. Lengths (one L_b per row): steps t >= L_b write h = u = dp = 0,
read nothing and carry nothing.

State and accumulation are float32 (float64 for float64); float16/bfloat16
load upcast and store in the input dtype.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from mts_kernels.triton.leaky_rnn import (_BLOCK_B, MAX_HIDDEN, _block_lengths, _compute_types,
                                          _config, _precision, _tanh)
from mts_kernels.triton.scan import _lengths_arg

__all__ = ["clockwork_rnn_fwd", "clockwork_rnn_bwd", "MAX_HIDDEN"]


@triton.jit
def _tile(mod_ptr, period_ptr, first_ptr, B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    # this program's batch rows and all units, and each unit's clock (module,
    # period, first step; padded units never active)
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    m = mask_b[:, None] & mask_h[None, :]
    b64 = offs_b.to(tl.int64)
    j64 = offs_h.to(tl.int64)
    mod = tl.load(mod_ptr + j64, mask=mask_h, other=0)
    period = tl.load(period_ptr + j64, mask=mask_h, other=1)
    first = tl.load(first_ptr + j64, mask=mask_h, other=2**62)
    return offs_b, mask_b, mask_h, m, b64, j64, mod, period, first


@triton.jit
def _active(t, period, first):
    # (1, BLOCK_H) bool: the unit's module runs at step t; t - first >= 0 before the
    # modulo, so a negative remainder never appears
    d = t - first
    return ((d >= 0) & (d % period == 0))[None, :]


@triton.jit
def _clockwork_rnn_fwd_kernel(
    p_ptr, w_ptr, h0_ptr, alpha_ptr, h_ptr, u_ptr, len_ptr, mod_ptr, period_ptr, first_ptr,
    T, B, H,
    s_pt, s_pb, s_ph,
    s_w0, s_w1,
    s_h0b, s_h0h,
    s_a, s_len,
    HAS_LEN: tl.constexpr,
    LEAK: tl.constexpr,
    HAS_H0: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    offs_b, mask_b, mask_h, m, b64, j64, mod, period, first = _tile(
        mod_ptr, period_ptr, first_ptr, B, H, BLOCK_B, BLOCK_H)

    # wt[k, j] = W[j, k] where m(k) >= m(j) (the block-upper part), else 0
    upper = (mod[:, None] >= mod[None, :]) & mask_h[:, None] & mask_h[None, :]
    wt = tl.load(w_ptr + j64[None, :] * s_w0 + j64[:, None] * s_w1, mask=upper, other=0.0).to(CDT)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha
    if HAS_H0:
        h_prev = tl.load(h0_ptr + b64[:, None] * s_h0b + j64[None, :] * s_h0h, mask=m,
                         other=0.0).to(CDT)
    else:
        h_prev = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)

    p_rows = p_ptr + b64[:, None] * s_pb + j64[None, :] * s_ph
    off_bh = b64[:, None] * H + j64[None, :]  # h, u: contiguous (T, B, H)
    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    for t in range(0, T):
        t64 = t + tl.zeros([1], dtype=tl.int64)
        act = _active(t64, period, first)
        valid = (t < L)[:, None]
        run = m & valid & act
        z = tl.load(p_rows + t64 * s_pt, mask=run, other=0.0).to(CDT)
        z += tl.dot(h_prev, wt, input_precision=PREC)
        if TANH:
            u = _tanh(z)
        else:
            u = tl.where(z < 0.0, 0.0, z)  # NaN propagates, as torch.relu
        if LEAK:
            hn = tl.where(act, alpha * h_prev + one_m_alpha * u, h_prev)
            tl.store(u_ptr + t64 * B * H + off_bh, tl.where(run, u, 0.0).to(u_ptr.dtype.element_ty),
                     mask=m)
        else:
            hn = tl.where(act, u, h_prev)
        hn = tl.where(valid, hn, 0.0)  # padded steps: h = 0 (and nothing later is valid)
        tl.store(h_ptr + t64 * B * H + off_bh, hn.to(h_ptr.dtype.element_ty), mask=m)
        h_prev = hn


@triton.jit
def _clockwork_rnn_bwd_kernel(
    g_ptr, w_ptr, h_ptr, h0_ptr, alpha_ptr, u_ptr, e_ptr, dh0_ptr, da_ptr, len_ptr,
    mod_ptr, period_ptr, first_ptr,
    T, B, H,
    s_gt, s_gb, s_gh,
    s_w0, s_w1,
    s_ht, s_hb, s_hh,
    s_h0b, s_h0h,
    s_a,
    s_ut, s_ub, s_uh,
    s_len,
    HAS_LEN: tl.constexpr,
    LEAK: tl.constexpr,
    HAS_H0: tl.constexpr,
    TANH: tl.constexpr,
    CDT: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    # e (dp, compute dtype, contiguous) at every step; dh0 the carry left after
    # step 0; da (LEAK): this program's rows' dalpha terms, summed over the batch
    # by the launcher
    offs_b, mask_b, mask_h, m, b64, j64, mod, period, first = _tile(
        mod_ptr, period_ptr, first_ptr, B, H, BLOCK_B, BLOCK_H)

    # w[j, k] = W[j, k] where m(k) >= m(j): (e @ w)[b, k] = sum_j e[b, j] W[j, k]
    upper = (mod[None, :] >= mod[:, None]) & mask_h[:, None] & mask_h[None, :]
    w = tl.load(w_ptr + j64[:, None] * s_w0 + j64[None, :] * s_w1, mask=upper, other=0.0).to(CDT)
    if LEAK:
        alpha = tl.load(alpha_ptr + j64 * s_a, mask=mask_h, other=0.0).to(CDT)[None, :]
        one_m_alpha = 1.0 - alpha
        da = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
        if HAS_H0:
            h0 = tl.load(h0_ptr + b64[:, None] * s_h0b + j64[None, :] * s_h0h, mask=m,
                         other=0.0).to(CDT)
        else:
            h0 = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)

    g_rows = g_ptr + b64[:, None] * s_gb + j64[None, :] * s_gh
    u_rows = u_ptr + b64[:, None] * s_ub + j64[None, :] * s_uh
    h_rows = h_ptr + b64[:, None] * s_hb + j64[None, :] * s_hh
    off_bh = b64[:, None] * H + j64[None, :]
    L = _block_lengths(len_ptr, offs_b, mask_b, s_len, T, HAS_LEN, BLOCK_B)

    # the carry stays 0 through a row's padded steps (processed first)
    carry = tl.zeros([BLOCK_B, BLOCK_H], dtype=CDT)
    for i in range(0, T):
        t = T - 1 - i
        t64 = t + tl.zeros([1], dtype=tl.int64)
        act = _active(t64, period, first)
        valid = (t < L)[:, None]
        run = m & valid & act
        dlt = tl.load(g_rows + t64 * s_gt, mask=m & valid, other=0.0).to(CDT) + carry
        uu = tl.load(u_rows + t64 * s_ut, mask=run, other=0.0).to(CDT)
        if TANH:
            e = dlt * (1.0 - uu * uu)
        else:
            e = tl.where(uu > 0.0, dlt, 0.0)
        if LEAK:
            e = e * one_m_alpha
        e = tl.where(run, e, 0.0)
        tl.store(e_ptr + t64 * B * H + off_bh, e.to(e_ptr.dtype.element_ty), mask=m)
        if LEAK:
            hp = tl.load(h_rows + (t64 - 1) * s_ht, mask=run & (t > 0), other=0.0).to(CDT)
            hp = tl.where(t > 0, hp, h0)
            da += tl.where(run, dlt * (hp - uu), 0.0)
            keep = tl.where(act, alpha, 1.0)
        else:
            keep = tl.where(act, 0.0, 1.0)
        carry = keep * dlt + tl.dot(e, w, input_precision=PREC)
    tl.store(dh0_ptr + off_bh, carry.to(dh0_ptr.dtype.element_ty), mask=m)
    if LEAK:
        tl.store(da_ptr + off_bh, da.to(da_ptr.dtype.element_ty), mask=m)


# --------------------------------------------------------------------------- #
# Launchers
# --------------------------------------------------------------------------- #


def _clock(H: int, module_sizes: Sequence[int], periods: Sequence[int], first_steps: Sequence[int],
           T: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-unit (module, period, first step) vectors; periods and first steps
    clamped to T (the same active steps in [0, T)), so every test fits int64."""
    sizes, periods, firsts = list(module_sizes), list(periods), list(first_steps)
    g = len(sizes)
    if not (g >= 1 and len(periods) == g and len(firsts) == g):
        raise ValueError(f"clockwork_rnn: module_sizes, periods and first_steps must have the same "
                         f"(non-zero) length, got {len(sizes)}, {len(periods)} and {len(firsts)}")
    if any(k < 1 for k in sizes) or sum(sizes) != H:
        raise ValueError(f"clockwork_rnn: module_sizes must be >= 1 and sum to hidden_size {H}, "
                         f"got {tuple(sizes)}")
    if any(P < 1 for P in periods):
        raise ValueError(f"clockwork_rnn: periods must be >= 1, got {tuple(periods)}")
    if any(f < 0 for f in firsts):
        raise ValueError(f"clockwork_rnn: first_steps must be >= 0, got {tuple(firsts)}")
    return _unit_clock(tuple(sizes), tuple(min(P, T) for P in periods), tuple(min(f, T) for f in firsts),
                       torch.device(device))


@functools.lru_cache(maxsize=64)
def _unit_clock(sizes, periods, firsts, device):
    # cached per configuration and device: a call then copies nothing from the
    # host, so a warmed-up call can be captured in a CUDA graph (the copy of a
    # first call could not)
    mod = torch.repeat_interleave(torch.arange(len(sizes), dtype=torch.int32), torch.tensor(sizes))
    per = torch.tensor(periods, dtype=torch.int64)[mod.long()]
    fst = torch.tensor(firsts, dtype=torch.int64)[mod.long()]
    return mod.to(device), per.to(device), fst.to(device)


def _check(p: torch.Tensor, weight_hh: torch.Tensor, h0: Optional[torch.Tensor],
           alpha: Optional[torch.Tensor], nonlinearity: str, name: str = "p"):
    if p.dim() != 3:
        raise ValueError(f"clockwork_rnn: {name} must be 3-D (T, B, H), got shape {tuple(p.shape)}")
    if not p.dtype.is_floating_point:
        raise ValueError(f"clockwork_rnn: {name} must be floating point, got {p.dtype}")
    T, B, H = p.shape
    if T == 0:
        raise ValueError(f"clockwork_rnn: {name} needs at least one time step")
    for tname, t, shape in (("weight_hh", weight_hh, (H, H)), ("h0", h0, (B, H)), ("alpha", alpha, (H,))):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"clockwork_rnn: {tname} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise ValueError(f"clockwork_rnn: {tname} must be {p.dtype} on {p.device}, "
                             f"got {t.dtype} on {t.device}")
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"clockwork_rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if H > MAX_HIDDEN:
        raise ValueError(f"clockwork_rnn (triton): hidden size {H} exceeds the limit {MAX_HIDDEN} "
                         "(the recurrent weights must stay resident on chip)")
    return T, B, H


def clockwork_rnn_fwd(p: torch.Tensor, weight_hh: torch.Tensor, h0: Optional[torch.Tensor],
                      alpha: Optional[torch.Tensor], module_sizes: Sequence[int], periods: Sequence[int],
                      first_steps: Sequence[int], nonlinearity: str,
                      lengths: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(h, u) as the C++ op's: h (T, B, H) in p's dtype; u the activations (0 at
    inactive and padded steps) when alpha is given, else an empty tensor."""
    T, B, H = _check(p, weight_hh, h0, alpha, nonlinearity)
    mod, per, fst = _clock(H, module_sizes, periods, first_steps, T, p.device)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, p)
    leak = alpha is not None
    cdt, _ = _compute_types(p.dtype)
    h = torch.empty((T, B, H), dtype=p.dtype, device=p.device)
    u = torch.empty((T, B, H) if leak else (0,), dtype=p.dtype, device=p.device)
    if B == 0:
        return h, u
    block_h, num_warps = _config(H)
    _clockwork_rnn_fwd_kernel[(triton.cdiv(B, _BLOCK_B),)](
        p, weight_hh, h0 if h0 is not None else p, alpha if leak else p, h, u if leak else h,
        len_arg, mod, per, fst,
        T, B, H,
        *p.stride(), *weight_hh.stride(),
        *(h0.stride() if h0 is not None else (0, 0)),
        alpha.stride(0) if leak else 0, s_len,
        HAS_LEN=has_len, LEAK=leak, HAS_H0=h0 is not None, TANH=nonlinearity == "tanh",
        CDT=cdt, PREC=_precision(p.device, cdt), BLOCK_B=_BLOCK_B, BLOCK_H=block_h,
        num_warps=num_warps, num_stages=1,
    )
    return h, u


def clockwork_rnn_bwd(grad_h: torch.Tensor, weight_hh: torch.Tensor, h: torch.Tensor, u: torch.Tensor,
                      h0: Optional[torch.Tensor], alpha: Optional[torch.Tensor],
                      module_sizes: Sequence[int], periods: Sequence[int], first_steps: Sequence[int],
                      nonlinearity: str, lengths: Optional[torch.Tensor] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dp, dweight_hh, dh0, dalpha) as the C++ op's: dp 0 at inactive and padded
    steps, dweight_hh 0 in the blocks j < i, dalpha empty when alpha is None."""
    T, B, H = _check(h, weight_hh, h0, alpha, nonlinearity, "h")
    if tuple(grad_h.shape) != (T, B, H):
        raise ValueError(f"clockwork_rnn_bwd: grad_h must have shape {(T, B, H)}, got {tuple(grad_h.shape)}")
    leak = alpha is not None
    if leak and tuple(u.shape) != (T, B, H):
        raise ValueError(f"clockwork_rnn_bwd: u must have shape {(T, B, H)} when alpha is given, "
                         f"got {tuple(u.shape)}")
    mod, per, fst = _clock(H, module_sizes, periods, first_steps, T, h.device)
    len_arg, s_len, has_len = _lengths_arg(lengths, B, h)
    dtype, dev = h.dtype, h.device
    cdt, ctorch = _compute_types(dtype)
    uu = u if leak else h  # without a leak u = h at active steps
    e = torch.empty((T, B, H), dtype=ctorch, device=dev)
    dh0 = torch.zeros((B, H), dtype=ctorch, device=dev)
    da = torch.zeros((B, H) if leak else (0,), dtype=ctorch, device=dev)
    if B > 0:
        block_h, num_warps = _config(H)
        _clockwork_rnn_bwd_kernel[(triton.cdiv(B, _BLOCK_B),)](
            grad_h, weight_hh, h, h0 if h0 is not None else h, alpha if leak else h, uu, e, dh0,
            da if leak else dh0, len_arg, mod, per, fst,
            T, B, H,
            *grad_h.stride(), *weight_hh.stride(), *h.stride(),
            *(h0.stride() if h0 is not None else (0, 0)),
            alpha.stride(0) if leak else 0,
            *uu.stride(), s_len,
            HAS_LEN=has_len, LEAK=leak, HAS_H0=h0 is not None, TANH=nonlinearity == "tanh",
            CDT=cdt, PREC=_precision(dev, cdt), BLOCK_B=_BLOCK_B, BLOCK_H=block_h,
            num_warps=num_warps, num_stages=1,
        )
    # dW = sum_t e(t)^T h(t-1) as one GEMM (h at padded steps and e at inactive
    # ones are 0), then the blocks j < i, never read, to exactly 0
    hc = h.to(ctorch)
    dw = e[1:].reshape(-1, H).t().mm(hc[:-1].reshape(-1, H))
    if h0 is not None:
        dw.addmm_(e[0].t(), h0.to(ctorch))
    upper = mod.unsqueeze(0) >= mod.unsqueeze(1)
    dw = torch.where(upper, dw, dw.new_zeros(()))
    dalpha = da.sum(0).to(dtype) if leak else torch.empty(0, dtype=dtype, device=dev)
    return e.to(dtype), dw.to(dtype), dh0.to(dtype), dalpha
