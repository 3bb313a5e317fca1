#pragma once
// The GPU time loop of the deep-transition recurrence (the math in
// deep_transition_rnn_cpu.cpp's header comment), templated on a device policy
// Dev: deep_transition_rnn_cuda.cpp's (cuBLAS, the kernels of
// deep_transition_rnn_cuda_step.cu) registers it for CUDA;
// deep_transition_rnn_emulate_cpu.cpp's (CPU GEMMs, the same per-element bodies
// in a loop) runs this very loop on the host, so the CPU test suite checks it.
// Dev: a csrc/gpu_loop.h GEMM policy with kFwdName, kBwdName, step(q) for the
// three parameter structs of deep_step.h and persistent(q) for the two of
// deep_persistent.h.
//
// Per step (the schedule of deep_schedule.h, shared with the tangent's loop), on
// the current stream and with no host synchronisation:
//  * forward: for l = 1..L one GEMM z = s^{l-1} W_l^T into a (B, H) scratch (s^0:
//    the state; the top one also + h_{t-1} U^T), then one pointwise kernel (bias,
//    p for l = 1, phi; the top one also the leak) that stores s^l at each row's
//    time and hands it (or the new state) to the next product;
//  * backward (steps T-1 down to 0): the top kernel (delta = grad_h + carry, e^L,
//    the leak's carry and dalpha terms, and the state the step read, stored at
//    the row's time), then carry += e^L U, and for l = L-1..1 one GEMM
//    ds = e^{l+1} W_{l+1} and one kernel e^l = phi'(s^l) ds; finally carry +=
//    e^1 W_1.
// Everything per step is (B, H) rows in row order with each row's own time (so
// reverse with lengths, where rows sit at different times, is the same loop);
// the weight gradients are single GEMMs over all (T, B) rows after the loop:
// dW_1 = e^1^T h_prev, dW_l = e^l^T s^{l-1}, dU = e^L^T h_prev (h_prev: the states
// the backward stored, 0 at padded times), db_l = the column sums of e^l.
// float16/bfloat16 run in float32, stored in the input dtype; float64 in float64.
//
// Before the step loop each direction offers the whole time loop to
// dev.persistent(q) (deep_persistent.h: one launch, the weights on chip, the
// same per-element bodies, the same buffers); it returns whether it ran it. The
// weight-gradient GEMMs after the loop are the same either way.
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../gpu_loop.h"
#include "../lengths.h"
#include "../rnn/leaky_rnn_impl.h"
#include "deep_args.h"
#include "deep_persistent.h"
#include "deep_schedule.h"
#include "deep_step.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace loop {

using gpu_loop::Opt;
using gpu_loop::tr;
using gpu_loop::view;
using ::mts::rnn::as_dtype;
using ::mts::rnn::compute;
using ::mts::rnn::dispatch_compute;

template <class Dev>
std::tuple<Tensor, Tensor> loop_fwd(Tensor p_in, Tensor w_in, std::optional<Tensor> h0_in,
                                    std::optional<Tensor> bias_in, std::optional<Tensor> ws_in,
                                    std::optional<Tensor> alpha_in, std::string nonlinearity, bool reverse,
                                    std::optional<Tensor> lengths) {
  const char* op = Dev::kFwdName;
  const Shape s = check_args(op, "p", p_in, w_in, h0_in, bias_in, ws_in, alpha_in, Dev::kDevice);
  const bool tanh = parse_tanh(nonlinearity, op);
  check_lengths(op, lengths, s.B, p_in.device());
  const Tensor p = compute(p_in), w = compute(w_in);
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(p, {s.B, s.H});
  const Opt bias(bias_in, w), ws(ws_in, w), alpha(alpha_in, w);
  const gpu_loop::Lengths lens(lengths, w);
  Tensor h = torch::stable::empty_like(p);
  Tensor st = torch::stable::new_empty(p, {s.L, s.T, s.B, s.H});
  if (s.B > 0 && s.H > 0) {
    Dev dev(p);
    // the state (ping-pong), the product and the sub-layer handed to the next product
    const Tensor state_a = torch::stable::new_empty(p, {s.B, s.H});
    const Tensor state_b = torch::stable::new_empty(p, {s.B, s.H});
    const Tensor zbuf = torch::stable::new_empty(p, {s.B, s.H});
    const Tensor sbuf = torch::stable::new_empty(p, {s.B, s.H});
    dispatch_compute(p.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, TBH = s.T * B * H;
      const T* wp = ptr<T>(w);
      DeepPersistFwd<T> pq{};
      static_cast<PersistShape&>(pq) = PersistShape{B, H, s.L, s.T, !tanh, reverse};
      pq.p_all = ptr<T>(p);
      pq.w = wp;
      pq.bias = bias.get<T>();
      pq.ws = ws.get<T>();
      pq.alpha = alpha.get<T>();
      pq.h0 = ptr<T>(h0);
      pq.h_all = mut<T>(h);
      pq.s_all = mut<T>(st);
      pq.state[0] = mut<T>(state_a);
      pq.state[1] = mut<T>(state_b);
      pq.sbuf[0] = mut<T>(sbuf);
      pq.sbuf[1] = mut<T>(zbuf);
      pq.lengths = lens.p;
      if (dev.persistent(pq)) return;
      schedule::forward<T>(dev, p, s.T, s.L, B, H, wp, ws.get<T>(), ptr<T>(h0), mut<T>(state_a), mut<T>(state_b),
                           zbuf, ptr<T>(sbuf), [&](int64_t k, int64_t l, const T* prev, T* next) {
                             DeepStepFwd<T> q{};
                             static_cast<StepAt&>(q) = StepAt{B, H, k, s.T, !tanh, reverse};
                             q.first = l == 0;
                             q.top = l == s.L - 1;
                             q.z = ptr<T>(zbuf);
                             q.bias = bias.p ? bias.get<T>() + l * H : nullptr;
                             q.p_all = ptr<T>(p);
                             q.alpha = alpha.get<T>();
                             q.hprev = prev;
                             q.s_all = mut<T>(st) + l * TBH;
                             q.s_next = mut<T>(sbuf);
                             q.h_all = mut<T>(h);
                             q.h_next = next;
                             q.lengths = lens.p;
                             dev.step(q);
                           });
    });
  }
  const ScalarType dtype = p_in.scalar_type();
  return {as_dtype(h, dtype), as_dtype(st, dtype)};
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> loop_bwd(
    Tensor grad_h, Tensor w_in, Tensor h_in, Tensor s_in, std::optional<Tensor> h0_in,
    std::optional<Tensor> ws_in, std::optional<Tensor> alpha_in, std::string nonlinearity, bool reverse,
    std::optional<Tensor> lengths) {
  const char* op = Dev::kBwdName;
  const Shape s = check_args(op, "h", h_in, w_in, h0_in, std::nullopt, ws_in, alpha_in, Dev::kDevice);
  const bool tanh = parse_tanh(nonlinearity, op);
  check_lengths(op, lengths, s.B, h_in.device());
  check_like(op, "grad_h", grad_h, h_in.sizes(), h_in);
  check_like(op, "s", s_in, {s.L, s.T, s.B, s.H}, h_in);
  const Tensor h = compute(h_in), w = compute(w_in), sv = compute(s_in), g = compute(grad_h);
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(h, {s.B, s.H});
  const Opt ws(ws_in, w), alpha(alpha_in, w);
  const gpu_loop::Lengths lens(lengths, w);
  // e^1 = dp on its own, so dp is not a view keeping the other sub-layers' e alive
  Tensor dp = torch::stable::empty_like(h);
  const Tensor e_rest = torch::stable::new_empty(h, {std::max<int64_t>(s.L - 1, 1), s.T, s.B, s.H});
  const Tensor hprev = torch::stable::empty_like(h);
  Tensor dh0 = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor dw = torch::stable::new_zeros(h, {s.L, s.H, s.H});
  Tensor db = torch::stable::new_zeros(h, {s.L, s.H});
  Tensor dws = ws_in ? torch::stable::new_zeros(h, {s.H, s.H}) : torch::stable::new_empty(w_in, {0});
  const Tensor da = alpha_in ? torch::stable::new_zeros(h, {s.B, s.H}) : dh0;
  if (s.B > 0 && s.H > 0) {
    Dev dev(h);
    const Tensor carry_a = torch::stable::new_zeros(h, {s.B, s.H});
    const Tensor carry_b = torch::stable::new_empty(h, {s.B, s.H});
    const Tensor ebuf = torch::stable::new_empty(h, {s.B, s.H});
    const Tensor dsbuf = torch::stable::new_empty(h, {s.B, s.H});
    dispatch_compute(h.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, HH = H * H, TBH = s.T * B * H, TB = s.T * B;
      const T* wp = ptr<T>(w);
      auto e_of = [&](int64_t l) { return l == 0 ? mut<T>(dp) : mut<T>(e_rest) + (l - 1) * TBH; };
      DeepPersistBwd<T> pq{};
      static_cast<PersistShape&>(pq) = PersistShape{B, H, s.L, s.T, !tanh, reverse};
      pq.g_all = ptr<T>(g);
      pq.w = wp;
      pq.ws = ws.get<T>();
      pq.alpha = alpha.get<T>();
      pq.h_all = ptr<T>(h);
      pq.s_all = ptr<T>(sv);
      pq.h0 = ptr<T>(h0);
      pq.dp = mut<T>(dp);
      pq.e_rest = mut<T>(e_rest);
      pq.hprev_all = mut<T>(hprev);
      pq.dh0 = mut<T>(dh0);
      pq.da = alpha.p ? mut<T>(da) : nullptr;
      pq.carry[0] = mut<T>(carry_a);
      pq.carry[1] = mut<T>(carry_b);
      pq.ebuf[0] = mut<T>(ebuf);
      pq.ebuf[1] = mut<T>(dsbuf);
      pq.lengths = lens.p;
      if (!dev.persistent(pq)) {
        auto top_step = [&](int64_t k, const T* in, T* out) {
          DeepStepBwdTop<T> q{};
          static_cast<StepAt&>(q) = StepAt{B, H, k, s.T, !tanh, reverse};
          q.g_all = ptr<T>(g);
          q.carry_in = in;
          q.s_all = ptr<T>(sv) + (s.L - 1) * TBH;
          q.h_all = ptr<T>(h);
          q.h0 = ptr<T>(h0);
          q.alpha = alpha.get<T>();
          q.e_all = e_of(s.L - 1);
          q.e_next = mut<T>(ebuf);
          q.carry_out = out;
          q.hprev_all = mut<T>(hprev);
          q.da = alpha.p ? mut<T>(da) : nullptr;
          q.lengths = lens.p;
          dev.step(q);
        };
        auto lower_step = [&](int64_t k, int64_t l, const T* ds) {
          DeepStepBwdLower<T> r{};
          static_cast<StepAt&>(r) = StepAt{B, H, k, s.T, !tanh, reverse};
          r.ds = ds;
          r.s_all = ptr<T>(sv) + l * TBH;
          r.e_all = e_of(l);
          r.e_next = mut<T>(ebuf);
          r.lengths = lens.p;
          dev.step(r);
        };
        schedule::backward<T>(dev, h, s.T, s.L, B, H, wp, ws.get<T>(), mut<T>(carry_a), mut<T>(carry_b),
                              mut<T>(dh0), ptr<T>(ebuf), mut<T>(dsbuf), top_step, lower_step);
      }
      // weight and bias gradients: one GEMM / column sum each over all (T, B) rows
      auto rows = [&](const T* base) { return view(h, base, TB, H, H); };
      const std::vector<int64_t> dim0{0};
      for (int64_t l = 0; l < s.L; ++l) {
        const T* lower = l == 0 ? ptr<T>(hprev) : ptr<T>(sv) + (l - 1) * TBH;
        dev.mm(view(h, mut<T>(dw) + l * HH, H, H, H), tr(rows(e_of(l))), rows(lower));
        Tensor db_l = torch::stable::select(db, 0, l);
        torch::stable::copy_(db_l, torch::stable::sum(rows(e_of(l)), dim0));
      }
      if (ws.p) dev.mm(view(h, mut<T>(dws), H, H, H), tr(rows(e_of(s.L - 1))), rows(ptr<T>(hprev)));
    });
  }
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  Tensor dalpha = torch::stable::new_empty(w_in, {0});
  if (alpha_in) dalpha = out(torch::stable::sum(da, std::vector<int64_t>{0}));
  return {out(dp), out(dw), out(db), out(dh0), ws_in ? out(dws) : dws, dalpha};
}

}  // namespace loop
HIDDEN_NAMESPACE_END(mts, deep)
