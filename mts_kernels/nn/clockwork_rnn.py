"""ClockworkRNN (Koutník et al., "A Clockwork RNN", 2014) on the fused clockwork_rnn op.

Hidden units are split into modules (fast to slow) with periods T_1 < ... < T_g;
module i updates only when (t0 + t) % T_i == 0 and reads itself and slower modules:

    active:    h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * phi(sum_{j >= i} W_ij h_j(t-1) + W_ih,i x_t + b_i)
    inactive:  h_i(t) = h_i(t-1)

Stacked and bidirectional as torch.nn.RNN. The reverse direction is the same
clockwork recurrence run over each sequence reversed in time (from its own last
step, as nn.RNN's reverse direction on packed input): its k-th step, the
sequence's step L_b - 1 - k, has the clock t0 + k.
"""

from __future__ import annotations

import collections.abc
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from mts_kernels.nn import _common, _export, _packed
from mts_kernels.nn._leak import alpha_of, check_leak
from mts_kernels.ops import clockwork_projection as _clocked
from mts_kernels.ops._lengths import check_lengths, final_state
from mts_kernels.ops.clockwork_rnn import check_modules, read_blocks

DEFAULT_MODULES = 4
_WHERE = "ClockworkRNN"
# layer 0's forward direction keeps the names of the single-layer module (so its
# state_dicts load); every other layer and direction is named as in torch.nn.RNN
_LAYER0 = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "log_tau")


def _suffix(layer: int, direction: int) -> str:
    if layer == 0 and direction == 0:
        return ""
    return f"_l{layer}" + ("_reverse" if direction else "")


class ClockworkRNN(_common.RNNCompat, nn.Module):
    """Clockwork RNN, stacked and bidirectional as torch.nn.RNN.

    ClockworkRNN(input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *, periods=None,
                 module_sizes=None, leak=None, tau_range=(1.0, 1000.0), device=None, dtype=None)

    The positional arguments are torch.nn.RNN's (dropout between layers in training
    mode, not after the last); the clockwork options are keyword-only.

    Parameters per layer k and direction: `weight_ih` (H, input_size or
    num_dirs * H), `weight_hh` (H, H), `bias_ih`, `bias_hh` (and `log_tau` with
    leak="learned"). Layer 0's forward direction has these names as they are (the
    single-layer module's names; `..._l0` keys load into them too, so a
    torch.nn.RNN state_dict loads); the others carry nn.RNN's suffixes,
    `weight_ih_l1`, `weight_hh_l0_reverse`, `log_tau_l1_reverse`, ... Only the
    block-upper-triangular part of each weight_hh (module i reading modules j >= i)
    is ever read, and the rest gets zero gradient (it is zero at initialisation).

    periods: per module, strictly increasing (default 1, 2, 4, ..., 2^(g-1));
    module_sizes: default an equal split of hidden_size (the faster modules take the
    remainder); with neither given, g = min(4, hidden_size) modules. Every layer and
    direction has the same modules.
    leak: None (the paper's cell), a float in [0, 1), or "learned" (alpha = exp(-1/tau),
    tau = exp(log_tau) initialised log-uniformly over tau_range), as in LeakyRNN.

    forward(input, hx=None, t0=0, lengths=None) -> (output, h_n) as torch.nn.RNN:
    output (T, B, num_dirs * H) ((B, T, ...) batch_first; (T, num_dirs * H) for
    unbatched (T, input_size) input), h_n (num_layers * num_dirs, B, H). t0 is the
    global clock of the first step, so that truncated-BPTT chunks keep the clock
    phase (pass h_n as hx and t0 + T next). The reverse direction runs each
    sequence reversed (from its own last step), its k-th step at clock t0 + k.
    `backend` (attribute, default None: automatic) selects the kernel backend.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, *,
                 periods: Optional[Sequence[int]] = None, module_sizes: Optional[Sequence[int]] = None,
                 leak: Union[None, float, str] = None, tau_range: Tuple[float, float] = (1.0, 1000.0),
                 device=None, dtype=None) -> None:
        super().__init__()
        hint = ""
        if isinstance(num_layers, (list, tuple, range)):
            hint = (" (the third positional argument is num_layers, as in torch.nn.RNN; "
                    "pass periods=... by keyword)")
        bias, batch_first, dropout, bidirectional = _common.check_rnn_args(
            _WHERE, input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout,
            bidirectional, device, dtype, num_layers_hint=hint)
        for name, value in (("periods", periods), ("module_sizes", module_sizes)):
            if value is not None and (isinstance(value, (str, bytes))
                                      or not isinstance(value, collections.abc.Sequence)):
                raise ValueError(f"{_WHERE}: {name} must be None or a sequence of ints, got {value!r}")
        if periods is None and module_sizes is None:
            g = min(DEFAULT_MODULES, hidden_size)
        else:
            g = len(periods if periods is not None else module_sizes)
        if periods is None:
            periods = [2 ** i for i in range(g)]
        if module_sizes is None and g >= 1:
            base, extra = divmod(hidden_size, g)
            module_sizes = [base + (1 if i < extra else 0) for i in range(g)]
        # (module_sizes is still None only for periods=[], which check_modules names)
        periods, module_sizes = list(periods), list(module_sizes or [])
        check_modules(periods, module_sizes, hidden_size, _WHERE)
        tau_range = check_leak(_WHERE, leak, tau_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.nonlinearity = nonlinearity
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.periods = tuple(periods)
        self.module_sizes = tuple(module_sizes)
        self.leak = leak
        self.tau_range = tau_range
        self.backend: Optional[str] = None
        kw = dict(device=device, dtype=dtype)
        num_dirs = 2 if bidirectional else 1
        # parameter names per layer and direction, in torch.nn.RNN's order (the
        # extra log_tau last); nn.RNN keeps this list under the same attribute
        self._all_weights: List[List[str]] = []
        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else hidden_size * num_dirs
            for direction in range(num_dirs):
                s = _suffix(layer, direction)
                shapes = [("weight_ih", (hidden_size, layer_in)), ("weight_hh", (hidden_size, hidden_size))]
                if bias:
                    shapes += [("bias_ih", (hidden_size,)), ("bias_hh", (hidden_size,))]
                if leak == "learned":
                    shapes.append(("log_tau", (hidden_size,)))
                for base, shape in shapes:
                    setattr(self, base + s, nn.Parameter(torch.empty(shape, **kw)))
                self._all_weights.append([base + s for base, _ in shapes])
        if not bias:  # as before: the attributes exist (None) without a bias
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def block_mask(self) -> Tensor:
        """(H, H) bool: True where weight_hh is read (module i reading modules j >= i)."""
        return read_blocks(self.module_sizes, self.weight_hh.device)

    def reset_parameters(self) -> None:
        """As torch.nn.RNN (uniform in ±1/sqrt(hidden_size)), with the never-read
        blocks of every weight_hh set to zero; log tau uniform over log(tau_range)."""
        _common.reset_uniform(self)
        with torch.no_grad():
            unread = ~self.block_mask()
            for names in self._all_weights:
                getattr(self, names[1]).masked_fill_(unread, 0.0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # torch.nn.RNN names layer 0's forward parameters weight_ih_l0, ...: take
        # those keys as this module's weight_ih, ... (done here rather than in a
        # registered hook, which a whole-model torch.save would have to pickle)
        for base in _LAYER0:
            key, alias = prefix + base, prefix + base + "_l0"
            if key not in state_dict and alias in state_dict:
                state_dict[key] = state_dict.pop(alias)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, input, hx: Optional[Tensor] = None, t0: int = 0, lengths=None):
        """input: (T, B, input_size) ((B, T, ...) batch_first), unbatched
        (T, input_size), or a PackedSequence (as torch.nn.RNN takes it: the output
        is packed the same way and h_n holds each sequence's final state in the
        batch order); hx: (num_layers * num_dirs, B, hidden_size) ((num_layers *
        num_dirs, hidden_size) for unbatched input) or None; t0: the clock at the
        first step (shared by the batch): an int >= 0, or a 0-d integer tensor
        (read with int() outside export; an input of the program under torch.export
        / torch.onnx.export). lengths (padded input only): (B,) ints; the output is
        0 beyond each length. Returns (output, h_n)."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return _packed.forward_packed(
                _WHERE, lambda x, h, lens: self._run(x, h, t0, lens, batch_first=False), input, hx, lengths)
        return self._run(input, hx, t0, lengths, self.batch_first)

    def _run(self, input: Tensor, hx: Optional[Tensor], t0: int, lengths,
             batch_first: bool) -> Tuple[Tensor, Tensor]:
        _common.check_input(_WHERE, input, self.input_size, self.weight_hh.dtype, batch_first)
        batched = input.dim() == 3
        if not batched:  # one sequence, time-major whatever batch_first says (as nn.RNN)
            input, batch_first = input.unsqueeze(1), False
        T, B = (input.size(1), input.size(0)) if batch_first else (input.size(0), input.size(1))
        # errors that name the module; the op gets lengths as given (see LeakyRNN)
        lens = check_lengths(_WHERE, lengths, B, T, input.device)
        num_dirs = 2 if self.bidirectional else 1
        h_in = _common.check_hx(_WHERE, hx, batched, (self.num_layers * num_dirs, B, self.hidden_size), input)
        # one reversal index for every layer (None: a plain flip)
        rev = _common.reversal_index(lens, T, input.device) if num_dirs == 2 else None
        if isinstance(t0, Tensor) and not _export.exporting():
            # read once here (as the op would read it) so that the clocked
            # projection applies; while exporting it stays the program's input
            _export.check_t0_tensor(_WHERE, t0)
            t0 = int(t0)

        def run_direction(layer, direction, x, h0):
            s = _suffix(layer, direction)
            w_ih, b_ih, b_hh = (getattr(self, "weight_ih" + s), getattr(self, "bias_ih" + s, None),
                                getattr(self, "bias_hh" + s, None))
            bf = layer == 0 and batch_first
            xt = x.transpose(0, 1) if bf else x  # a view: the ops take any strides
            if _clocked.fused_applies(xt, w_ih, lens, t0, self.periods, self.module_sizes):
                # only the active modules' rows of each step (ops/clockwork_projection.py);
                # the reverse direction projects its reversed input on its own clock
                if direction == 1:
                    xt = _common.reverse_time(xt, rev)
                p = _clocked.clocked_projection(xt, w_ih, b_ih, b_hh, self.periods, self.module_sizes, t0, lens)
            else:
                p = _common.input_projection(x, w_ih, b_ih, b_hh, lens, batch_first=bf)
                if bf:  # a view: the op takes any strides
                    p = p.transpose(0, 1)
                if direction == 1:
                    p = _common.reverse_time(p, rev)
            # the scan form while exporting; t0 may be a 0-d integer tensor
            h = _export.clockwork_rnn(p, getattr(self, "weight_hh" + s), h0, periods=self.periods,
                                      module_sizes=self.module_sizes,
                                      alpha=alpha_of(self.leak, getattr(self, "log_tau" + s, None),
                                                     self.hidden_size, p),
                                      nonlinearity=self.nonlinearity, t0=t0, lengths=lengths,
                                      backend=self.backend)
            # the state after the direction's last step (reverse: the sequence's step 0)
            final = final_state(h, lengths, h0, batch_first=False)
            return (h if direction == 0 else _common.reverse_time(h, rev)), final

        output, h_n = _common.run_layers(self, input, h_in, run_direction, batch_first)
        return (output, h_n) if batched else _common.unbatched(output, h_n, 1)

    def extra_repr(self) -> str:
        s = _common.rnn_repr(self)
        s += f", periods={self.periods}, module_sizes={self.module_sizes}"
        if self.leak is not None:
            s += f", leak={self.leak!r}"
        return s


# a whole saved model holding one loads with torch.load(weights_only=True); its
# attributes are tensors, containers and plain values, which that loader allows
torch.serialization.add_safe_globals([ClockworkRNN])
