"""DeepTransitionRNN: a drop-in for torch.nn.RNN whose hidden-to-hidden transition
is an L-layer MLP (Pascanu et al. 2013, "How to Construct Deep Recurrent Neural
Networks"), with an optional shortcut from h_{t-1} to the top of the transition,
running the fused deep_transition_rnn op per layer and direction.

For each layer and direction, L = transition_depth, s^0_t = h_{t-1}:

    s^1_t = phi(W_1 s^0_t + W_ih x_t + b_ih + b_1)
    s^l_t = phi(W_l s^{l-1}_t + b_l)                     l = 2..L
            (shortcut: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
    h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t         (leak as in LeakyRNN)
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mts_kernels.nn import _common, _packed
from mts_kernels.nn._leak import alpha_of, check_leak
from mts_kernels.ops._lengths import check_lengths, final_state
from mts_kernels.ops.deep_transition_rnn import deep_transition_rnn

_WHERE = "DeepTransitionRNN"


class DeepTransitionRNN(_common.RNNCompat, nn.Module):
    """Multi-layer RNN with a deep transition (and optional shortcut) per step.

    Shapes and conventions are those of torch.nn.RNN. Parameters per layer k and
    direction suffix ("" or "_reverse"): `weight_ih_l{k}` (H, in_k), `bias_ih_l{k}`
    (H,), `weight_hh_l{k}` (L, H, H) holding W_1..W_L, `bias_hh_l{k}` (L, H) holding
    b_1..b_L, `weight_shortcut_l{k}` (H, H) with shortcut=True, `log_tau_l{k}` (H,)
    with leak="learned" (alpha = exp(-1/exp(log_tau))). With transition_depth=1
    and shortcut=False it is torch.nn.RNN (b_1 playing bias_hh).

    - shortcut=True (needs transition_depth >= 2): the top sub-layer also reads
      h_{t-1}, so the path between steps is one product long again.
    - leak=None / float in [0, 1) / "learned": as LeakyRNN.

    Variable lengths: `forward` takes a PackedSequence as torch.nn.RNN does, or a
    padded tensor with `lengths=` (output zero beyond each length, h_n each
    sequence's final state). `backend` (attribute, default None: automatic)
    selects the kernel backend as for every mts_kernels op.
    """

    def __init__(self, input_size: int, hidden_size: int, transition_depth: int = 2,
                 shortcut: bool = False, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, leak: Union[None, float, str] = None,
                 tau_range: Tuple[float, float] = (1.0, 1000.0), device=None, dtype=None) -> None:
        super().__init__()
        bias, batch_first, dropout, bidirectional = _common.check_rnn_args(
            _WHERE, input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout,
            bidirectional, device, dtype)
        _common.check_int(_WHERE, "transition_depth", transition_depth)
        shortcut = _common.check_flag(_WHERE, "shortcut", shortcut)
        if shortcut and transition_depth < 2:
            raise ValueError(f"{_WHERE}: shortcut=True needs transition_depth >= 2 (with depth 1 the "
                             f"transition already is one product), got transition_depth={transition_depth}")
        tau_range = check_leak(_WHERE, leak, tau_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.transition_depth = transition_depth
        self.shortcut = shortcut
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.leak = leak
        self.tau_range = tau_range
        self.backend: Optional[str] = None
        H, L = hidden_size, transition_depth
        # names per layer and direction in torch.nn.RNN's order, the extra ones last
        self._all_weights: List[List[str]] = []

        def shapes_of(layer_in):
            shapes = [("weight_ih", (H, layer_in)), ("weight_hh", (L, H, H))]
            if bias:
                shapes += [("bias_ih", (H,)), ("bias_hh", (L, H))]
            if shortcut:
                shapes.append(("weight_shortcut", (H, H)))
            if leak == "learned":
                shapes.append(("log_tau", (H,)))
            return shapes

        _common.add_parameters(self, shapes_of, device, dtype)
        self.reset_parameters()

    def forward(self, input, hx: Optional[Tensor] = None, lengths=None):
        """input: (T, B, input_size) ((B, T, ...) batch_first), unbatched
        (T, input_size), or a PackedSequence; hx: (num_layers * num_dirs, B,
        hidden_size) ((num_layers * num_dirs, hidden_size) unbatched) or None.
        lengths (padded input only): (B,) ints; the output is 0 beyond each length
        and h_n holds each sequence's final state. Returns (output, h_n) as torch.nn.RNN."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return _packed.forward_packed(
                _WHERE, lambda x, h, lens: self._run(x, h, lens, batch_first=False), input, hx, lengths)
        return self._run(input, hx, lengths, self.batch_first)

    def _run(self, input: Tensor, hx: Optional[Tensor], lengths, batch_first: bool) -> Tuple[Tensor, Tensor]:
        if torch.onnx.is_in_onnx_export():  # else an exporter's own error about the custom op
            raise NotImplementedError(
                "DeepTransitionRNN: torch.onnx.export is not supported (the op has no ONNX scan form "
                "yet); torch.export works, and LeakyRNN / ClockworkRNN export to ONNX")
        _common.check_input(_WHERE, input, self.input_size, self.weight_hh_l0.dtype, batch_first)
        batched = input.dim() == 3
        if not batched:  # one sequence, time-major whatever batch_first says (as nn.RNN)
            input, batch_first = input.unsqueeze(1), False
        x = input.transpose(0, 1) if batch_first else input
        T, B = x.size(0), x.size(1)
        # errors that name the module; the op gets lengths as given (see LeakyRNN)
        lens = check_lengths(_WHERE, lengths, B, T, x.device)
        num_dirs = 2 if self.bidirectional else 1
        h_in = _common.check_hx(_WHERE, hx, batched, (self.num_layers * num_dirs, B, self.hidden_size), x)

        def run_direction(layer, direction, x, h0):
            name = f"l{layer}{self._suffixes()[direction]}"
            # W_ih x + b_ih (b_hh holds the sub-layers' biases): on the CPU the projection
            # op (valid steps only, the same result on any thread count), as the other cells
            p = _common.input_projection(x, getattr(self, f"weight_ih_{name}"),
                                         getattr(self, f"bias_ih_{name}", None), None, lens)
            h = deep_transition_rnn(
                p, getattr(self, f"weight_hh_{name}"), h0, bias_hh=getattr(self, f"bias_hh_{name}", None),
                weight_shortcut=getattr(self, f"weight_shortcut_{name}", None),
                alpha=alpha_of(self.leak, getattr(self, f"log_tau_{name}", None), self.hidden_size, p),
                nonlinearity=self.nonlinearity, reverse=direction == 1, lengths=lengths,
                backend=self.backend)
            return h, final_state(h, lengths, h0, reverse=direction == 1, batch_first=False)

        x, h_n = _common.run_layers(self, x, h_in, run_direction)
        output = x.transpose(0, 1) if batch_first else x
        if not batched:
            output, h_n = output.squeeze(1), h_n.squeeze(1)
        return output, h_n

    def extra_repr(self) -> str:
        s = _common.rnn_repr(self) + f", transition_depth={self.transition_depth}"
        if self.shortcut:
            s += ", shortcut=True"
        if self.leak is not None:
            s += f", leak={self.leak!r}"
            if self.leak == "learned":
                s += f", tau_range={self.tau_range}"
        return s


# a whole saved model holding one loads with torch.load(weights_only=True); its
# attributes are tensors, containers and plain values, which that loader allows
torch.serialization.add_safe_globals([DeepTransitionRNN])
