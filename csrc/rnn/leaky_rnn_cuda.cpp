// CUDA registration of the dense leaky recurrence: the loop of leaky_rnn_impl.h
// over ATen ops, each step one cuBLAS GEMM plus in-place pointwise kernels on the
// current stream, with no host synchronisation inside the loop (graph-capturable).
#include "leaky_rnn_impl.h"

TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) { mts::rnn::register_impls<mts::rnn::AtenLoop>(m); }
