#pragma once
// The GPU time loop of the clockwork recurrence (the math in
// clockwork_rnn_cpu.cpp's header comment), templated on a device policy Dev:
// clockwork_rnn_cuda.cpp's (cuBLAS, the kernels of clockwork_rnn_cuda_step.cu)
// registers it for CUDA; clockwork_rnn_emulate_cpu.cpp's (CPU GEMMs, the same
// per-element bodies in a loop) runs this very loop on the host, so the CPU test
// suite checks its schedule, views, carries and weight gradients.
//
// Dev: a csrc/gpu_loop.h GEMM policy (kDevice, Dev(like), mm, addmm) with kFwdName,
// kBwdName, unit_modules(mods, H, mod) and step(ClockworkStepFwd<T>) /
// step(ClockworkStepBwd<T>).
//
// The clock is known on the host, so the loop issues exactly the schedule's work
// on the current stream with no host synchronisation (CUDA-graph capturable):
//  * forward step t: for each active module m one cuBLAS GEMM of its rows over
//    its blocks j >= m only, z[:, lo_m:hi_m] = h(t-1)[:, lo_m:] W[lo_m:hi_m, lo_m:]^T
//    (strided views, leading dimension H, nothing packed), then one pointwise
//    kernel over all units (clockwork_rnn_cuda_step.cu): active units update,
//    inactive ones hold;
//  * backward step t (T-1 down to 0): one pointwise kernel (e, and the hold /
//    leak part of dL/dh(t-1)), then per active module carry[:, lo_m:] +=
//    e[:, lo_m:hi_m] W[lo_m:hi_m, lo_m:];
//  * dW block row m after the loop: one GEMM over all steps,
//    e[:, :, lo_m:hi_m]^T h(t-1)[:, :, lo_m:] (+ the h0 term): e is 0 at the
//    module's inactive steps, so this reads strided views instead of packing the
//    active steps, at the price of the (T_m - 1)/T_m of its multiply-adds that
//    meet zeros; dalpha is a column sum of per-element terms the kernel
//    accumulated.
// float16/bfloat16 run in float32 (state and accumulation), stored in the input
// dtype; float64 runs in float64 (the "cuda" backend of the Python API sends
// float64 to Triton, this op itself takes it). At most kMaxCudaModules modules
// (the per-step active mask is one 64-bit word); the Python API takes the
// decomposition beyond that. Lengths stay on the device: ended rows run through
// the GEMMs and the pointwise kernels write their zeros.
//
// Before the step loop each direction offers the whole time loop to
// dev.persistent(q) (clockwork_persistent.h: one launch, W on chip, the clock
// evaluated on the device, the same per-element bodies and buffers); it
// returns whether it ran it. The weight-gradient GEMMs are the same either way.
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../gpu_loop.h"
#include "../lengths.h"
#include "../rnn/leaky_rnn_impl.h"
#include "clockwork_args.h"
#include "clockwork_persistent.h"
#include "clockwork_step.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace loop {

using ::mts::rnn::as_dtype;
using ::mts::rnn::compute;
using ::mts::rnn::dispatch_compute;

using gpu_loop::tr;
using gpu_loop::view;

// The schedule as the loops and the persistent kernel read it (by value; the
// per-step active masks: active_at).
inline ClockworkClock device_clock(const Clock& c, int64_t H) {
  ClockworkClock d{};
  d.g = c.g;
  for (int64_t m = 0; m < c.g; ++m) {
    d.lo[m] = c.lo[m];
    d.period[m] = c.period[m];
    d.first[m] = c.first[m];
  }
  d.lo[c.g] = H;
  return d;
}

// mod[j] on the host, for the test hooks' policies (what
// clockwork_unit_modules_cuda computes on the device).
inline void host_unit_modules(const ClockworkCudaModules& mods, int64_t H, int32_t* mod, const char* op) {
  MTS_CHECK(modules_valid(mods, H), op, ": invalid module boundaries");
  for (int64_t j = 0; j < H; ++j) mod[j] = module_of(mods, j);
}

// The per-unit module index on the device (once per call).
template <class Dev>
Tensor unit_modules(Dev& dev, const ClockworkCudaModules& mods, const Tensor& like, int64_t H) {
  Tensor mod = torch::stable::new_empty(like, {H}, ScalarType::Int);
  dev.unit_modules(mods, H, mut<int32_t>(mod));
  return mod;
}

inline Clock cuda_clock(const Shape& s, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& periods, const std::vector<int64_t>& firsts,
                        const char* op) {
  Clock c = make_clock(s.T, s.H, sizes, periods, firsts, op);
  MTS_CHECK(c.g <= kMaxCudaModules, op, ": the GPU loop takes at most ", kMaxCudaModules,
            " modules, got ", c.g, " (mts_kernels.clockwork_rnn takes the decomposition then)");
  return c;
}

// The operands both directions share, in the compute dtype and contiguous
// (like: p or h, already so).
struct Operands {
  bool tanh;
  Clock clock;
  ClockworkClock dclock;  // the same, as the device reads it
  Tensor w, h0;
  gpu_loop::Opt alpha;
  gpu_loop::Lengths lens;
  Operands(const char* op, const Shape& s, const Tensor& like, const Tensor& w_in,
           const std::optional<Tensor>& h0_in, const std::optional<Tensor>& alpha_in,
           const std::vector<int64_t>& module_sizes, const std::vector<int64_t>& periods,
           const std::vector<int64_t>& first_steps, const std::string& nonlinearity,
           const std::optional<Tensor>& lengths)
      : tanh(parse_tanh(nonlinearity, op)),
        clock(cuda_clock(s, module_sizes, periods, first_steps, op)),
        dclock(device_clock(clock, s.H)),
        w(compute(w_in)),
        h0(h0_in ? compute(*h0_in) : torch::stable::new_zeros(like, {s.B, s.H})),
        alpha(alpha_in, w),
        lens((check_lengths(op, lengths, s.B, like.device()), lengths), w) {}
};

template <typename T>
CwPersistCommon<T> persist_common(const Shape& s, const Operands& o, const Tensor& mod) {
  CwPersistCommon<T> c{};
  c.B = s.B;
  c.H = s.H;
  c.Tn = s.T;
  c.relu = !o.tanh;
  c.mod = ptr<int32_t>(mod);
  c.w = ptr<T>(o.w);
  c.alpha = o.alpha.get<T>();
  c.lengths = o.lens.p;
  c.clock = o.dclock;
  return c;
}

template <class Dev>
std::tuple<Tensor, Tensor> loop_fwd(Tensor p_in, Tensor w_in, std::optional<Tensor> h0_in,
                                    std::optional<Tensor> alpha_in, std::vector<int64_t> module_sizes,
                                    std::vector<int64_t> periods, std::vector<int64_t> first_steps,
                                    std::string nonlinearity, std::optional<Tensor> lengths) {
  const char* op = Dev::kFwdName;
  const Shape s = check_args(op, "p", p_in, w_in, h0_in, alpha_in, Dev::kDevice);
  const Tensor p = compute(p_in);
  const Operands o(op, s, p, w_in, h0_in, alpha_in, module_sizes, periods, first_steps, nonlinearity,
                   lengths);
  const bool tanh = o.tanh;
  const Clock& clock = o.clock;
  const Tensor &w = o.w, &h0 = o.h0;
  const void* alpha_p = o.alpha.p;
  const int64_t* lens_p = o.lens.p;
  Tensor h = torch::stable::empty_like(p);
  const Tensor u = alpha_in ? torch::stable::empty_like(p) : h;
  if (s.B > 0) {
    Dev dev(p);
    const Tensor mod = unit_modules(dev, o.dclock, p, s.H);
    const Tensor zbuf = torch::stable::new_empty(p, {s.B, s.H});
    dispatch_compute(p.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, BH = B * H;
      const T* wp = ptr<T>(w);
      T* hp = mut<T>(h);
      CwPersistFwd<T> pq{};
      static_cast<CwPersistCommon<T>&>(pq) = persist_common<T>(s, o, mod);
      pq.h0 = ptr<T>(h0);
      pq.p_all = ptr<T>(p);
      pq.h_all = hp;
      pq.u_all = alpha_in ? mut<T>(u) : nullptr;
      if (dev.persistent(pq)) return;
      for (int64_t t = 0; t < s.T; ++t) {
        const T* prev = t > 0 ? hp + (t - 1) * BH : ptr<T>(h0);
        const uint64_t active = active_at(o.dclock, t);
        for (int64_t m = 0; m < clock.g; ++m) {
          if (!((active >> m) & 1u)) continue;
          const int64_t lo = clock.lo[m], k = clock.k[m], K = H - lo;
          dev.mm(view(p, mut<T>(zbuf) + lo, B, k, H), view(p, prev + lo, B, K, H),
             tr(view(p, wp + lo * H + lo, k, K, H)));
        }
        ClockworkStepFwd<T> q{};
        q.B = B;
        q.H = H;
        q.t = t;
        q.Tn = s.T;
        q.relu = !tanh;
        q.active = active;
        q.mod = ptr<int32_t>(mod);
        q.alpha = static_cast<const T*>(alpha_p);
        q.prev = prev;
        q.zrow = ptr<T>(zbuf);
        q.p = ptr<T>(p) + t * BH;
        q.h = hp + t * BH;
        q.u = alpha_in ? mut<T>(u) + t * BH : nullptr;
        q.lengths = lens_p;
        dev.step(q);
      }
    });
  }
  const ScalarType dtype = p_in.scalar_type();
  return {as_dtype(h, dtype), alpha_in ? as_dtype(u, dtype) : torch::stable::new_empty(p_in, {0})};
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor> loop_bwd(
    Tensor grad_h, Tensor w_in, Tensor h_in, Tensor u_in, std::optional<Tensor> h0_in,
    std::optional<Tensor> alpha_in, std::vector<int64_t> module_sizes, std::vector<int64_t> periods,
    std::vector<int64_t> first_steps, std::string nonlinearity, std::optional<Tensor> lengths) {
  const char* op = Dev::kBwdName;
  const Shape s = check_args(op, "h", h_in, w_in, h0_in, alpha_in, Dev::kDevice);
  check_like_h(op, h_in, grad_h, u_in, alpha_in.has_value());
  const Tensor h = compute(h_in), g = compute(grad_h);
  const Tensor u = alpha_in ? compute(u_in) : h;
  const Operands o(op, s, h, w_in, h0_in, alpha_in, module_sizes, periods, first_steps, nonlinearity,
                   lengths);
  const bool tanh = o.tanh;
  const Clock& clock = o.clock;
  const Tensor &w = o.w, &h0 = o.h0;
  const void* alpha_p = o.alpha.p;
  const int64_t* lens_p = o.lens.p;
  Tensor e = torch::stable::empty_like(h);
  Tensor dh0 = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor dw = torch::stable::new_zeros(h, {s.H, s.H});
  const Tensor da = alpha_in ? torch::stable::new_zeros(h, {s.B, s.H}) : dh0;
  if (s.B > 0) {
    Dev dev(h);
    const Tensor mod = unit_modules(dev, o.dclock, h, s.H);
    // the carry into h(t) (from step t + 1) and out of step t, ping-ponged; the
    // last one out (step 0's) is dh0
    const Tensor carry_a = torch::stable::new_zeros(h, {s.B, s.H});
    const Tensor carry_b = torch::stable::new_empty(h, {s.B, s.H});
    dispatch_compute(h.scalar_type(), op, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t B = s.B, H = s.H, BH = B * H;
      const T* wp = ptr<T>(w);
      const T* hp = ptr<T>(h);
      T* ep = mut<T>(e);
      T* in = mut<T>(carry_a);
      T* spare = mut<T>(carry_b);
      CwPersistBwd<T> pq{};
      static_cast<CwPersistCommon<T>&>(pq) = persist_common<T>(s, o, mod);
      pq.g_all = ptr<T>(g);
      pq.u_all = ptr<T>(u);
      pq.h_all = hp;
      pq.h0 = ptr<T>(h0);
      pq.e_all = ep;
      pq.dh0 = mut<T>(dh0);
      pq.da = alpha_in ? mut<T>(da) : nullptr;
      pq.carry[0] = in;
      pq.carry[1] = spare;
      const bool ran = dev.persistent(pq);
      for (int64_t t = s.T - 1; t >= 0 && !ran; --t) {
        T* out = t > 0 ? spare : mut<T>(dh0);
        const uint64_t active = active_at(o.dclock, t);
        ClockworkStepBwd<T> q{};
        q.B = B;
        q.H = H;
        q.t = t;
        q.Tn = s.T;
        q.relu = !tanh;
        q.active = active;
        q.mod = ptr<int32_t>(mod);
        q.alpha = static_cast<const T*>(alpha_p);
        q.g = ptr<T>(g) + t * BH;
        q.carry_in = in;
        q.u = ptr<T>(u) + t * BH;
        q.prev = t > 0 ? hp + (t - 1) * BH : ptr<T>(h0);
        q.e = ep + t * BH;
        q.carry_out = out;
        q.da = alpha_in ? mut<T>(da) : nullptr;
        q.lengths = lens_p;
        dev.step(q);
        for (int64_t m = 0; m < clock.g; ++m) {
          if (!((active >> m) & 1u)) continue;
          const int64_t lo = clock.lo[m], k = clock.k[m], K = H - lo;
          dev.addmm(view(h, out + lo, B, K, H), view(h, ep + t * BH + lo, B, k, H),
                view(h, wp + lo * H + lo, k, K, H));
        }
        spare = in;
        in = out;
      }
      // dW block rows: e(t)^T h(t-1) over t >= 1 in one GEMM, plus e(0)^T h0
      for (int64_t m = 0; m < clock.g; ++m) {
        if (clock.first[m] >= s.T) continue;  // never active: its block row stays 0
        const int64_t lo = clock.lo[m], k = clock.k[m], K = H - lo;
        const Tensor block = view(h, mut<T>(dw) + lo * H + lo, k, K, H);
        if (s.T > 1)
          dev.mm(block, tr(view(h, ep + BH + lo, (s.T - 1) * B, k, H)), view(h, hp + lo, (s.T - 1) * B, K, H));
        if (h0_in && clock.first[m] == 0)
          dev.addmm(block, tr(view(h, ep + lo, B, k, H)), view(h, ptr<T>(h0) + lo, B, K, H));
      }
    });
  }
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  Tensor dalpha = torch::stable::new_empty(w_in, {0});
  if (alpha_in) dalpha = out(torch::stable::sum(da, std::vector<int64_t>{0}));
  return {out(e), out(dw), out(dh0), dalpha};
}

}  // namespace loop
HIDDEN_NAMESPACE_END(mts, clockwork)
