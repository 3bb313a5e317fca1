"""LeakyRNN: a drop-in for torch.nn.RNN with leaky units, skip connections
through time and dilation, running the fused leaky_rnn op per layer and direction.

For each layer and direction:

    z_t = W_ih x_t + b_ih + W_hh h_{t-d} + b_hh  [+ W_skip h_{t-s}]
    h_t = alpha * h_{t-d} + (1 - alpha) * phi(z_t),      h_tau = h_0 for tau <= 0
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from mts_kernels.nn import _common, _export, _packed
from mts_kernels.nn._leak import alpha_of, check_leak
from mts_kernels.ops._lengths import check_lengths, final_state

_WHERE = "LeakyRNN"


class LeakyRNN(_common.RNNCompat, nn.Module):
    """Multi-layer Elman RNN with leaky units, skip connections and dilation.

    Shapes, conventions and parameter names are those of torch.nn.RNN
    (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, `..._reverse`), so
    with leak=None, skip=None, dilation=1 it is torch.nn.RNN and loads its
    state_dict. Extra features add their own parameters:

    - leak=None: alpha = 0. leak=float in [0, 1): a fixed alpha for every unit.
      leak="learned": alpha = exp(-1/tau) per unit with tau = exp(`log_tau_l{k}`)
      learnable, initialised log-uniformly over tau_range: a spectrum of time
      scales in one layer.
    - skip=s: an extra recurrent connection from s steps back, `weight_skip_l{k}`.
    - dilation=d: the recurrent connection reaches d steps back (d > 1 removes the
      length-one connections: d interleaved chains).

    Variable lengths: `forward` takes a PackedSequence as torch.nn.RNN does
    (output packed the same way, h_n each sequence's final state in the batch
    order), or a padded tensor with `lengths=` (output zero beyond each length).

    `backend` (attribute, default None: automatic) selects the kernel backend
    as for every mts_kernels op.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False,
                 leak: Union[None, float, str] = None, tau_range: Tuple[float, float] = (1.0, 1000.0),
                 skip: Optional[int] = None, dilation: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        bias, batch_first, dropout, bidirectional = _common.check_rnn_args(
            _WHERE, input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout,
            bidirectional, device, dtype)
        if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
            raise ValueError(f"LeakyRNN: dilation must be an int >= 1, got {dilation!r}")
        if skip is not None and (not isinstance(skip, int) or isinstance(skip, bool) or skip < 1):
            raise ValueError(f"LeakyRNN: skip must be None or an int >= 1, got {skip!r}")
        tau_range = check_leak("LeakyRNN", leak, tau_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.leak = leak
        self.tau_range = tau_range
        self.skip = skip
        self.dilation = dilation
        self.backend: Optional[str] = None
        # parameter names per layer and direction in torch.nn.RNN's order (the extra
        # weight_skip and log_tau last); nn.RNN keeps this list under the same attribute
        self._all_weights: List[List[str]] = []

        def shapes_of(layer_in):
            shapes = [("weight_ih", (hidden_size, layer_in)), ("weight_hh", (hidden_size, hidden_size))]
            if bias:
                shapes += [("bias_ih", (hidden_size,)), ("bias_hh", (hidden_size,))]
            if skip is not None:
                shapes.append(("weight_skip", (hidden_size, hidden_size)))
            if leak == "learned":
                shapes.append(("log_tau", (hidden_size,)))
            return shapes

        _common.add_parameters(self, shapes_of, device, dtype)
        self.reset_parameters()

    @classmethod
    def from_torch(cls, rnn: nn.RNN, **extra) -> "LeakyRNN":
        """A LeakyRNN with the configuration and weights of `rnn` (extra features
        may be switched on through `extra`, e.g. leak="learned"; their parameters
        are freshly initialised)."""
        if not isinstance(rnn, nn.RNN):
            raise TypeError(f"LeakyRNN.from_torch: expected a torch.nn.RNN, got {type(rnn).__name__}")
        if getattr(rnn, "proj_size", 0):
            raise ValueError("LeakyRNN.from_torch: proj_size is not supported")
        ref = next(rnn.parameters())
        model = cls(rnn.input_size, rnn.hidden_size, rnn.num_layers, rnn.nonlinearity, rnn.bias,
                    rnn.batch_first, rnn.dropout, rnn.bidirectional, device=ref.device,
                    dtype=ref.dtype, **extra)
        model.load_state_dict(rnn.state_dict(), strict=not extra)
        return model

    def forward(self, input, hx: Optional[Tensor] = None, lengths=None):
        """input: (T, B, input_size) ((B, T, ...) batch_first), unbatched (T, input_size),
        or a PackedSequence; hx: (num_layers * num_dirs, B, hidden_size) or None.
        lengths (padded input only): (B,) ints; the output is 0 beyond each length
        and h_n holds each sequence's final state. Returns (output, h_n) as torch.nn.RNN."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return _packed.forward_packed(
                "LeakyRNN", lambda x, h, lens: self._run(x, h, lens, batch_first=False), input, hx, lengths)
        return self._run(input, hx, lengths, self.batch_first)

    def _run(self, input: Tensor, hx: Optional[Tensor], lengths, batch_first: bool) -> Tuple[Tensor, Tensor]:
        if not isinstance(input, Tensor):
            raise TypeError(f"LeakyRNN: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"LeakyRNN: input must be 2-D (unbatched) or 3-D, got shape {tuple(input.shape)}")
        if input.size(-1) != self.input_size:
            raise ValueError(f"LeakyRNN: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {input.size(-1)}")
        weight = self.weight_hh_l0
        if input.dtype != weight.dtype:
            raise TypeError(f"LeakyRNN: input has dtype {input.dtype} but the parameters are {weight.dtype}")
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(1 if not batch_first else 0)
        if batch_first:
            x = x.transpose(0, 1)
        B = x.size(1)
        # checked here for errors that name the module; the ops below get lengths as
        # given, so lengths kept on the CPU (PackedSequence) are checked there without
        # a device synchronisation per layer and direction
        check_lengths("LeakyRNN", lengths, B, x.size(0), x.device)
        num_dirs = 2 if self.bidirectional else 1
        expected = (self.num_layers * num_dirs, B, self.hidden_size)
        # unbatched input takes a 2-D hx only, as torch.nn.RNN
        h_in = _common.check_hx("LeakyRNN", hx, batched, expected, x)

        def run_direction(layer, direction, x, h0):
            name = f"l{layer}{self._suffixes()[direction]}"
            p = _common.input_projection(  # all steps: one GEMM
                x, getattr(self, f"weight_ih_{name}"), getattr(self, f"bias_ih_{name}", None),
                getattr(self, f"bias_hh_{name}", None), lengths)
            h = _export.leaky_rnn(  # the scan form while exporting to ONNX
                p, getattr(self, f"weight_hh_{name}"), h0,
                alpha=alpha_of(self.leak, getattr(self, f"log_tau_{name}", None), self.hidden_size, p),
                weight_skip=getattr(self, f"weight_skip_{name}") if self.skip else None,
                skip=self.skip, dilation=self.dilation, nonlinearity=self.nonlinearity,
                reverse=direction == 1, lengths=lengths, backend=self.backend)
            return h, final_state(h, lengths, h0, reverse=direction == 1, batch_first=False)

        if not batched:  # time-major throughout, the batch dimension then dropped
            output, h_n = _common.run_layers(self, x, h_in, run_direction)
            return _common.unbatched(output, h_n, 1)
        return _common.run_layers(self, x, h_in, run_direction, batch_first)

    def extra_repr(self) -> str:
        s = _common.rnn_repr(self)
        if self.leak is not None:
            s += f", leak={self.leak!r}"
            if self.leak == "learned":
                s += f", tau_range={self.tau_range}"
        if self.skip is not None:
            s += f", skip={self.skip}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        return s


# a whole saved model holding one loads with torch.load(weights_only=True); its
# attributes are tensors, containers and plain values, which that loader allows
torch.serialization.add_safe_globals([LeakyRNN])
