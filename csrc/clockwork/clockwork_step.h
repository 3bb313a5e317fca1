#pragma once
// One step's pointwise work of the GPU clockwork time loop (clockwork_loop.h),
// per element: the structs the host fills and the __host__ __device__ bodies the
// CUDA kernels (clockwork_rnn_cuda_step.cu) run per thread and the host
// emulation (clockwork_rnn_emulate_cpu.cpp) runs in a plain loop. Free of torch
// and CUDA headers. Every operand is contiguous in the compute dtype T (float or
// double): (B, H) rows of one step, (H) alpha.
//
// Unit j belongs to module mod[j]; at step t the host passes `active`, bit m set
// when module m runs (t >= first_m and (t - first_m) % T_m == 0), so at most
// kMaxCudaModules modules. Lengths (B,) int64 on the device or nullptr: row b
// runs step t iff t < L_b (L_b clamped to [0, Tn], never read on the host); a row
// that does not writes zeros (h, u; backward: e, carry_out) and reads nothing.
#include <cmath>
#include <cstdint>

#include "../common.h"
#include "../rnn/leaky_rnn_math.h"

namespace mts {
namespace clockwork {

constexpr int kMaxCudaModules = 64;

// The module boundaries, passed by value: module m covers units [lo[m], lo[m + 1]).
struct ClockworkCudaModules {
  int64_t g;
  int64_t lo[kMaxCudaModules + 1];
};

// Forward, step t, element i = b * H + j:
//   active:   z = zrow[i] + p[i] (zrow: the step's product of module mod[j]'s rows),
//             u = phi(z), h = alpha ? alpha_j prev + (1 - alpha_j) u : u
//   inactive: h = prev[i], u = 0
template <typename T>
struct ClockworkStepFwd {
  int64_t B, H, t, Tn;
  bool relu;
  uint64_t active;
  const int32_t* mod;      // (H)
  const T* alpha;          // (H); nullptr: no leak
  const T* prev;           // (B, H) h(t-1) (h0 at t = 0)
  const T* zrow;           // (B, H); read at active units only
  const T* p;              // (B, H) p(t)
  T* h;                    // (B, H) h(t)
  T* u;                    // (B, H) u(t); nullptr iff alpha == nullptr
  const int64_t* lengths;  // (B); nullptr: every row runs every step
};

// Backward, step t (processed T-1 down to 0), delta = g[i] + carry_in[i]:
//   active:   e = (1 - alpha_j) phi'(u) delta, carry_out = alpha_j delta (0 without alpha),
//             da[i] += delta (prev - u) (with alpha)
//   inactive: e = 0, carry_out = delta
// The host then adds e's product with the active modules' W rows into carry_out.
template <typename T>
struct ClockworkStepBwd {
  int64_t B, H, t, Tn;
  bool relu;
  uint64_t active;
  const int32_t* mod;      // (H)
  const T* alpha;          // (H); nullptr: no leak
  const T* g;              // (B, H) grad_h(t)
  const T* carry_in;       // (B, H) what later steps sent to h(t)
  const T* u;              // (B, H) u(t) (h(t) without alpha)
  const T* prev;           // (B, H) h(t-1) (h0 at t = 0); read with alpha
  T* e;                    // (B, H) dL/dp(t)
  T* carry_out;            // (B, H) the hold / leak part of dL/dh(t-1)
  T* da;                   // (B, H) dalpha terms, accumulated; with alpha
  const int64_t* lengths;  // (B); nullptr: every row runs every step
};

template <typename T>
MTS_HD T tanh_of(T z) {
#ifdef __CUDA_ARCH__
  return tanh(z);  // tanhf for float: the device overloads
#else
  return std::tanh(z);
#endif
}

// The module of unit j: the last one starting at or before j.
MTS_HD int32_t module_of(const ClockworkCudaModules& m, int64_t j) {
  int32_t g = 0;
  while (g + 1 < m.g && m.lo[g + 1] <= j) ++g;
  return g;
}

// Whether row b runs step t (its length clamped to [0, Tn]).
MTS_HD bool row_runs(const int64_t* lengths, int64_t b, int64_t t, int64_t Tn) {
  if (lengths == nullptr) return true;
  const int64_t L = lengths[b];
  return t < (L < 0 ? 0 : (L > Tn ? Tn : L));
}

MTS_HD bool unit_active(uint64_t active, const int32_t* mod, int64_t j) {
  return (active >> mod[j]) & 1u;
}

// The forward body with the product zr of element i given (q.zrow unread): the
// persistent kernel (clockwork_persistent.h) computes it on chip.
template <typename T>
MTS_HD void fwd_elem(const ClockworkStepFwd<T>& q, int64_t i, T zr) {
  const int64_t b = i / q.H, j = i - b * q.H;
  T hv = T(0), uv = T(0);
  if (row_runs(q.lengths, b, q.t, q.Tn)) {
    if (unit_active(q.active, q.mod, j)) {
      const T z = zr + q.p[i];
      uv = q.relu ? rnn::relu_of(z) : tanh_of(z);
      hv = q.alpha != nullptr ? rnn::leak_mix(q.alpha[j], q.prev[i], uv) : uv;
    } else {
      hv = q.prev[i];
    }
  }
  q.h[i] = hv;
  if (q.u != nullptr) q.u[i] = uv;
}

// zrow holds products at the active units only: read nowhere else.
template <typename T>
MTS_HD void step_elem(const ClockworkStepFwd<T>& q, int64_t i) {
  const int64_t b = i / q.H, j = i - b * q.H;
  const bool reads = row_runs(q.lengths, b, q.t, q.Tn) && unit_active(q.active, q.mod, j);
  fwd_elem(q, i, reads ? q.zrow[i] : T(0));
}

template <typename T>
MTS_HD void step_elem(const ClockworkStepBwd<T>& q, int64_t i) {
  const int64_t b = i / q.H, j = i - b * q.H;
  T ev = T(0), carry = T(0);
  if (row_runs(q.lengths, b, q.t, q.Tn)) {
    const T delta = q.g[i] + q.carry_in[i];
    if (unit_active(q.active, q.mod, j)) {
      const T uv = q.u[i];
      ev = rnn::dphi_times(delta, uv, q.relu);
      if (q.alpha != nullptr) {
        const T a = q.alpha[j];
        ev = (T(1) - a) * ev;
        carry = a * delta;
        q.da[i] += delta * (q.prev[i] - uv);
      }
    } else {
      carry = delta;
    }
  }
  q.e[i] = ev;
  q.carry_out[i] = carry;
}

// Parameter checks of a launch (the emulation's too).
template <typename T>
bool step_valid(const ClockworkStepFwd<T>& q) {
  return q.B > 0 && q.H > 0 && q.t >= 0 && q.t < q.Tn && q.mod != nullptr && q.prev != nullptr &&
         q.zrow != nullptr && q.p != nullptr && q.h != nullptr && (q.alpha != nullptr) == (q.u != nullptr);
}
template <typename T>
bool step_valid(const ClockworkStepBwd<T>& q) {
  return q.B > 0 && q.H > 0 && q.t >= 0 && q.t < q.Tn && q.mod != nullptr && q.g != nullptr &&
         q.carry_in != nullptr && q.u != nullptr && q.e != nullptr && q.carry_out != nullptr &&
         (q.alpha == nullptr || (q.prev != nullptr && q.da != nullptr));
}
inline bool modules_valid(const ClockworkCudaModules& m, int64_t H) {
  return m.g >= 1 && m.g <= kMaxCudaModules && H >= 1 && m.lo[0] == 0 && m.lo[m.g] == H;
}

}  // namespace clockwork
}  // namespace mts
