"""The leak options shared by LeakyRNN and ClockworkRNN.

    leak=None: alpha = 0;  leak=float in [0, 1): a fixed alpha;
    leak="learned": alpha = exp(-1/tau) per unit, tau = exp(log_tau) learnable,
    initialised log-uniformly over tau_range.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor


def check_leak(where: str, leak, tau_range) -> Tuple[float, float]:
    """Validates leak and tau_range; returns tau_range as two floats."""
    if leak is not None and leak != "learned":
        if not isinstance(leak, (int, float)) or isinstance(leak, bool) or not 0 <= leak < 1:
            raise ValueError(f"{where}: leak must be None, a float in [0, 1) or 'learned', got {leak!r}")
    lo_hi = tuple(tau_range) if isinstance(tau_range, (tuple, list)) else None
    if (lo_hi is None or len(lo_hi) != 2 or not all(isinstance(v, (int, float)) for v in lo_hi)
            or any(isinstance(v, bool) for v in lo_hi)
            or not all(math.isfinite(v) for v in lo_hi) or not 0 < lo_hi[0] < lo_hi[1]):
        raise ValueError(f"{where}: tau_range must be (low, high) of finite numbers with "
                         f"0 < low < high, got {tau_range!r}")
    return float(lo_hi[0]), float(lo_hi[1])


def alpha_of(leak, log_tau: Optional[Tensor], hidden_size: int, like: Tensor) -> Optional[Tensor]:
    """The per-unit leak alpha (H,) for the module's `leak` setting, or None."""
    if leak is None:
        return None
    if leak == "learned":
        return torch.exp(-torch.exp(-log_tau))  # exp(-1 / tau)
    return like.new_full((hidden_size,), float(leak))
