// CPU registration of the dense leaky recurrence: the time loop in C++, per-step
// GEMMs through ATen's BLAS, pointwise work in place (leaky_rnn_impl.h).
#include "leaky_rnn_impl.h"

TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) { mts::rnn::register_impls(m); }
