#pragma once
// One sub-layer's pointwise work in one step of deep_transition_rnn_tangent's
// loops (deep_tangent_loop.h), per element: the structs the host fills and the
// __host__ __device__ bodies run per thread by the CUDA kernels
// (deep_transition_rnn_tangent_cuda_step.cu) and in a plain loop on the CPU.
// Free of torch and CUDA headers; operands contiguous in the compute dtype T.
// Times as in deep_step.h (each row at its own time; an ended row writes zeros
// at its padded time k and reads nothing).
//
// The recurrence (processing step k, x^0 = h_{k-1}, h_{-1} = start):
//   a^l = x^{l-1} W_l^T  (l = L: + h_{k-1} U^T),   x^l = gain^l a^l
//   h_k = x^L + drive_k + keep h_{k-1}
// and its adjoint (k = T-1 down to 0, lambda = grad_h + carry):
//   nu^L = gain^L lambda, dgain^L = lambda a^L, carry = keep lambda,
//   dkeep += lambda h_{k-1}, ddrive = lambda;
//   mu^l = nu^{l+1} W_{l+1}, nu^l = gain^l mu^l, dgain^l = mu^l a^l;
//   carry += nu^1 W_1 + nu^L U.
#include <cstdint>

#include "../common.h"
#include "deep_step.h"

namespace mts {
namespace deep {

// Forward, sub-layer l: a = z, stored to a_all[t_b]; x = gain_all[t_b] a to
// x_next, or (top) h = x + drive + keep hprev to h_all[t_b] and h_next.
template <typename T>
struct TanStepFwd : StepAt {  // relu unused
  bool top;
  const T* z;              // (B, H)
  const T* gain_all;       // (T, B, H) gain^l
  const T* drive_all;      // (T, B, H); with top
  const T* keep;           // (H); nullptr: none (with top)
  const T* hprev;          // (B, H); with top
  T* a_all;                // (T, B, H) a^l
  T* x_next;               // (B, H); below the top
  T* h_all;                // (T, B, H); with top
  T* h_next;               // (B, H); with top
  const int64_t* lengths;
};

// Backward, top sub-layer (see the file comment).
template <typename T>
struct TanStepBwdTop : StepAt {
  const T* g_all;          // (T, B, H) grad_h
  const T* carry_in;       // (B, H)
  const T* gain_all;       // (T, B, H) gain^L
  const T* a_all;          // (T, B, H) a^L
  const T* h_all;          // (T, B, H) h
  const T* start;          // (B, H)
  const T* keep;           // (H); nullptr: none
  T* ddrive_all;           // (T, B, H)
  T* dgain_all;            // (T, B, H) dgain^L
  T* nu_all;               // (T, B, H) nu^L
  T* nu_next;              // (B, H)
  T* carry_out;            // (B, H)
  T* hprev_all;            // (T, B, H): h_{k-1} at each row's time
  T* dkeep;                // (B, H) accumulated; with keep
  const int64_t* lengths;
};

// Backward, sub-layer l < L: mu = ds[i] (= nu^{l+1} W_{l+1}).
template <typename T>
struct TanStepBwdLower : StepAt {
  const T* ds;             // (B, H)
  const T* gain_all;       // (T, B, H) gain^l
  const T* a_all;          // (T, B, H) a^l
  T* dgain_all;            // (T, B, H) dgain^l
  T* nu_all;               // (T, B, H) nu^l
  T* nu_next;              // (B, H)
  const int64_t* lengths;
};

template <typename T>
MTS_HD void step_elem(const TanStepFwd<T>& q, int64_t i) {
  const int64_t b = i / q.H, j = i - b * q.H;
  bool runs = false;
  const int64_t o = time_at(q.k, row_len(q.lengths, b, q.Tn), q.reverse, &runs) * q.B * q.H + i;
  const T av = runs ? q.z[i] : T(0);
  const T xv = runs ? q.gain_all[o] * av : T(0);
  q.a_all[o] = av;
  if (!q.top) {
    q.x_next[i] = xv;
    return;
  }
  T hv = T(0);
  if (runs) {
    hv = xv + q.drive_all[o];
    if (q.keep != nullptr) hv += q.keep[j] * q.hprev[i];
  }
  q.h_all[o] = hv;
  q.h_next[i] = hv;
}

template <typename T>
MTS_HD void step_elem(const TanStepBwdTop<T>& q, int64_t i) {
  const int64_t b = i / q.H, j = i - b * q.H;
  const int64_t BH = q.B * q.H;
  const int64_t L = row_len(q.lengths, b, q.Tn);
  bool runs = false;
  const int64_t o = time_at(q.k, L, q.reverse, &runs) * BH + i;
  T lam = T(0), nu = T(0), dg = T(0), carry = T(0), hp = T(0);
  if (runs) {
    bool prev_runs = false;
    hp = q.k > 0 ? q.h_all[time_at(q.k - 1, L, q.reverse, &prev_runs) * BH + i] : q.start[i];
    lam = q.g_all[o] + q.carry_in[i];
    nu = q.gain_all[o] * lam;
    dg = lam * q.a_all[o];
    if (q.keep != nullptr) {
      carry = q.keep[j] * lam;
      q.dkeep[i] += lam * hp;
    }
  }
  q.ddrive_all[o] = lam;
  q.dgain_all[o] = dg;
  q.nu_all[o] = nu;
  q.nu_next[i] = nu;
  q.carry_out[i] = carry;
  q.hprev_all[o] = hp;
}

template <typename T>
MTS_HD void step_elem(const TanStepBwdLower<T>& q, int64_t i) {
  const int64_t b = i / q.H;
  bool runs = false;
  const int64_t o = time_at(q.k, row_len(q.lengths, b, q.Tn), q.reverse, &runs) * q.B * q.H + i;
  const T mu = runs ? q.ds[i] : T(0);
  const T nu = runs ? q.gain_all[o] * mu : T(0);
  q.dgain_all[o] = runs ? mu * q.a_all[o] : T(0);
  q.nu_all[o] = nu;
  q.nu_next[i] = nu;
}

template <typename T>
bool step_valid(const TanStepFwd<T>& q) {
  return common_valid(q) && q.z != nullptr && q.gain_all != nullptr && q.a_all != nullptr &&
         (q.top ? (q.drive_all != nullptr && q.h_all != nullptr && q.h_next != nullptr &&
                   (q.keep == nullptr || q.hprev != nullptr))
                : q.x_next != nullptr);
}
template <typename T>
bool step_valid(const TanStepBwdTop<T>& q) {
  return common_valid(q) && q.g_all != nullptr && q.carry_in != nullptr && q.gain_all != nullptr &&
         q.a_all != nullptr && q.h_all != nullptr && q.start != nullptr && q.ddrive_all != nullptr &&
         q.dgain_all != nullptr && q.nu_all != nullptr && q.nu_next != nullptr && q.carry_out != nullptr &&
         q.hprev_all != nullptr && (q.keep == nullptr || q.dkeep != nullptr);
}
template <typename T>
bool step_valid(const TanStepBwdLower<T>& q) {
  return common_valid(q) && q.ds != nullptr && q.gain_all != nullptr && q.a_all != nullptr &&
         q.dgain_all != nullptr && q.nu_all != nullptr && q.nu_next != nullptr;
}

}  // namespace deep
}  // namespace mts
