#pragma once
// One sub-layer's pointwise work in one step of the GPU deep-transition loop
// (deep_loop.h), per element: the structs the host fills and the
// __host__ __device__ bodies the CUDA kernels (deep_transition_rnn_cuda_step.cu)
// run per thread and the host emulation (deep_transition_rnn_emulate_cpu.cpp)
// runs in a plain loop. Free of torch and CUDA headers. Operands are contiguous
// in the compute dtype T (float or double).
//
// Time: processing step k of row b is time t_b = k (forward) or L_b - 1 - k
// (reverse) while k < L_b (L_b: the row's length clamped to [0, Tn], Tn without
// lengths); a row that has ended visits its padded time k instead, writes the
// zeros there and reads nothing, so every time of a row is written exactly once.
// The (B, H) scratch rows (products, the state, carries) are indexed by row b;
// the (T, B, H) slabs are addressed at each row's own time.
#include <cmath>
#include <cstdint>

#include "../common.h"
#include "../rnn/leaky_rnn_math.h"

namespace mts {
namespace deep {

// Where a step is (the fields every step struct below starts with): the sizes,
// the processing step k of Tn, the nonlinearity and the direction.
struct StepAt {
  int64_t B, H, k, Tn;
  bool relu, reverse;
};

// Forward, sub-layer l of step k, element i = b * H + j:
//   s = phi(z[i] + bias[j] (+ p_all[t_b] with first)), stored to s_all[t_b] and,
//   below the top, to s_next (the next product's input); top: h = alpha ?
//   alpha_j hprev + (1 - alpha_j) s : s to h_all[t_b] and h_next.
template <typename T>
struct DeepStepFwd : StepAt {
  bool first, top;
  const T* z;              // (B, H) this sub-layer's product
  const T* bias;           // (H) b_l; nullptr: none
  const T* p_all;          // (T, B, H); read with first
  const T* alpha;          // (H); nullptr: no leak (read with top)
  const T* hprev;          // (B, H) the state the step read; with top and alpha
  T* s_all;                // (T, B, H) slab of sub-layer l
  T* s_next;               // (B, H); below the top
  T* h_all;                // (T, B, H); with top
  T* h_next;               // (B, H); with top
  const int64_t* lengths;  // (B); nullptr: every row runs Tn steps
};

// Backward, top sub-layer L of step k: delta = g_all[t_b] + carry_in[i];
//   e = phi'(s^L) (1 - alpha_j) delta to e_all[t_b] and e_next;
//   carry_out = alpha_j delta (0 without alpha); hprev_all[t_b] = the state the
//   step read (h_all at the row's previous time, h0 at its first step);
//   da[i] += delta (hprev - s^L) with alpha.
template <typename T>
struct DeepStepBwdTop : StepAt {
  const T* g_all;          // (T, B, H) grad_h
  const T* carry_in;       // (B, H) what later steps sent to this step's h
  const T* s_all;          // (T, B, H) s^L
  const T* h_all;          // (T, B, H) h
  const T* h0;             // (B, H)
  const T* alpha;          // (H); nullptr: no leak
  T* e_all;                // (T, B, H) e^L
  T* e_next;               // (B, H) e^L for the products
  T* carry_out;            // (B, H)
  T* hprev_all;            // (T, B, H)
  T* da;                   // (B, H); with alpha
  const int64_t* lengths;
};

// Backward, sub-layer l < L: e = phi'(s^l) ds[i] (ds = e^{l+1} W_{l+1}) to
// e_all[t_b] and e_next.
template <typename T>
struct DeepStepBwdLower : StepAt {
  const T* ds;             // (B, H)
  const T* s_all;          // (T, B, H) s^l
  T* e_all;                // (T, B, H) e^l
  T* e_next;               // (B, H)
  const int64_t* lengths;
};

template <typename T>
MTS_HD T tanh_of(T z) {
#ifdef __CUDA_ARCH__
  return tanh(z);
#else
  return std::tanh(z);
#endif
}

MTS_HD int64_t row_len(const int64_t* lengths, int64_t b, int64_t Tn) {
  if (lengths == nullptr) return Tn;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > Tn ? Tn : L);
}

// Row b's time at step k, and whether it runs (see the file comment).
MTS_HD int64_t time_at(int64_t k, int64_t L, bool reverse, bool* runs) {
  *runs = k < L;
  return (*runs && reverse) ? L - 1 - k : k;
}

// The forward body with the product z of element i given (q.z unread): the
// persistent kernel (deep_persistent.h) computes it on chip.
template <typename T>
MTS_HD void fwd_elem(const DeepStepFwd<T>& q, int64_t i, T z) {
  const int64_t b = i / q.H, j = i - b * q.H;
  bool runs = false;
  const int64_t o = time_at(q.k, row_len(q.lengths, b, q.Tn), q.reverse, &runs) * q.B * q.H + i;
  T sv = T(0);
  if (runs) {
    if (q.bias != nullptr) z += q.bias[j];
    if (q.first) z += q.p_all[o];
    sv = q.relu ? rnn::relu_of(z) : tanh_of(z);
  }
  q.s_all[o] = sv;
  if (!q.top) {
    q.s_next[i] = sv;
    return;
  }
  const T hv = (runs && q.alpha != nullptr) ? rnn::leak_mix(q.alpha[j], q.hprev[i], sv) : sv;
  q.h_all[o] = hv;
  q.h_next[i] = hv;
}

template <typename T>
MTS_HD void step_elem(const DeepStepFwd<T>& q, int64_t i) {
  fwd_elem(q, i, q.z[i]);
}

template <typename T>
MTS_HD void step_elem(const DeepStepBwdTop<T>& q, int64_t i) {
  const int64_t b = i / q.H, j = i - b * q.H;
  const int64_t BH = q.B * q.H;
  const int64_t L = row_len(q.lengths, b, q.Tn);
  bool runs = false;
  const int64_t o = time_at(q.k, L, q.reverse, &runs) * BH + i;
  T ev = T(0), carry = T(0), hp = T(0);
  if (runs) {
    bool prev_runs = false;
    hp = q.k > 0 ? q.h_all[time_at(q.k - 1, L, q.reverse, &prev_runs) * BH + i] : q.h0[i];
    const T delta = q.g_all[o] + q.carry_in[i];
    const T sv = q.s_all[o];
    T ds = delta;
    if (q.alpha != nullptr) {
      const T a = q.alpha[j];
      ds = (T(1) - a) * delta;
      carry = a * delta;
      q.da[i] += delta * (hp - sv);
    }
    ev = rnn::dphi_times(ds, sv, q.relu);
  }
  q.e_all[o] = ev;
  q.e_next[i] = ev;
  q.carry_out[i] = carry;
  q.hprev_all[o] = hp;
}

// With ds of element i given (q.ds unread), as fwd_elem.
template <typename T>
MTS_HD void lower_elem(const DeepStepBwdLower<T>& q, int64_t i, T ds) {
  const int64_t b = i / q.H;
  bool runs = false;
  const int64_t o = time_at(q.k, row_len(q.lengths, b, q.Tn), q.reverse, &runs) * q.B * q.H + i;
  const T ev = runs ? rnn::dphi_times(ds, q.s_all[o], q.relu) : T(0);
  q.e_all[o] = ev;
  q.e_next[i] = ev;
}

template <typename T>
MTS_HD void step_elem(const DeepStepBwdLower<T>& q, int64_t i) {
  lower_elem(q, i, q.ds[i]);
}

template <class Q>
bool common_valid(const Q& q) {
  return q.B > 0 && q.H > 0 && q.k >= 0 && q.k < q.Tn;
}
template <typename T>
bool step_valid(const DeepStepFwd<T>& q) {
  return common_valid(q) && q.z != nullptr && q.s_all != nullptr && (!q.first || q.p_all != nullptr) &&
         (q.top ? (q.h_all != nullptr && q.h_next != nullptr && (q.alpha == nullptr || q.hprev != nullptr))
                : q.s_next != nullptr);
}
template <typename T>
bool step_valid(const DeepStepBwdTop<T>& q) {
  return common_valid(q) && q.g_all != nullptr && q.carry_in != nullptr && q.s_all != nullptr &&
         q.h_all != nullptr && q.h0 != nullptr && q.e_all != nullptr && q.e_next != nullptr &&
         q.carry_out != nullptr && q.hprev_all != nullptr && (q.alpha == nullptr || q.da != nullptr);
}
template <typename T>
bool step_valid(const DeepStepBwdLower<T>& q) {
  return common_valid(q) && q.ds != nullptr && q.s_all != nullptr && q.e_all != nullptr && q.e_next != nullptr;
}

}  // namespace deep
}  // namespace mts
