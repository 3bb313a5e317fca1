#pragma once
// Per-element math of the dense leaky recurrence, written once for the CPU loop
// (V = float / double, or a GCC vector of them: ?: and scalar operands work
// elementwise there) and the CUDA kernels (float / double). tanh itself is left
// to the caller (tanhf on the device, a rational approximation on the CPU).
#include "../common.h"

namespace mts {
namespace rnn {

// torch.relu: NaN stays NaN.
template <typename V>
MTS_HD V relu_of(V z) {
  return z < V{} ? V{} : z;
}

// phi'(z) * delta from u = phi(z), as torch's tanh_backward / threshold_backward.
template <typename V>
MTS_HD V dphi_times(V delta, V u, bool relu) {
  return relu ? (u <= V{} ? V{} : delta) : delta * (1 - u * u);
}

// h_t = alpha * h_{t-d} + (1 - alpha) * u_t
template <typename V, typename A>
MTS_HD V leak_mix(A alpha, V hd, V u) {
  return alpha * hd + (1 - alpha) * u;
}

}  // namespace rnn
}  // namespace mts
