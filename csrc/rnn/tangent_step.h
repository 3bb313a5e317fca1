#pragma once
// One step's pointwise work of the GPU loop of leaky_rnn_tangent
// (tangent_loop.h), per element: the struct the host fills and the
// __host__ __device__ body the CUDA kernel (leaky_rnn_tangent_cuda_step.cu) runs
// per thread and the host emulation (leaky_rnn_tangent_emulate_cpu.cpp) runs in a
// plain loop. Free of torch and CUDA headers; operands contiguous in the compute
// dtype T (float or double).
//
// Processing step k of row b is time t_b = k (t_b = L_b - 1 - k with reverse)
// while k < L_b (its length clamped to [0, Tn]; Tn without lengths); a row that
// has ended writes 0 at its padded time k and 0 into the ring, and reads nothing.
// With x = h (the output) and delay d (dilation):
//   outside: h_k = drive_k + keep_k h_{k-d} + gain_k z     (h_{k-d} = start before step d)
//   inside:  h_k = drive_k + keep_{k-d} h_{k-d} + z         (nothing before step d)
// where z = W x'_{k-d} + Ws x'_{k-s} is this step's product(s) of the ring slots
// the host multiplied (x' = x outside, gain x inside: the kernel stores x'_k in
// the ring slot of step k).
#include <cstdint>

#include "../common.h"

namespace mts {
namespace rnn {

template <typename T>
struct TangentStep {
  int64_t B, H, k, Tn, d;
  bool reverse, inside;
  bool has_z;              // a product was written to z (else it is 0)
  const T* z;              // (B, H)
  const T* drive;          // (T, B, H)
  const T* gain;           // (T, B, H)
  const T* keep;           // (H) per unit, or nullptr
  const T* keep_all;       // (T, B, H) per step, or nullptr
  const T* start;          // (B, H) h before the first d steps (outside), or nullptr (0)
  T* h;                    // (T, B, H) output
  T* ring;                 // (B, H) this step's slot: x'_k
  const int64_t* lengths;  // (B); nullptr: every row runs Tn steps
};

MTS_HD int64_t tangent_row_len(const int64_t* lengths, int64_t b, int64_t Tn) {
  if (lengths == nullptr) return Tn;
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > Tn ? Tn : L);
}

template <typename T>
MTS_HD void step_elem(const TangentStep<T>& q, int64_t i) {
  const int64_t BH = q.B * q.H;
  const int64_t b = i / q.H, j = i - b * q.H;
  const int64_t L = tangent_row_len(q.lengths, b, q.Tn);
  const bool runs = q.k < L;
  const int64_t o = ((runs && q.reverse) ? L - 1 - q.k : q.k) * BH + i;
  if (!runs) {
    q.h[o] = T(0);
    q.ring[i] = T(0);
    return;
  }
  const T zv = q.has_z ? q.z[i] : T(0);
  T out = q.drive[o] + (q.inside ? zv : q.gain[o] * zv);
  // the state d steps back (a running row ran then) and its keep
  const bool back = q.k >= q.d;
  const int64_t ob = back ? (q.reverse ? L - 1 - (q.k - q.d) : q.k - q.d) * BH + i : 0;
  const T* hp = back ? q.h + ob : (q.inside || q.start == nullptr ? nullptr : q.start + i);
  if (hp != nullptr) {
    T kv = T(0);
    bool has_keep = true;
    if (q.keep_all != nullptr)
      kv = q.inside ? q.keep_all[ob] : q.keep_all[o];  // inside: only with back (hp set)
    else if (q.keep != nullptr)
      kv = q.keep[j];
    else
      has_keep = false;
    if (has_keep) out += kv * *hp;
  }
  q.h[o] = out;
  q.ring[i] = q.inside ? q.gain[o] * out : out;
}

template <typename T>
bool step_valid(const TangentStep<T>& q) {
  return q.B > 0 && q.H > 0 && q.k >= 0 && q.k < q.Tn && q.d >= 1 && q.drive != nullptr &&
         q.gain != nullptr && q.h != nullptr && q.ring != nullptr && (!q.has_z || q.z != nullptr) &&
         !(q.inside && q.start != nullptr);
}

}  // namespace rnn
}  // namespace mts
