#pragma once
// Per-element math of the linear scan / leaky integrator, shared by the CPU
// kernel and the CUDA kernels so the CPU tests exercise it.
//
//   linear scan:      h_t = a_t * h_{t-1} + x_t
//   leaky integrator: h_t = a_t * h_{t-1} + (1 - a_t) * v_t
//
// Backward with g_t = dL/dh_t and the carry c_t = a_{t+1} * delta_{t+1}:
//   delta_t = g_t + c_t
//   linear: dx_t = delta_t,             da_t = delta_t * h_{t-1}
//   leaky:  dv_t = (1 - a_t) * delta_t, da_t = delta_t * (h_{t-1} - v_t)
//   c_{t-1} = a_t * delta_t, and dL/dh_0 = c_0.
#include "../common.h"

namespace mts {

// The input term of step t: x_t for the linear scan, (1 - a_t) v_t when leaky.
template <bool LEAKY, typename acc_t>
MTS_HD acc_t scan_input(acc_t a, acc_t x) {
  return LEAKY ? (acc_t(1) - a) * x : x;
}

template <bool LEAKY, typename acc_t>
MTS_HD acc_t scan_step(acc_t a, acc_t x, acc_t h_prev) {
  return a * h_prev + scan_input<LEAKY>(a, x);
}

// dL/d(input)_t given delta_t.
template <bool LEAKY, typename acc_t>
MTS_HD acc_t scan_grad_input(acc_t a, acc_t delta) {
  return LEAKY ? (acc_t(1) - a) * delta : delta;
}

// dL/da_t given delta_t, h_{t-1} and the raw input x_t (v_t when leaky).
template <bool LEAKY, typename acc_t>
MTS_HD acc_t scan_grad_decay(acc_t delta, acc_t h_prev, acc_t x) {
  return LEAKY ? delta * (h_prev - x) : delta * h_prev;
}

// The chunked CUDA scan's composition of these steps: scan_combine.h.

}  // namespace mts
