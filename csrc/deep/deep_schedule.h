#pragma once
// The step schedule the deep-transition GPU loops share: deep_loop.h (the
// recurrence, its cuBLAS loop and the host emulation) and deep_tangent_loop.h
// (its tangent and adjoint, every device). The loops differ only in their
// pointwise steps, which they pass as callbacks filling their own step structs;
// the GEMMs on strided (B, H) views, the sub-layer hand-off and the ping-pong of
// the state and of the carries are here. Dev: a csrc/gpu_loop.h GEMM policy.
#include <utility>

#include "../gpu_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace schedule {

using gpu_loop::tr;
using gpu_loop::view;

// Forward, for k = 0..Tn-1 and l = 0..L-1: z = in W_l^T (in: the state for l = 0,
// else `handoff`, which the step of l - 1 wrote), at the top also + prev U^T (U =
// ws, nullptr: none), then step(k, l, prev, next) with prev the state the step
// read (`start` at k = 0) and next the (B, H) buffer its top writes; the states
// alternate between state_a and state_b.
template <typename T, class Dev, class Step>
void forward(Dev& dev, const Tensor& like, int64_t Tn, int64_t L, int64_t B, int64_t H, const T* w,
             const T* ws, const T* start, T* state_a, T* state_b, const Tensor& z, const T* handoff,
             Step&& step) {
  const T* prev = start;
  T* next = state_a;
  T* spare = state_b;
  for (int64_t k = 0; k < Tn; ++k) {
    for (int64_t l = 0; l < L; ++l) {
      const T* in = l == 0 ? prev : handoff;
      dev.mm(z, view(like, in, B, H, H), tr(view(like, w + l * H * H, H, H, H)));
      if (l == L - 1 && ws != nullptr) dev.addmm(z, view(like, prev, B, H, H), tr(view(like, ws, H, H, H)));
      step(k, l, prev, next);
    }
    prev = next;
    std::swap(next, spare);
  }
}

// Backward, for k = Tn-1 down to 0: top(k, carry_in, carry_out) (it writes the
// top sub-layer's error into `err` and sets carry_out), carry_out += err U (ws,
// nullptr: none), then for l = L-2..0: ds = err W_{l+1} and lower(k, l, ds) (it
// writes sub-layer l's error into `err`), and finally carry_out += err W_1. The
// carries alternate between carry_a (zeros on entry: nothing comes after the
// last step) and carry_b; step 0's goes to `last`.
template <typename T, class Dev, class Top, class Lower>
void backward(Dev& dev, const Tensor& like, int64_t Tn, int64_t L, int64_t B, int64_t H, const T* w,
              const T* ws, T* carry_a, T* carry_b, T* last, const T* err, T* ds, Top&& top, Lower&& lower) {
  T* in = carry_a;
  T* spare = carry_b;
  const Tensor err_v = view(like, err, B, H, H);
  const Tensor ds_v = view(like, ds, B, H, H);
  for (int64_t k = Tn - 1; k >= 0; --k) {
    T* out = k > 0 ? spare : last;
    const Tensor out_v = view(like, out, B, H, H);
    top(k, static_cast<const T*>(in), out);
    if (ws != nullptr) dev.addmm(out_v, err_v, view(like, ws, H, H, H));  // carry += err^L U
    for (int64_t l = L - 2; l >= 0; --l) {
      dev.mm(ds_v, err_v, view(like, w + (l + 1) * H * H, H, H, H));
      lower(k, l, static_cast<const T*>(ds));
    }
    dev.addmm(out_v, err_v, view(like, w, H, H, H));  // carry += err^1 W_1
    spare = in;
    in = out;
  }
}

}  // namespace schedule
HIDDEN_NAMESPACE_END(mts, deep)
