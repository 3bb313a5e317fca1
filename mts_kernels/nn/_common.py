"""Pieces shared by LeakyRNN and ClockworkRNN: constructor checks, the input
projection, time reversal for the reverse direction, nn.RNN's parameter lists."""

from __future__ import annotations

import math
import warnings
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from mts_kernels.ops import _transforms
from mts_kernels.ops import input_projection as _projection
from mts_kernels.ops.leaky_rnn import NONLINEARITIES, _live


def check_rnn_args(where: str, input_size, hidden_size, num_layers, nonlinearity, bias, batch_first,
                   dropout, bidirectional, device, dtype, num_layers_hint: str = ""):
    """torch.nn.RNN's constructor arguments, each error naming its argument;
    returns (bias, batch_first, dropout, bidirectional) normalised."""
    check_int(where, "input_size", input_size)
    check_int(where, "hidden_size", hidden_size)
    check_int(where, "num_layers", num_layers, num_layers_hint)
    if not isinstance(nonlinearity, str) or nonlinearity not in NONLINEARITIES:
        raise ValueError(f"{where}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    check_factory(where, device, dtype)
    return (check_flag(where, "bias", bias), check_flag(where, "batch_first", batch_first),
            check_dropout(where, dropout, num_layers), check_flag(where, "bidirectional", bidirectional))


class RNNCompat:
    """torch.nn.RNN's parameter-list API, for a module that keeps the names of its
    parameters per layer and direction in `_all_weights` (as nn.RNN does)."""

    _all_weights: List[List[str]]

    @property
    def all_weights(self) -> List[List[Tensor]]:
        """As torch.nn.RNN: per layer and direction (forward, reverse), the list
        [weight_ih, weight_hh, bias_ih, bias_hh] of its parameters (without the
        biases when bias=False), then the module's extra ones (weight_skip,
        log_tau) in that order."""
        return [[getattr(self, name) for name in names] for names in self._all_weights]

    def flatten_parameters(self) -> None:
        """A no-op, for code written for torch.nn.RNN (which packs its weights into
        one cuDNN buffer here): the fused kernels read every parameter where it is,
        so there is nothing to flatten. Returns None."""
        return None

    def _suffixes(self):
        return ("", "_reverse") if self.bidirectional else ("",)

    def reset_parameters(self) -> None:
        """As torch.nn.RNN: every weight and bias uniform in ±1/sqrt(hidden_size);
        log tau uniform over log(tau_range)."""
        reset_uniform(self)


def check_int(where: str, name: str, value, hint: str = "") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}{hint}")
    return value


def check_flag(where: str, name: str, value) -> bool:
    # nn.RNN code passes bools, sometimes 0/1; anything else (a tuple of periods
    # landing here positionally, a string) is a mistake worth naming
    if not isinstance(value, (bool, int)) or value not in (0, 1):
        raise ValueError(f"{where}: {name} must be a bool, got {value!r}")
    return bool(value)


def check_dropout(where: str, dropout, num_layers: int) -> float:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
        raise ValueError(f"{where}: dropout must be a number in [0, 1], got {dropout!r}")
    if dropout > 0 and num_layers == 1:
        # torch.nn.RNN's warning, word for word: code ported from it expects it
        warnings.warn("dropout option adds dropout after all but last recurrent layer, so non-zero "
                      f"dropout expects num_layers greater than 1, but got dropout={dropout} and "
                      f"num_layers={num_layers}")
    return float(dropout)


def check_factory(where: str, device, dtype) -> None:
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"{where}: dtype must be None or a floating-point torch.dtype, got {dtype!r}")
    if device is not None:
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{where}: device must be None or a torch.device (or its name), "
                             f"got {device!r}") from e


def input_projection(x: Tensor, weight_ih: Tensor, bias_ih: Optional[Tensor],
                     bias_hh: Optional[Tensor], lengths=None, batch_first: bool = False) -> Tensor:
    """W_ih x + b_ih + b_hh for all steps: one GEMM, then b_hh added. With
    lengths, on the CPU, the valid steps only (ops/input_projection.py: p is 0 at
    padded steps, which the recurrences ignore). x and the result are (T, B, I)
    / (T, B, H), or (B, T, .) when batch_first (then the op's time-major result
    is returned as a transposed view).

    Not F.linear(x, W_ih, b_ih + b_hh): the sum's backward hands both biases one
    tensor, which a compiled graph (and torch.func) returns as both gradients, so
    an in-place update of the gradients (clip_grad_norm_'s mul_) scales that
    storage twice. Here each bias gets its own reduction. Eager forward + backward
    at B=32, T=256, I=H=128 on a 2-core machine, best of 4 rounds of timeit 5 x 5:
    LeakyRNN 17.3 ms before, 17.0 ms after; ClockworkRNN (4 modules) 16.9 ms
    before, 17.5 ms after, within the rounds' spread (16.9-18.9 ms). torch.compile
    fuses the add. (A custom autograd.Function whose backward clones the gradient
    would also do, but Dynamo cannot trace one with the jvp forward-mode AD needs.)
    b_hh is added in place to the 2-D GEMM result (addmm saves its inputs, not its
    output; F.linear's 3-D result is a view, whose in-place update would clone the
    gradient): a second fresh (T, B, H) tensor costs its page faults, 16 ms of
    ClockworkRNN's 194 ms fwd+bwd at B=32, T=1024, H=512. Under torch.func
    transforms (where bias_hh alone may be batched) the add stays out of place."""
    if _projection.fused_applies(x, weight_ih, lengths):
        if batch_first:
            return _projection.fused_projection(x.transpose(0, 1), weight_ih, bias_ih, bias_hh,
                                                lengths).transpose(0, 1)
        return _projection.fused_projection(x, weight_ih, bias_ih, bias_hh, lengths)
    if lengths is not None:
        x = zero_padded_steps(x, lengths, batch_first)
    if bias_ih is None or bias_hh is None:
        return F.linear(x, weight_ih, bias_hh if bias_ih is None else bias_ih)
    if _transforms.transform_active():
        return F.linear(x, weight_ih, bias_ih) + bias_hh
    out = torch.addmm(bias_ih, x.reshape(-1, x.size(-1)), weight_ih.t()).add_(bias_hh)
    return out.view(*x.shape[:-1], out.size(-1))


def zero_padded_steps(x: Tensor, lengths, batch_first: bool) -> Tensor:
    """x with its padded steps (t >= L_b) zeroed, differentiably: the dense
    projection reads every step, and a NaN or inf in the padding would otherwise
    reach dW_ih through its backward (0 * NaN), where nothing at a padded step may
    change a result (the fused projection op reads the valid steps only)."""
    lens = lengths if isinstance(lengths, Tensor) else torch.tensor(lengths, dtype=torch.int64)
    xt = x.transpose(0, 1) if batch_first else x
    out = torch.where(_live(xt, lens), xt, xt.new_zeros(()))
    return out.transpose(0, 1) if batch_first else out


def run_layers(module, x: Tensor, h_in: Optional[Tensor], run_direction, batch_first: bool = False):
    """torch.nn.RNN's stacking: run_direction(layer, direction, x, h0) -> (h
    (T, B, H) time-major, final state (B, H)) for each layer and direction; the
    directions' outputs concatenated feed the next layer, with dropout between
    layers in training mode (not after the last). Returns (the last layer's
    output, (B, T, H * num_dirs) when batch_first, h_n (num_layers * num_dirs, B, H)).

    Neither is a view of another tensor: FSDP2 (fully_shard) warns about a module
    returning one (an in-place op on a view would drop its pre-backward hook), so
    the batch-first layout is written by the concatenation itself (no extra copy
    with two directions; one direction is copied, as the first batch-major
    consumer, e.g. a Linear on the flattened output, would copy the transposed view)."""
    num_dirs = 2 if module.bidirectional else 1
    finals = []
    for layer in range(module.num_layers):
        last = layer == module.num_layers - 1
        outs = []
        for direction in range(num_dirs):
            h0 = None if h_in is None else h_in[layer * num_dirs + direction]
            h, final = run_direction(layer, direction, x, h0)
            outs.append(h)
            finals.append(final)
        if last and batch_first:
            outs = [o.transpose(0, 1) for o in outs]
            x = torch.cat(outs, -1) if num_dirs == 2 else outs[0].contiguous()
        else:
            x = torch.cat(outs, -1) if num_dirs == 2 else outs[0]
        if module.dropout > 0 and module.training and not last:
            x = F.dropout(x, module.dropout, training=True)
    return x, torch.stack(finals, 0)


def unbatched(output: Tensor, h_n: Tensor, batch_dim: int):
    """(output, h_n) of a one-sequence batch without the batch dimension, as
    copies rather than views (see run_layers: FSDP2)."""
    return output.squeeze(batch_dim).clone(), h_n.squeeze(1).clone()


def reversal_index(lengths: Optional[Tensor], T: int, device) -> Optional[Tensor]:
    """(T, B) int64 index that reverses each sequence's first L_b steps in place
    (step t <-> L_b - 1 - t) and leaves the padded steps where they are; None
    without lengths (a plain flip). An involution, so it also maps back. Built
    from tensor ops only (no host synchronisation; meta and fake tensors work)."""
    if lengths is None:
        return None
    t = torch.arange(T, device=device).unsqueeze(1)
    L = lengths.to(device=device, dtype=torch.int64).unsqueeze(0)
    return torch.where(t < L, L - 1 - t, t)


def reverse_time(x: Tensor, index: Optional[Tensor]) -> Tensor:
    """x (T, B, D) with each sequence reversed in time (see reversal_index)."""
    if index is None:
        return x.flip(0)
    return x.gather(0, index.unsqueeze(-1).expand(x.shape))



def check_input(where: str, input, input_size: int, dtype: torch.dtype, batch_first: bool) -> None:
    """A module's padded input: a 3-D (or 2-D unbatched) tensor of input_size
    features in the parameters' dtype; clear errors otherwise."""
    if not isinstance(input, Tensor):
        raise TypeError(f"{where}: input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
        raise ValueError(f"{where}: input must be 3-D {layout} or 2-D (T, input_size) (unbatched), "
                         f"got shape {tuple(input.shape)}")
    if input.size(-1) != input_size:
        raise ValueError(f"{where}: input.size(-1) must be equal to input_size. "
                         f"Expected {input_size}, got {input.size(-1)}")
    if input.dtype != dtype:
        raise TypeError(f"{where}: input has dtype {input.dtype} but the parameters are {dtype}")


def check_hx(where: str, hx, batched: bool, expected, like: Tensor) -> Optional[Tensor]:
    """hx as (num_layers * num_dirs, B, H) (expected), or None; unbatched hx is
    (num_layers * num_dirs, H). Same dtype and device as `like` (the input)."""
    if hx is None:
        return None
    if not isinstance(hx, Tensor):
        raise TypeError(f"{where}: hx must be a torch.Tensor or None, got {type(hx).__name__}")
    shape = tuple(expected) if batched else (expected[0], expected[2])
    if tuple(hx.shape) != shape:
        raise ValueError(f"{where}: hx must have shape {shape}"
                         f"{'' if batched else ' for unbatched input'}, got {tuple(hx.shape)}")
    if hx.dtype != like.dtype or hx.device != like.device:
        raise TypeError(f"{where}: hx must be {like.dtype} on {like.device}, got "
                        f"{hx.dtype} on {hx.device}")
    return hx if batched else hx.unsqueeze(1)


def reset_uniform(module) -> None:
    """torch.nn.RNN's initialisation: every weight and bias uniform in
    ±1/sqrt(hidden_size); log tau (leak="learned") uniform over log(tau_range)."""
    bound = 1.0 / math.sqrt(module.hidden_size)
    lo, hi = (math.log(v) for v in module.tau_range)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.startswith("log_tau"):
                param.uniform_(lo, hi)
            else:
                param.uniform_(-bound, bound)


def rnn_repr(module) -> str:
    """extra_repr's part for torch.nn.RNN's arguments (those not at their default)."""
    s = f"{module.input_size}, {module.hidden_size}"
    if module.num_layers != 1:
        s += f", num_layers={module.num_layers}"
    if module.nonlinearity != "tanh":
        s += f", nonlinearity={module.nonlinearity!r}"
    if not module.bias:
        s += ", bias=False"
    if module.batch_first:
        s += ", batch_first=True"
    if module.dropout:
        s += f", dropout={module.dropout}"
    if module.bidirectional:
        s += ", bidirectional=True"
    return s


def add_parameters(module, shapes_of, device=None, dtype=None) -> None:
    """Creates the parameters of every layer k and direction ("" / "_reverse"),
    named {base}_l{k}{suffix} for each (base, shape) of shapes_of(layer_in) (in
    torch.nn.RNN's order, the extra ones last), and keeps the names per layer and
    direction in module._all_weights, as nn.RNN does (uninitialised: the caller's
    reset_parameters follows)."""
    num_dirs = 2 if module.bidirectional else 1
    module._all_weights = []
    for layer in range(module.num_layers):
        layer_in = module.input_size if layer == 0 else module.hidden_size * num_dirs
        for suffix in ("", "_reverse")[:num_dirs]:
            shapes = shapes_of(layer_in)
            for base, shape in shapes:
                setattr(module, f"{base}_l{layer}{suffix}",
                        torch.nn.Parameter(torch.empty(shape, device=device, dtype=dtype)))
            module._all_weights.append([f"{base}_l{layer}{suffix}" for base, _ in shapes])
