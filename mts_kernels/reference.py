"""Reference implementations: plain PyTorch loops over time, written the way a
user would write them. They are the oracle of every test and the baseline of
every benchmark; autograd through the loop gives their gradients.

Same signatures and conventions as the public ops, without `backend`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _scan_loop(decay: Tensor, x: Tensor, h0: Optional[Tensor], reverse: bool, batch_first: bool,
               leaky: bool) -> Tensor:
    time_dim = 1 if batch_first else 0
    xs = x.unbind(time_dim)
    if decay.dim() == 1:
        decays = [decay] * len(xs)
    else:
        decays = list(decay.unbind(time_dim))
    h = torch.zeros_like(xs[0]) if h0 is None else h0
    order = range(len(xs) - 1, -1, -1) if reverse else range(len(xs))
    out = [None] * len(xs)
    for t in order:
        a_t, x_t = decays[t], xs[t]
        h = a_t * h + ((1 - a_t) * x_t if leaky else x_t)
        out[t] = h
    return torch.stack(out, time_dim)


def linear_scan(a: Tensor, x: Tensor, h0: Optional[Tensor] = None, *, reverse: bool = False,
                batch_first: bool = True) -> Tensor:
    """h_t = a_t * h_{t-1} + x_t, h_0 = h0 (zeros when None); reverse runs t = T..1."""
    return _scan_loop(a, x, h0, reverse, batch_first, leaky=False)


def leaky_integrate(v: Tensor, alpha: Tensor, h0: Optional[Tensor] = None, *,
                    reverse: bool = False, batch_first: bool = True) -> Tensor:
    """h_t = alpha_t * h_{t-1} + (1 - alpha_t) * v_t, h_0 = h0 (zeros when None)."""
    return _scan_loop(alpha, v, h0, reverse, batch_first, leaky=True)
