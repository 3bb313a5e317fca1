#pragma once
// The GPU time loop of leaky_rnn_tangent (the linearised leaky recurrence; the
// math in csrc/registration.cpp and tangent_step.h), templated on a device
// policy Dev: leaky_rnn_tangent_cuda.cpp's (cuBLAS and the kernel of
// leaky_rnn_tangent_cuda_step.cu) registers it for CUDA;
// leaky_rnn_tangent_emulate_cpu.cpp's (CPU GEMMs, the same per-element body in a
// loop) runs this very loop on the host, so the CPU tests check it. Dev: a
// csrc/gpu_loop.h GEMM policy with kName and step(TangentStep<T>).
//
// Per processing step k, on the current stream, no host synchronisation: z =
// x'_{k-d} W^T (+ x'_{k-s} Ws^T) from a ring of R = max(d, s) + 1 (B, H) slots in
// processing order (so reverse with lengths, where the rows of one step sit at
// different times, needs no repacking; outside the start state takes the slot's
// place before the first d / s steps), then one pointwise kernel that writes h
// at each row's time and x'_k into the ring.
#include <algorithm>
#include <optional>
#include <string>

#include "../gpu_loop.h"
#include "leaky_rnn_impl.h"
#include "tangent_args.h"
#include "tangent_step.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)
namespace tangent_loop {

using gpu_loop::tr;
using gpu_loop::view;

template <class Dev>
Tensor loop(Tensor drive_in, Tensor gain_in, Tensor w_in, std::optional<Tensor> keep_in,
            std::optional<Tensor> w_skip_in, std::optional<Tensor> start_in, int64_t skip, int64_t dilation,
            bool gain_inside, bool reverse, std::optional<Tensor> lengths) {
  const char* op = Dev::kName;
  const auto [T_, B, H] = check_tangent_args(op, drive_in, gain_in, w_in, keep_in, w_skip_in, start_in, skip,
                                             dilation, gain_inside, lengths, Dev::kDevice);
  const Tensor drive = compute(drive_in), gain = compute(gain_in), w = compute(w_in);
  // a delay of T or more reads the start state at every step, as T does
  const int64_t d = std::min(dilation, T_), sk = std::min(skip, T_);
  const gpu_loop::Opt keep(keep_in, w), ws(w_skip_in, w), start(start_in, w);
  const bool keep_all = keep_in && keep_in->dim() == 3;
  const gpu_loop::Lengths lens(lengths, w);
  Tensor h = torch::stable::empty_like(drive);
  if (B > 0 && H > 0) {
    Dev dev(drive);
    const int64_t R = std::max(d, sk) + 1;
    const Tensor ring = torch::stable::new_empty(drive, {R, B, H});
    const Tensor zbuf = torch::stable::new_empty(drive, {B, H});
    dispatch_compute(drive.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t BH = B * H;
      auto slot = [&](int64_t k) { return mut<T>(ring) + (k % R) * BH; };
      const Tensor wt = tr(view(drive, ptr<T>(w), H, H, H));
      const Tensor wst = tr(view(drive, ptr<T>(ws.t), H, H, H));  // (W itself when absent, unused)
      for (int64_t k = 0; k < T_; ++k) {
        bool has_z = false;
        // one connection's product into z: the ring slot `delay` steps back, or
        // before that the start state (outside only; absent: 0, no product)
        auto product = [&](int64_t delay, const Tensor& mt) {
          const T* x = k >= delay ? slot(k - delay)
                                  : (gain_inside ? nullptr : start.get<T>());
          if (x == nullptr) return;
          const Tensor xv = view(drive, x, B, H, H);
          if (has_z)
            dev.addmm(zbuf, xv, mt);
          else
            dev.mm(zbuf, xv, mt);
          has_z = true;
        };
        product(d, wt);
        if (ws.p) product(sk, wst);
        TangentStep<T> q{};
        q.B = B;
        q.H = H;
        q.k = k;
        q.Tn = T_;
        q.d = d;
        q.reverse = reverse;
        q.inside = gain_inside;
        q.has_z = has_z;
        q.z = ptr<T>(zbuf);
        q.drive = ptr<T>(drive);
        q.gain = ptr<T>(gain);
        q.keep = keep_all ? nullptr : keep.get<T>();
        q.keep_all = keep_all ? keep.get<T>() : nullptr;
        q.start = start.get<T>();
        q.h = mut<T>(h);
        q.ring = slot(k);
        q.lengths = lens.p;
        dev.step(q);
      }
    });
  }
  return as_dtype(h, drive_in.scalar_type());
}

}  // namespace tangent_loop
HIDDEN_NAMESPACE_END(mts, rnn)
