#pragma once
// Fused forward and backward of one layer and direction of the dense leaky
// recurrence: the checks, operand preparation and weight-gradient GEMMs shared by
// the CPU and CUDA registrations, around a time-loop policy (Loop below):
//
//   z_t = p_t + W_hh h_{t-d} [+ W_skip h_{t-s}],   u_t = phi(z_t)
//   h_t = alpha * h_{t-d} + (1 - alpha) * u_t        (alpha None: h_t = u_t)
//
// p_t already holds W_ih x_t + b_ih + b_hh (one large GEMM before the loop, by the
// caller). The time loop runs in C++ (the Loop): one product per step (two with
// skip) and fused pointwise work, no host synchronisation (CUDA-graph capturable).
// Backward (DESIGN-NOTES §3), with delta_t = dL/dh_t accumulated in place:
//   e_t = (1 - alpha) * phi'(z_t) * delta_t              (= dL/dp_t)
//   delta_{t-d} += alpha * delta_t + W_hh^T e_t,  delta_{t-s} += W_skip^T e_t
//   dW_hh = sum_t e_t h_{t-d}^T,  dW_skip = sum_t e_t h_{t-s}^T   (one GEMM each, after)
//   dalpha = sum_{t,b} delta_t * (h_{t-d} - u_t)
// A delay reaching before the sequence start lands in dh0 (h_tau = h0, tau <= 0).
// float16/bfloat16 run in float32 (state and accumulation), stored in the input dtype.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

namespace mts {
namespace rnn {

enum class Phi { kTanh, kRelu };

inline Phi parse_phi(const std::string& s) {
  TORCH_CHECK(s == "tanh" || s == "relu",
              "leaky_rnn: nonlinearity must be 'tanh' or 'relu', got '", s, "'");
  return s == "tanh" ? Phi::kTanh : Phi::kRelu;
}

struct Shape {
  int64_t T, B, H;
};

inline Shape check_args(const at::Tensor& p, const at::Tensor& w,
                        const c10::optional<at::Tensor>& h0,
                        const c10::optional<at::Tensor>& alpha,
                        const c10::optional<at::Tensor>& w_skip, int64_t skip, int64_t dilation) {
  TORCH_CHECK(p.dim() == 3, "leaky_rnn: p must be 3-D (T, B, H), got shape ", p.sizes());
  TORCH_CHECK(at::isFloatingType(p.scalar_type()), "leaky_rnn: p must be floating point, got ",
              p.scalar_type());
  const int64_t T = p.size(0), B = p.size(1), H = p.size(2);
  TORCH_CHECK(T > 0, "leaky_rnn: p needs at least one time step");
  auto same = [&](const at::Tensor& t, const char* name, at::IntArrayRef shape) {
    TORCH_CHECK(t.sizes() == shape, "leaky_rnn: ", name, " must have shape ", shape, ", got ",
                t.sizes());
    TORCH_CHECK(t.scalar_type() == p.scalar_type() && t.device() == p.device(), "leaky_rnn: ",
                name, " must be ", p.scalar_type(), " on ", p.device(), ", got ", t.scalar_type(),
                " on ", t.device());
  };
  same(w, "weight_hh", {H, H});
  if (h0) same(*h0, "h0", {B, H});
  if (alpha) same(*alpha, "alpha", {H});
  TORCH_CHECK(dilation >= 1, "leaky_rnn: dilation must be >= 1, got ", dilation);
  TORCH_CHECK(skip >= 0, "leaky_rnn: skip must be >= 1 (or 0 for none), got ", skip);
  TORCH_CHECK((skip > 0) == w_skip.has_value(),
              "leaky_rnn: weight_skip must be given exactly when skip > 0");
  if (w_skip) same(*w_skip, "weight_skip", {H, H});
  return {T, B, H};
}

// The dtype the recurrence runs in: float32 for float16/bfloat16 inputs.
inline at::Tensor compute(const at::Tensor& t) {
  return t.to(at::toOpMathType(t.scalar_type()));
}
inline at::Tensor compute(const c10::optional<at::Tensor>& t) {
  return t ? compute(*t) : at::Tensor();
}

// Time index of processing step k.
inline int64_t time_of(int64_t k, int64_t T, bool reverse) { return reverse ? T - 1 - k : k; }

// For each time t, the state `delay` processing steps back (h0 before the start),
// in time order: the right-hand operand of the weight-gradient GEMMs.
inline at::Tensor delayed(const at::Tensor& h, const at::Tensor& h0, int64_t delay, bool reverse) {
  const int64_t T = h.size(0);
  const int64_t n0 = std::min(delay, T);
  at::Tensor pad = h0.unsqueeze(0).expand({n0, h.size(1), h.size(2)});
  if (n0 == T) return pad.contiguous();
  return reverse ? at::cat({h.slice(0, delay), pad}) : at::cat({pad, h.slice(0, 0, T - delay)});
}

// sum_t e_t^T h_{t-delay} (h0 before the start) without materialising the
// delayed copy of h: one GEMM over the steps that read h, plus (sum of the
// remaining e_t)^T h0.
inline at::Tensor delayed_gram(const at::Tensor& e, const at::Tensor& h, const at::Tensor& h0,
                               bool has_h0, int64_t delay, bool reverse) {
  const int64_t T = h.size(0), B = h.size(1), H = h.size(2);
  const int64_t n = std::max<int64_t>(T - delay, 0), n0 = T - n;
  at::Tensor e_main = reverse ? e.slice(0, 0, n) : e.slice(0, n0);
  at::Tensor h_main = reverse ? h.slice(0, delay) : h.slice(0, 0, n);
  at::Tensor e_start = reverse ? e.slice(0, n) : e.slice(0, 0, n0);
  const at::Tensor e2 = e_main.reshape({n * B, H}).t(), h2 = h_main.reshape({n * B, H});
  if (!has_h0) return n > 0 ? e2.mm(h2) : at::zeros({H, H}, e.options());  // h0 = 0
  at::Tensor out = e_start.sum(0).t().mm(h0);
  if (n > 0) out.addmm_(e2, h2);
  return out;
}

// Operands of one call, in the compute dtype (float32 for float16/bfloat16),
// contiguous (T, B, H) / (B, H) / (H, H), with the time loop left to a Loop policy.
struct Problem {
  Shape s;
  Phi phi;
  int64_t skip, dilation;
  bool reverse, leak;
  at::Tensor w, w_skip, h0, alpha;  // w_skip / alpha undefined when absent
};

inline Problem make_problem(const Shape& s, c10::string_view nonlinearity, const at::Tensor& w_in,
                            const c10::optional<at::Tensor>& h0_in,
                            const c10::optional<at::Tensor>& alpha_in,
                            const c10::optional<at::Tensor>& w_skip_in, int64_t skip,
                            int64_t dilation, bool reverse, const at::TensorOptions& opts) {
  Problem pr{s, parse_phi(std::string(nonlinearity)), skip, dilation, reverse,
             alpha_in.has_value(), compute(w_in).contiguous(), compute(w_skip_in), {}, {}};
  if (pr.w_skip.defined()) pr.w_skip = pr.w_skip.contiguous();
  pr.h0 = h0_in ? compute(*h0_in).contiguous() : at::zeros({s.B, s.H}, opts);
  if (pr.leak) pr.alpha = compute(*alpha_in).contiguous();
  return pr;
}

// What a Loop policy may leave out (it inherits these defaults):
//   empty_like(t)  allocates the (T, B, H) outputs;
//   kDirectBwd     false: the caller copies grad_h into delta, which
//                  Loop::bwd(pr, u, delta, e_all, dh0) completes in place; true:
//                  Loop::bwd_direct(pr, grad_h, h, u, e_all, dh0, dalpha) runs the
//                  whole backward loop from grad_h and also fills dalpha.
struct LoopDefaults {
  static constexpr bool kDirectBwd = false;
  static at::Tensor empty_like(const at::Tensor& t) { return at::empty_like(t); }
};

// Loop: a policy deriving from LoopDefaults with a static fwd(pr, p, h, u) filling h
// (and u when leaky) from p, and bwd or bwd_direct as LoopDefaults describes:
// CpuLoop (leaky_rnn_cpu.cpp), CudaLoop (leaky_rnn_cuda.cpp).
template <class Loop>
std::tuple<at::Tensor, at::Tensor> leaky_rnn_fwd(
    const at::Tensor& p_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& h0_in,
    const c10::optional<at::Tensor>& alpha_in, const c10::optional<at::Tensor>& w_skip_in,
    int64_t skip, int64_t dilation, c10::string_view nonlinearity, bool reverse) {
  const Shape s = check_args(p_in, w_in, h0_in, alpha_in, w_skip_in, skip, dilation);
  const at::Tensor p = compute(p_in).contiguous();
  const Problem pr = make_problem(s, nonlinearity, w_in, h0_in, alpha_in, w_skip_in, skip,
                                  dilation, reverse, p.options());
  at::Tensor h = Loop::empty_like(p);
  at::Tensor u = pr.leak ? Loop::empty_like(p) : at::Tensor();
  Loop::fwd(pr, p, h, u);
  const auto dtype = p_in.scalar_type();
  return {h.to(dtype), pr.leak ? u.to(dtype) : at::empty({0}, p_in.options())};
}

template <class Loop>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> leaky_rnn_bwd(
    const at::Tensor& grad_h, const at::Tensor& w_in, const at::Tensor& h_in,
    const at::Tensor& u_in, const c10::optional<at::Tensor>& h0_in,
    const c10::optional<at::Tensor>& alpha_in, const c10::optional<at::Tensor>& w_skip_in,
    int64_t skip, int64_t dilation, c10::string_view nonlinearity, bool reverse) {
  const Shape s = check_args(h_in, w_in, h0_in, alpha_in, w_skip_in, skip, dilation);
  TORCH_CHECK(grad_h.sizes() == h_in.sizes(), "leaky_rnn_bwd: grad_h must have shape ",
              h_in.sizes(), ", got ", grad_h.sizes());
  TORCH_CHECK(!alpha_in.has_value() || u_in.sizes() == h_in.sizes(),
              "leaky_rnn_bwd: u must have shape ", h_in.sizes(), " when alpha is given, got ",
              u_in.sizes());
  const at::Tensor h = compute(h_in).contiguous();
  const Problem pr = make_problem(s, nonlinearity, w_in, h0_in, alpha_in, w_skip_in, skip,
                                  dilation, reverse, h.options());
  const at::Tensor u = pr.leak ? compute(u_in).contiguous() : h;
  at::Tensor dh0 = at::zeros({s.B, s.H}, h.options());
  at::Tensor e_all = Loop::empty_like(h);
  at::Tensor dalpha;
  const at::Tensor g = compute(grad_h).contiguous();
  if constexpr (Loop::kDirectBwd) {
    Loop::bwd_direct(pr, g, h, u, e_all, dh0, dalpha);
  } else {
    // delta_t, completed in place as later steps are processed (a private copy).
    at::Tensor delta = g.is_same(grad_h) ? g.clone() : g;
    Loop::bwd(pr, u, delta, e_all, dh0);
    if (pr.leak) dalpha = (delta * (delayed(h, pr.h0, dilation, reverse) - u)).sum({0, 1});
  }
  if (!pr.leak) dalpha = at::empty({0}, w_in.options());
  // Weight gradients: one large GEMM each over all steps.
  at::Tensor dw = delayed_gram(e_all, h, pr.h0, h0_in.has_value(), dilation, reverse);
  at::Tensor dw_skip = skip > 0 ? delayed_gram(e_all, h, pr.h0, h0_in.has_value(), skip, reverse)
                                : at::empty({0}, w_in.options());
  const auto dtype = h_in.scalar_type();
  return {e_all.to(dtype), dw.to(dtype), dh0.to(dtype), dalpha.to(dtype), dw_skip.to(dtype)};
}

template <class Loop>
void register_impls(torch::Library& m) {
  m.impl("leaky_rnn_fwd", &leaky_rnn_fwd<Loop>);
  m.impl("leaky_rnn_bwd", &leaky_rnn_bwd<Loop>);
}

}  // namespace rnn
}  // namespace mts
