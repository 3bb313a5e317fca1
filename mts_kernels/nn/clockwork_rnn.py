"""ClockworkRNN (Koutník et al., "A Clockwork RNN", 2014) on the fused clockwork_rnn op.

Hidden units are split into modules (fast to slow) with periods T_1 < ... < T_g;
module i updates only when (t0 + t) % T_i == 0 and reads itself and slower modules:

    active:    h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * phi(sum_{j >= i} W_ij h_j(t-1) + W_ih,i x_t + b_i)
    inactive:  h_i(t) = h_i(t-1)
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mts_kernels.nn import _export, _packed
from mts_kernels.nn._leak import alpha_of, check_leak
from mts_kernels.ops._lengths import check_lengths, final_state
from mts_kernels.ops.clockwork_rnn import check_modules
from mts_kernels.ops.leaky_rnn import NONLINEARITIES

DEFAULT_MODULES = 4


class ClockworkRNN(nn.Module):
    """Clockwork RNN layer. Parameters `weight_ih` (H, input_size), `weight_hh`
    (H, H), `bias_ih`, `bias_hh` (and `log_tau` with leak="learned"); only the
    block-upper-triangular part of weight_hh (module i reading modules j >= i)
    is ever read, and the rest gets zero gradient (it is zero at initialisation).

    periods: per module, strictly increasing (default 1, 2, 4, ..., 2^(g-1));
    module_sizes: default an equal split of hidden_size (the faster modules take the
    remainder); with neither given, g = min(4, hidden_size) modules.
    leak: None (the paper's cell), a float in [0, 1), or "learned" (alpha = exp(-1/tau),
    tau = exp(log_tau) initialised log-uniformly over tau_range), as in LeakyRNN.
    forward(input, hx=None, t0=0) -> (output, h_n): output (T, B, H) (batch-first:
    (B, T, H)), h_n (1, B, H); t0 is the global clock of the first step, so that
    truncated-BPTT chunks keep the clock phase (pass h_n as hx and t0 + T next).
    `backend` (attribute, default None: automatic) selects the kernel backend.
    """

    def __init__(self, input_size: int, hidden_size: int, periods: Optional[Sequence[int]] = None,
                 module_sizes: Optional[Sequence[int]] = None, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, leak: Union[None, float, str] = None,
                 tau_range: Tuple[float, float] = (1.0, 1000.0), device=None, dtype=None) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClockworkRNN: {name} must be an int >= 1, got {value!r}")
        if periods is None and module_sizes is None:
            g = min(DEFAULT_MODULES, hidden_size)
        else:
            g = len(periods if periods is not None else module_sizes)
        if periods is None:
            periods = [2 ** i for i in range(g)]
        if module_sizes is None and g >= 1:
            base, extra = divmod(hidden_size, g)
            module_sizes = [base + (1 if i < extra else 0) for i in range(g)]
        periods, module_sizes = list(periods), list(module_sizes)
        check_modules(periods, module_sizes, hidden_size, "ClockworkRNN")
        if nonlinearity not in NONLINEARITIES:
            raise ValueError(f"ClockworkRNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        tau_range = check_leak("ClockworkRNN", leak, tau_range)
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.periods = tuple(periods)
        self.module_sizes = tuple(module_sizes)
        self.nonlinearity = nonlinearity
        self.bias = bias
        self.batch_first = batch_first
        self.leak = leak
        self.tau_range = tau_range
        self.backend: Optional[str] = None
        kw = dict(device=device, dtype=dtype)
        self.weight_ih = nn.Parameter(torch.empty(hidden_size, input_size, **kw))
        self.weight_hh = nn.Parameter(torch.empty(hidden_size, hidden_size, **kw))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(hidden_size, **kw))
            self.bias_hh = nn.Parameter(torch.empty(hidden_size, **kw))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        if leak == "learned":
            self.log_tau = nn.Parameter(torch.empty(hidden_size, **kw))
        self.reset_parameters()

    def block_mask(self) -> Tensor:
        """(H, H) bool: True where weight_hh is read (module i reading modules j >= i)."""
        module = torch.repeat_interleave(torch.arange(len(self.module_sizes)),
                                         torch.tensor(self.module_sizes))
        return (module[:, None] <= module[None, :]).to(self.weight_hh.device)

    def reset_parameters(self) -> None:
        """As torch.nn.RNN (uniform in ±1/sqrt(hidden_size)), with the never-read
        blocks of weight_hh set to zero; log tau uniform over log(tau_range)."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name == "log_tau":
                    param.uniform_(*(math.log(v) for v in self.tau_range))
                else:
                    param.uniform_(-bound, bound)
            self.weight_hh.masked_fill_(~self.block_mask(), 0.0)

    def forward(self, input, hx: Optional[Tensor] = None, t0: int = 0, lengths=None):
        """input: (T, B, input_size) ((B, T, ...) batch_first) or a PackedSequence (as
        torch.nn.RNN takes it: the output is packed the same way and h_n holds each
        sequence's final state in the batch order); hx: (1, B, hidden_size) or None;
        t0: the clock at the first step (shared by the batch): an int >= 0, or a 0-d
        integer tensor (read with int() outside export; an input of the program under
        torch.export / torch.onnx.export). lengths (padded input
        only): (B,) ints; the output is 0 beyond each length. Returns (output, h_n)."""
        if isinstance(input, nn.utils.rnn.PackedSequence):
            return _packed.forward_packed(
                "ClockworkRNN", lambda x, h, lens: self._run(x, h, t0, lens, batch_first=False), input,
                hx, lengths)
        return self._run(input, hx, t0, lengths, self.batch_first)

    def _run(self, input: Tensor, hx: Optional[Tensor], t0: int, lengths,
             batch_first: bool) -> Tuple[Tensor, Tensor]:
        if not isinstance(input, Tensor):
            raise TypeError(f"ClockworkRNN: input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() != 3:
            layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
            raise ValueError(f"ClockworkRNN: input must be 3-D {layout}, got shape {tuple(input.shape)}")
        if input.size(-1) != self.input_size:
            raise ValueError(f"ClockworkRNN: input.size(-1) must be equal to input_size. "
                             f"Expected {self.input_size}, got {input.size(-1)}")
        if input.dtype != self.weight_hh.dtype:
            raise TypeError(f"ClockworkRNN: input has dtype {input.dtype} but the parameters are "
                            f"{self.weight_hh.dtype}")
        B = input.size(0 if batch_first else 1)
        # errors that name the module; the op gets lengths as given (see LeakyRNN)
        check_lengths("ClockworkRNN", lengths, B, input.size(1 if batch_first else 0), input.device)
        h0 = None
        if hx is not None:
            if not isinstance(hx, Tensor):
                raise TypeError(f"ClockworkRNN: hx must be a torch.Tensor or None, got {type(hx).__name__}")
            if tuple(hx.shape) != (1, B, self.hidden_size):
                raise ValueError(f"ClockworkRNN: hx must have shape (1, {B}, {self.hidden_size}), "
                                 f"got {tuple(hx.shape)}")
            if hx.dtype != input.dtype or hx.device != input.device:
                raise TypeError(f"ClockworkRNN: hx must be {input.dtype} on {input.device}, got "
                                f"{hx.dtype} on {hx.device}")
            h0 = hx[0]
        b = self.bias_ih + self.bias_hh if self.bias else None
        p = F.linear(input, self.weight_ih, b)  # all steps: one GEMM
        # the scan form while exporting; t0 may be a 0-d integer tensor
        h = _export.clockwork_rnn(p, self.weight_hh, h0, periods=self.periods, module_sizes=self.module_sizes,
                          alpha=alpha_of(self.leak, getattr(self, "log_tau", None), self.hidden_size, p),
                          nonlinearity=self.nonlinearity, t0=t0, batch_first=batch_first, lengths=lengths,
                          backend=self.backend)
        h_n = final_state(h, lengths, h0, batch_first=batch_first).unsqueeze(0)
        return h, h_n

    def extra_repr(self) -> str:
        s = (f"{self.input_size}, {self.hidden_size}, periods={self.periods}, "
             f"module_sizes={self.module_sizes}")
        if self.nonlinearity != "tanh":
            s += f", nonlinearity={self.nonlinearity!r}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.leak is not None:
            s += f", leak={self.leak!r}"
        return s
