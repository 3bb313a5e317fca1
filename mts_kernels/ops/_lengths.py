"""Variable-length batches: the `lengths` argument of every op, and final states.

Semantics (every op and backend): lengths is None (every sequence has T steps), a
1-D integer tensor of B entries (on the CPU or the data's device) or a list/tuple
of ints, each L_b in [0, T]. Sequence b is computed exactly as if it were alone,
cut to its first L_b steps; with reverse=True it runs from t = L_b - 1 back to 0
(torch.nn.RNN's reverse direction on packed input). Outputs at t >= L_b are 0,
inputs there get zero gradient, and nothing at a padded step changes any result.
Its final state is h[b, L_b - 1] (reverse: h[b, 0]), or h0[b] when L_b = 0; see
final_state.
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def check_lengths(op: str, lengths, B: int, T: int, device: torch.device) -> Optional[Tensor]:
    """lengths as the kernels take it: None, or a (B,) int64 tensor on `device`
    with values in [0, T]; a clear error naming `lengths` otherwise.

    Values of a tensor on a GPU are checked with one device-to-host copy (pass
    lengths on the CPU, as PackedSequence keeps them, to avoid that
    synchronisation); the GPU kernels clamp them to [0, T] in any case.
    """
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        if len(lengths) != B:
            raise ValueError(f"{op}: lengths must have one entry per sequence (B = {B}), "
                             f"got {len(lengths)}")
        for i, v in enumerate(lengths):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{op}: lengths must contain ints, got {type(v).__name__} "
                                f"at lengths[{i}]")
            if not 0 <= v <= T:
                raise ValueError(f"{op}: lengths must be in [0, T] = [0, {T}], got lengths[{i}] = {v}")
        return torch.tensor([int(v) for v in lengths], dtype=torch.int64, device=device)
    if not isinstance(lengths, Tensor):
        raise TypeError(f"{op}: lengths must be None, a 1-D integer tensor or a list of ints, "
                        f"got {type(lengths).__name__}")
    if lengths.dtype not in _INT_DTYPES:
        raise TypeError(f"{op}: lengths must be an integer tensor (not bool or floating point), "
                        f"got {lengths.dtype}")
    if lengths.dim() != 1:
        raise ValueError(f"{op}: lengths must be 1-D (one length per sequence), got shape "
                         f"{tuple(lengths.shape)}")
    if lengths.size(0) != B:
        raise ValueError(f"{op}: lengths must have B = {B} entries, got {lengths.size(0)}")
    if lengths.device.type not in ("cpu", device.type) or (
            lengths.device.type != "cpu" and lengths.device != device):
        raise ValueError(f"{op}: lengths must be on the CPU or on the data's device {device}, "
                         f"got {lengths.device}")
    # meta and fake tensors have no values to check (and reading one would fail)
    if (not _compiling() and B > 0 and lengths.device.type != "meta"
            and not torch._subclasses.fake_tensor.is_fake(lengths)):
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > T:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{op}: lengths must be in [0, T] = [0, {T}], got a length of {bad}")
    return lengths.to(device=device, dtype=torch.int64, non_blocking=True)


def final_state(h: Tensor, lengths=None, h0: Optional[Tensor] = None, *, reverse: bool = False,
                batch_first: bool = True) -> Tensor:
    """Each sequence's final state from an op's output h (differentiable).

        forward: h[b, L_b - 1];  reverse: h[b, 0];  L_b = 0: h0[b] (zeros when None)

    h: (B, T, D) when batch_first (the scans' default) else (T, B, D) (the
    recurrent cells' default: pass batch_first=False for leaky_rnn and
    clockwork_rnn). lengths: as the op took it; None means every sequence has T
    steps (then this is h[:, -1], or h[:, 0] with reverse). Returns (B, D).
    """
    if not isinstance(h, Tensor) or h.dim() != 3:
        raise ValueError(f"final_state: h must be a 3-D tensor, got "
                         f"{tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__}")
    time_dim = 1 if batch_first else 0
    T, B = h.size(time_dim), h.size(1 - time_dim)
    if h0 is not None and (not isinstance(h0, Tensor) or tuple(h0.shape) != (B, h.size(2))):
        raise ValueError(f"final_state: h0 must be a ({B}, {h.size(2)}) tensor or None")
    if lengths is None:
        return h.select(time_dim, 0 if reverse else T - 1)
    lens = check_lengths("final_state", lengths, B, T, h.device)
    if reverse:
        last = h.select(time_dim, 0)
    else:
        idx = (lens - 1).clamp(min=0).view(1, B, 1).expand(1, B, h.size(2))
        hb = h.transpose(0, 1) if batch_first else h
        last = hb.gather(0, idx).squeeze(0)
    start = torch.zeros_like(last) if h0 is None else h0.to(last.dtype)
    return torch.where((lens > 0).unsqueeze(-1), last, start)
