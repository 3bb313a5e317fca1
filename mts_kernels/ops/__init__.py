"""Functional API of mts_kernels, and the registration of every op."""

from mts_kernels.ops._backend import BACKENDS, BackendUnavailableError
from mts_kernels.ops.clockwork_rnn import clockwork_rnn
from mts_kernels.ops.deep_transition_rnn import deep_transition_rnn
from mts_kernels.ops.leaky_rnn import leaky_rnn
from mts_kernels.ops.scan import leaky_integrate, linear_scan

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "clockwork_rnn",
    "deep_transition_rnn",
    "leaky_integrate",
    "leaky_rnn",
    "linear_scan",
]
