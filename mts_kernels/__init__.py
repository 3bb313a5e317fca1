"""mts_kernels: fused kernels for multiple-time-scale recurrent networks.

    mts_kernels.linear_scan(a, x, h0=None, *, reverse=False, batch_first=True, lengths=None, backend=None)
    mts_kernels.leaky_integrate(v, alpha, h0=None, *, reverse=False, batch_first=True, lengths=None,
                                backend=None)
    mts_kernels.leaky_rnn(p, weight_hh, h0=None, *, alpha=None, weight_skip=None, skip=None,
                          dilation=1, nonlinearity="tanh", reverse=False, batch_first=False,
                          lengths=None)
    mts_kernels.final_state(h, lengths, h0=None, *, reverse=False, batch_first=True)
    mts_kernels.LeakyRNN(input_size, hidden_size, ...)   # drop-in for torch.nn.RNN
    mts_kernels.clockwork_rnn(p, weight_hh, h0=None, *, periods, module_sizes, alpha=None, ...)
    mts_kernels.ClockworkRNN(input_size, hidden_size, num_layers=1, ..., *, periods=None,
                             module_sizes=None, ...)  # nn.RNN's positional arguments
    mts_kernels.deep_transition_rnn(p, weight_hh, h0=None, *, bias_hh=None, weight_shortcut=None,
                                    alpha=None, nonlinearity="tanh", reverse=False, batch_first=False,
                                    lengths=None, backend=None)
    mts_kernels.DeepTransitionRNN(input_size, hidden_size, transition_depth=2, shortcut=False, ...)

`mts_kernels.reference` holds the plain PyTorch loops every kernel is tested
against. `python -m mts_kernels info` says what was built and which backends run.
"""

import torch  # noqa: F401  (the compiled ops need torch loaded first)

from mts_kernels import _extension, reference
from mts_kernels.nn import ClockworkRNN, DeepTransitionRNN, LeakyRNN
from mts_kernels.ops import (
    BACKENDS,
    BackendUnavailableError,
    clockwork_rnn,
    deep_transition_rnn,
    leaky_integrate,
    leaky_rnn,
    linear_scan,
)
from mts_kernels.ops._lengths import final_state
from mts_kernels.ops import _flops  # noqa: F401  (FlopCounterMode formulas of the custom ops)

__version__ = (_extension.BUILD_INFO or {}).get("version", "0.1.0")

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "ClockworkRNN",
    "DeepTransitionRNN",
    "LeakyRNN",
    "clockwork_rnn",
    "deep_transition_rnn",
    "final_state",
    "leaky_integrate",
    "leaky_rnn",
    "linear_scan",
    "reference",
]
