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

from mts_kernels.nn._export import check_not_exporting


def _rows(batch_sizes: Tensor) -> Tensor:
    """Row t * B + i of the flattened (T, B) grid for each packed element: the
    packed order is time-major, then batch (row i of step t iff i < batch_sizes[t])."""
    B = int(batch_sizes[0])
    valid = torch.arange(B).unsqueeze(0) < batch_sizes.unsqueeze(1)
    return valid.reshape(-1).nonzero().squeeze(1)


def unpack(seq: PackedSequence) -> Tuple[Tensor, Tensor]:
    """(padded (T, B, *) in the packed (sorted) order, lengths (B,) int64 on the CPU).
    One in-place index_copy_ (its backward one index_select), not a copy per step."""
    bs = seq.batch_sizes
    if bs.numel() == 0:
        raise ValueError("PackedSequence input has no time steps")
    T, B = bs.numel(), int(bs[0])
    rows = _rows(bs).to(seq.data.device)
    # in place into the fresh zeros: the out-of-place index_copy copied them first
    flat = seq.data.new_zeros((T * B,) + tuple(seq.data.shape[1:]))
    padded = flat.index_copy_(0, rows, seq.data).view((T, B) + tuple(seq.data.shape[1:]))
    lengths = (torch.arange(B).unsqueeze(0) < bs.unsqueeze(1)).sum(0)
    return padded, lengths


def pack(padded: Tensor, like: PackedSequence) -> PackedSequence:
    """The (T, B, *) output in sorted order as a PackedSequence shaped like `like`."""
    rows = _rows(like.batch_sizes).to(padded.device)
    data = padded.reshape((-1,) + tuple(padded.shape[2:])).index_select(0, rows)
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
    check_not_exporting(module, "PackedSequence input")
    if lengths is not None:
        raise ValueError(f"{module}: lengths must be None for PackedSequence input "
                         "(the lengths are part of it)")
    padded, lens = unpack(seq)
    out, h_n = run(padded, permute_hidden(hx, seq.sorted_indices), lens)
    return pack(out, seq), permute_hidden(h_n, seq.unsorted_indices)
