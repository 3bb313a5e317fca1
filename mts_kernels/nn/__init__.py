"""nn.Modules built on the fused ops."""

from mts_kernels.nn.clockwork_rnn import ClockworkRNN
from mts_kernels.nn.deep_transition_rnn import DeepTransitionRNN
from mts_kernels.nn.leaky_rnn import LeakyRNN

__all__ = ["ClockworkRNN", "DeepTransitionRNN", "LeakyRNN"]
