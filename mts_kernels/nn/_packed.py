"""PackedSequence in and out of the modules, the way torch.nn.RNN handles it.

A PackedSequence holds its sequences sorted by decreasing length (sorted_indices
maps back to the batch order). The modules run the fused ops on the padded
(T, B, ...) tensor in that sorted order with lengths (so hx is permuted into it
and h_n back out of it, as nn.RNN does) and pack the output with the input's
batch_sizes and indices.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence


def _valid(batch_sizes: Tensor, device: torch.device) -> Tensor:
    """(T, B) bool: True at the packed positions (row i of step t is packed iff i < batch_sizes[t])."""
    B = int(batch_sizes[0])
    return (torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)).to(device)


def unpack(seq: PackedSequence) -> Tuple[Tensor, Tensor]:
    """(padded (T, B, *) in the packed (sorted) order, lengths (B,) int64 on the CPU)."""
    bs = seq.batch_sizes
    if bs.numel() == 0:
        raise ValueError("PackedSequence input has no time steps")
    valid = _valid(bs, seq.data.device)
    padded = seq.data.new_zeros((bs.numel(), int(bs[0])) + tuple(seq.data.shape[1:]))
    padded[valid] = seq.data  # time-major, then batch: exactly the packed order
    lengths = _valid(bs, torch.device("cpu")).sum(0)
    return padded, lengths


def pack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """The (T, B, *) output in sorted order as a PackedSequence shaped like `like`."""
    data = padded[_valid(like.batch_sizes, padded.device)]
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def permute_hidden(hx: Optional[Tensor], indices: Optional[Tensor]) -> Optional[Tensor]:
    """hx (L, B, H) with its batch dimension put in `indices`' order."""
    if hx is None or indices is None:
        return hx
    return hx.index_select(1, indices.to(hx.device))


def forward_packed(module: str, run: Callable, seq: PackedSequence, hx: Optional[Tensor],
                   lengths) -> Tuple[PackedSequence, Tensor]:
    """A module's forward on a PackedSequence: run(padded (T, B, *), hx, lengths)
    -> (output (T, B, H), h_n (L, B, H)), all in the packed (sorted) order."""
    if lengths is not None:
        raise ValueError(f"{module}: lengths must be None for PackedSequence input "
                         "(the lengths are part of it)")
    padded, lens = unpack(seq)
    out, h_n = run(padded, permute_hidden(hx, seq.sorted_indices), lens)
    return pack(out, seq), permute_hidden(h_n, seq.unsorted_indices)
