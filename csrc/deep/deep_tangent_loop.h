#pragma once
// deep_transition_rnn_tangent: the sequential part of the deep-transition
// recurrence's tangent (its math in deep_tangent_step.h; the primal-driven part
// is GEMMs over all steps in Python, ops/deep_transition_rnn.py _tangent), and
// its adjoint, deep_transition_rnn_tangent_bwd, which is the tangent op's
// registered gradient, so a second order of deep_transition_rnn is no autograd
// through a step loop. One loop for every device, templated on a csrc/gpu_loop.h
// GEMM policy with step(q) for the three structs of deep_tangent_step.h:
// deep_transition_rnn_tangent_cpu.cpp (CPU BLAS, the per-element bodies in a
// loop) and deep_transition_rnn_tangent_cuda.cpp (cuBLAS and the kernels of
// deep_transition_rnn_tangent_cuda_step.cu) register it.
//
// Per step L GEMMs (plus the shortcut's) and L pointwise passes (the schedule
// of deep_schedule.h, shared with deep_loop.h), each row at its own time (reverse with lengths needs no repacking), no host synchronisation;
// the adjoint's weight gradients are single GEMMs over all (T, B) rows after its
// loop. Outputs: h (T, B, H) and a (L, T, B, H), the pre-gain products the
// adjoint reads (0 at padded times).
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../gpu_loop.h"
#include "../lengths.h"
#include "../rnn/leaky_rnn_impl.h"
#include "deep_schedule.h"
#include "deep_tangent_step.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace tangent {

using gpu_loop::Opt;
using gpu_loop::tr;
using gpu_loop::view;
using ::mts::rnn::as_dtype;
using ::mts::rnn::compute;
using ::mts::rnn::dispatch_compute;

struct Dims {
  int64_t T, B, H, L;
};

inline Dims check(const char* op, const Tensor& drive, const Tensor& gains, const Tensor& w,
                  const std::optional<Tensor>& keep, const std::optional<Tensor>& ws,
                  const std::optional<Tensor>& start, const std::optional<Tensor>& lengths,
                  torch::headeronly::DeviceType device) {
  const auto [T, B, H] = check_sequence(op, "drive", drive, device);
  MTS_CHECK(w.dim() == 3 && w.size(0) >= 1, op, ": weight_hh must be 3-D (L, H, H) with L >= 1, got shape ",
            shape_str(w.sizes()));
  const int64_t L = w.size(0);
  check_operand(op, "weight_hh", w, {L, H, H}, drive);
  check_operand(op, "gains", gains, {L, T, B, H}, drive);
  if (keep) check_operand(op, "keep", *keep, {H}, drive);
  if (ws) {
    MTS_CHECK(L >= 2, op, ": weight_shortcut needs a transition depth L >= 2, got L = ", L);
    check_operand(op, "weight_shortcut", *ws, {H, H}, drive);
  }
  if (start) check_operand(op, "start", *start, {B, H}, drive);
  check_lengths(op, lengths, B, drive.device());
  return {T, B, H, L};
}

template <class Dev>
std::tuple<Tensor, Tensor> fwd(Tensor drive_in, Tensor gains_in, Tensor w_in, std::optional<Tensor> keep_in,
                               std::optional<Tensor> ws_in, std::optional<Tensor> start_in, bool reverse,
                               std::optional<Tensor> lengths) {
  const char* op = "deep_transition_rnn_tangent";
  const Dims s = check(op, drive_in, gains_in, w_in, keep_in, ws_in, start_in, lengths, Dev::kDevice);
  const Tensor drive = compute(drive_in), gains = compute(gains_in), w = compute(w_in);
  const Tensor start = start_in ? compute(*start_in) : torch::stable::new_zeros(drive, {s.B, s.H});
  const Opt keep(keep_in, w), ws(ws_in, w);
  const gpu_loop::Lengths lens(lengths, w);
  Tensor h = torch::stable::empty_like(drive);
  Tensor a = torch::stable::new_empty(drive, {s.L, s.T, s.B, s.H});
  if (s.B > 0 && s.H > 0) {
    Dev dev(drive);
    const Tensor state_a = torch::stable::new_empty(drive, {s.B, s.H});
    const Tensor state_b = torch::stable::new_empty(drive, {s.B, s.H});
    const Tensor zbuf = torch::stable::new_empty(drive, {s.B, s.H});
    const Tensor xbuf = torch::stable::new_empty(drive, {s.B, s.H});
    dispatch_compute(drive.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, TBH = s.T * B * H;
      schedule::forward<T>(dev, drive, s.T, s.L, B, H, ptr<T>(w), ws.get<T>(), ptr<T>(start), mut<T>(state_a),
                           mut<T>(state_b), zbuf, ptr<T>(xbuf), [&](int64_t k, int64_t l, const T* prev, T* next) {
                             TanStepFwd<T> q{};
                             static_cast<StepAt&>(q) = StepAt{B, H, k, s.T, false, reverse};
                             q.top = l == s.L - 1;
                             q.z = ptr<T>(zbuf);
                             q.gain_all = ptr<T>(gains) + l * TBH;
                             q.drive_all = ptr<T>(drive);
                             q.keep = keep.get<T>();
                             q.hprev = prev;
                             q.a_all = mut<T>(a) + l * TBH;
                             q.x_next = mut<T>(xbuf);
                             q.h_all = mut<T>(h);
                             q.h_next = next;
                             q.lengths = lens.p;
                             dev.step(q);
                           });
    });
  }
  const ScalarType dtype = drive_in.scalar_type();
  return {as_dtype(h, dtype), as_dtype(a, dtype)};
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> bwd(
    Tensor grad_h, Tensor gains_in, Tensor w_in, std::optional<Tensor> keep_in, std::optional<Tensor> ws_in,
    std::optional<Tensor> start_in, Tensor h_in, Tensor a_in, bool reverse, std::optional<Tensor> lengths) {
  const char* op = "deep_transition_rnn_tangent_bwd";
  const Dims s = check(op, h_in, gains_in, w_in, keep_in, ws_in, start_in, lengths, Dev::kDevice);
  check_like(op, "grad_h", grad_h, h_in.sizes(), h_in);
  check_like(op, "a", a_in, {s.L, s.T, s.B, s.H}, h_in);
  const Tensor g = compute(grad_h), gains = compute(gains_in), w = compute(w_in), h = compute(h_in),
               a = compute(a_in);
  const Tensor start = start_in ? compute(*start_in) : torch::stable::new_zeros(h, {s.B, s.H});
  const Opt keep(keep_in, w), ws(ws_in, w);
  const gpu_loop::Lengths lens(lengths, w);
  Tensor ddrive = torch::stable::empty_like(h);
  Tensor dgains = torch::stable::new_empty(h, {s.L, s.T, s.B, s.H});
  const Tensor nu = torch::stable::new_empty(h, {s.L, s.T, s.B, s.H});
  const Tensor hprev = torch::stable::empty_like(h);
  Tensor dstart = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor dw = torch::stable::new_zeros(h, {s.L, s.H, s.H});
  Tensor dws = ws_in ? torch::stable::new_zeros(h, {s.H, s.H}) : torch::stable::new_empty(w_in, {0});
  const Tensor dkeep = keep_in ? torch::stable::new_zeros(h, {s.B, s.H}) : dstart;
  if (s.B > 0 && s.H > 0) {
    Dev dev(h);
    const Tensor carry_a = torch::stable::new_zeros(h, {s.B, s.H});
    const Tensor carry_b = torch::stable::new_empty(h, {s.B, s.H});
    const Tensor nubuf = torch::stable::new_empty(h, {s.B, s.H});
    const Tensor dsbuf = torch::stable::new_empty(h, {s.B, s.H});
    dispatch_compute(h.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, HH = H * H, TBH = s.T * B * H, TB = s.T * B;
      auto top_step = [&](int64_t k, const T* in, T* out) {
        TanStepBwdTop<T> q{};
        static_cast<StepAt&>(q) = StepAt{B, H, k, s.T, false, reverse};
        q.g_all = ptr<T>(g);
        q.carry_in = in;
        q.gain_all = ptr<T>(gains) + (s.L - 1) * TBH;
        q.a_all = ptr<T>(a) + (s.L - 1) * TBH;
        q.h_all = ptr<T>(h);
        q.start = ptr<T>(start);
        q.keep = keep.get<T>();
        q.ddrive_all = mut<T>(ddrive);
        q.dgain_all = mut<T>(dgains) + (s.L - 1) * TBH;
        q.nu_all = mut<T>(nu) + (s.L - 1) * TBH;
        q.nu_next = mut<T>(nubuf);
        q.carry_out = out;
        q.hprev_all = mut<T>(hprev);
        q.dkeep = keep.p ? mut<T>(dkeep) : nullptr;
        q.lengths = lens.p;
        dev.step(q);
      };
      auto lower_step = [&](int64_t k, int64_t l, const T* ds) {
        TanStepBwdLower<T> r{};
        static_cast<StepAt&>(r) = StepAt{B, H, k, s.T, false, reverse};
        r.ds = ds;
        r.gain_all = ptr<T>(gains) + l * TBH;
        r.a_all = ptr<T>(a) + l * TBH;
        r.dgain_all = mut<T>(dgains) + l * TBH;
        r.nu_all = mut<T>(nu) + l * TBH;
        r.nu_next = mut<T>(nubuf);
        r.lengths = lens.p;
        dev.step(r);
      };
      schedule::backward<T>(dev, h, s.T, s.L, B, H, ptr<T>(w), ws.get<T>(), mut<T>(carry_a), mut<T>(carry_b),
                            mut<T>(dstart), ptr<T>(nubuf), mut<T>(dsbuf), top_step, lower_step);
      // dW_1 = nu^1^T h_prev, dW_l = nu^l^T x^{l-1} (x = gain a), dU = nu^L^T h_prev:
      // one GEMM each over all (T, B) rows (everything is 0 at padded times)
      auto rows = [&](const T* base) { return view(h, base, TB, H, H); };
      for (int64_t l = 0; l < s.L; ++l) {
        Tensor lower = hprev;
        if (l > 0) {
          const Tensor gl = torch::stable::select(gains, 0, l - 1), al = torch::stable::select(a, 0, l - 1);
          lower = call_aten("aten::mul", "Tensor", gl, al);
        }
        dev.mm(view(h, mut<T>(dw) + l * HH, H, H, H), tr(rows(ptr<T>(nu) + l * TBH)), rows(ptr<T>(lower)));
      }
      if (ws.p) dev.mm(view(h, mut<T>(dws), H, H, H), tr(rows(ptr<T>(nu) + (s.L - 1) * TBH)), rows(ptr<T>(hprev)));
    });
  }
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  Tensor dk = torch::stable::new_empty(w_in, {0});
  if (keep_in) dk = out(torch::stable::sum(dkeep, std::vector<int64_t>{0}));
  return {out(ddrive), out(dgains), out(dw), dk, ws_in ? out(dws) : dws, out(dstart)};
}

}  // namespace tangent
HIDDEN_NAMESPACE_END(mts, deep)
