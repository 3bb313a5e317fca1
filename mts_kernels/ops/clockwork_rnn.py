"""clockwork_rnn: the clockwork recurrence (Koutník et al., 2014), fused.

Modules i = 0..g-1 (sizes k_i, periods T_0 < ... < T_{g-1}, fast to slow); module
i is active at step t when (t0 + t) % T_i == 0:

    active:    h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * phi(sum_{j >= i} W_ij h_j(t-1) + p_i(t))
    inactive:  h_i(t) = h_i(t-1)

Decomposition (DESIGN-NOTES §4): slow modules never read fast ones, so the
slowest module's trajectory is computed first; then for each faster module every
input it needs from slower modules (their held values at t-1) is known, and its
cross-module term for all of its active steps is one large GEMM. What stays
sequential is a k_i x k_i recurrence over the module's ceil(T / T_i) active steps:
the fused leaky_rnn kernel. Inactive steps cost nothing; only the
block-upper-triangular part of W_hh is read (the rest gets zero gradient). The
backward runs the other way through the same pieces (fastest module first), each
slow value's gradient summed over the interval it was held (index_select's backward).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mts_kernels import reference
from mts_kernels.ops import _backend
from mts_kernels.ops.leaky_rnn import NONLINEARITIES, leaky_rnn


def check_modules(periods, module_sizes, hidden_size: int, where: str = "clockwork_rnn") -> None:
    """Clear errors for a bad clock configuration."""
    def ints(name, values):
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"{where}: {name} must be a non-empty sequence of ints, got {values!r}")
        for v in values:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{where}: {name} must contain ints, got {values!r}")

    ints("periods", periods)
    ints("module_sizes", module_sizes)
    if any(p < 1 for p in periods):
        raise ValueError(f"{where}: periods must be >= 1, got {tuple(periods)}")
    if any(b <= a for a, b in zip(periods, periods[1:])):
        raise ValueError(f"{where}: periods must be strictly increasing (modules ordered fast to slow), "
                         f"got {tuple(periods)}")
    if len(periods) != len(module_sizes):
        raise ValueError(f"{where}: periods and module_sizes must have the same length, got "
                         f"{len(periods)} periods and {len(module_sizes)} module sizes")
    if any(k < 1 for k in module_sizes):
        raise ValueError(f"{where}: module_sizes must be >= 1, got {tuple(module_sizes)}")
    if sum(module_sizes) != hidden_size:
        raise ValueError(f"{where}: module_sizes must sum to hidden_size {hidden_size}, got "
                         f"{tuple(module_sizes)} (sum {sum(module_sizes)})")


def _count_active(t: Tensor, first: int, period: int) -> Tensor:
    """Number of active steps of a module in [0, t] (t may be -1)."""
    return torch.where(t >= first, torch.div(t - first, period, rounding_mode="floor") + 1,
                       torch.zeros_like(t))


def clockwork_rnn(p: Tensor, weight_hh: Tensor, h0: Optional[Tensor] = None, *,
                  periods: Sequence[int], module_sizes: Sequence[int],
                  alpha: Optional[Tensor] = None, nonlinearity: str = "tanh", t0: int = 0,
                  batch_first: bool = False, backend: Optional[str] = None) -> Tensor:
    """Clockwork recurrence over all steps, fused (see the module docstring).

    p: (T, B, H) (or (B, T, H) batch_first): W_ih x_t + b_ih + b_hh for all steps.
    weight_hh: (H, H), read block-upper-triangularly; h0: (B, H) or None (zeros);
    periods / module_sizes: per module, fast to slow; alpha: (H,) leak or None;
    t0: the global clock at the first step (keeps the phase across chunks).
    Returns h shaped like p; the final state is its last step.
    """
    _check_args(p, weight_hh, h0, periods, module_sizes, alpha, nonlinearity, t0, batch_first)
    be = _backend.resolve(backend, "leaky_rnn_fwd", p.device, p.dtype)
    if be == "reference":
        return reference.clockwork_rnn(p, weight_hh, h0, periods, module_sizes, alpha=alpha,
                                       nonlinearity=nonlinearity, t0=t0, batch_first=batch_first)
    x = p.transpose(0, 1) if batch_first else p
    T, B, H = x.shape
    if h0 is None:
        h0 = x.new_zeros(B, H)
    offs = [0]
    for k in module_sizes:
        offs.append(offs[-1] + k)
    g = len(periods)
    firsts = [(-t0) % P for P in periods]
    steps = torch.arange(T, device=x.device)
    # states[i]: module i's initial state followed by its value after each active step
    states: list = [None] * g
    for i in reversed(range(g)):
        lo, hi, P, f = offs[i], offs[i + 1], periods[i], firsts[i]
        h0_i = h0[:, lo:hi]
        if f >= T:  # never active in this chunk: holds its state
            states[i] = h0_i.unsqueeze(0)
            continue
        p_i = x[f::P, :, lo:hi]
        if i < g - 1:
            active = steps[f::P]
            held = [states[j].index_select(0, _count_active(active - 1, firsts[j], periods[j]))
                    for j in range(i + 1, g)]
            p_i = p_i + F.linear(torch.cat(held, -1), weight_hh[lo:hi, hi:])
        h_i = leaky_rnn(p_i, weight_hh[lo:hi, lo:hi], h0_i,
                        alpha=None if alpha is None else alpha[lo:hi],
                        nonlinearity=nonlinearity, backend=be)
        states[i] = torch.cat([h0_i.unsqueeze(0), h_i], 0)
    h = torch.cat([states[j].index_select(0, _count_active(steps, firsts[j], periods[j]))
                   for j in range(g)], -1)
    return h.transpose(0, 1) if batch_first else h


def _check_args(p, weight_hh, h0, periods, module_sizes, alpha, nonlinearity, t0, batch_first):
    op = "clockwork_rnn"
    layout = "(B, T, H)" if batch_first else "(T, B, H)"
    if not isinstance(p, Tensor) or p.dim() != 3:
        got = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
        raise ValueError(f"{op}: p must be a 3-D tensor {layout}, got {got}")
    if p.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{op}: p must be float16, bfloat16, float32 or float64, got {p.dtype}")
    B = p.size(0 if batch_first else 1)
    H = p.size(2)
    if p.size(1 if batch_first else 0) == 0:
        raise ValueError(f"{op}: p must have at least one time step, got shape {tuple(p.shape)}")
    check_modules(periods, module_sizes, H, op)
    for name, t, shape in (("weight_hh", weight_hh, (H, H)), ("h0", h0, (B, H)), ("alpha", alpha, (H,))):
        if t is None and name != "weight_hh":
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
        if t.dtype != p.dtype or t.device != p.device:
            raise TypeError(f"{op}: {name} must be {p.dtype} on {p.device}, got {t.dtype} on {t.device}")
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{op}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    if not isinstance(t0, int) or isinstance(t0, bool) or t0 < 0:
        raise ValueError(f"{op}: t0 must be an int >= 0, got {t0!r}")
