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
// Backward (DESIGN-NOTES §3), with delta_t = dL/dh_t:
//   e_t = (1 - alpha) * phi'(z_t) * delta_t              (= dL/dp_t)
//   delta_{t-d} += alpha * delta_t + W_hh^T e_t,  delta_{t-s} += W_skip^T e_t
//   dW_hh = sum_t e_t h_{t-d}^T,  dW_skip = sum_t e_t h_{t-s}^T   (one GEMM each, after)
//   dalpha = sum_{t,b} delta_t * (h_{t-d} - u_t)
// A delay reaching before the sequence start lands in dh0 (h_tau = h0, tau <= 0).
// float16/bfloat16 run in float32 (state and accumulation), stored in the input dtype.
// With lengths (csrc/lengths.h) row b runs its own L_b steps: processing step k is
// time k, or L_b - 1 - k with reverse; h, u, e = dp are 0 at t >= L_b and grad_h
// there is ignored. "The first d steps read h0" then means row b's first d
// processing steps, which with reverse are times [L_b - d, L_b).
//
// Written against torch's stable ABI only (csrc/stable_util.h).
#include <algorithm>
#include <optional>
#include <string>
#include <tuple>

#include "../lengths.h"
#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)

enum class Phi { kTanh, kRelu };

inline Phi parse_phi(const std::string& s) {
  MTS_CHECK(s == "tanh" || s == "relu",
            "leaky_rnn: nonlinearity must be 'tanh' or 'relu', got '", s, "'");
  return s == "tanh" ? Phi::kTanh : Phi::kRelu;
}

struct Shape {
  int64_t T, B, H;
};

inline Shape check_args(const Tensor& p, const Tensor& w, const std::optional<Tensor>& h0,
                        const std::optional<Tensor>& alpha, const std::optional<Tensor>& w_skip,
                        int64_t skip, int64_t dilation) {
  MTS_CHECK(p.dim() == 3, "leaky_rnn: p must be 3-D (T, B, H), got shape ",
            shape_str(p.sizes()));
  MTS_CHECK(is_kernel_float(p.scalar_type()), "leaky_rnn: p must be floating point, got ",
            torch::headeronly::toString(p.scalar_type()));
  const int64_t T = p.size(0), B = p.size(1), H = p.size(2);
  MTS_CHECK(T > 0, "leaky_rnn: p needs at least one time step");
  auto same = [&](const Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
    MTS_CHECK(same_sizes(t.sizes(), IntRef(shape)), "leaky_rnn: ", name, " must have shape ",
              shape_str(IntRef(shape)), ", got ", shape_str(t.sizes()));
    MTS_CHECK(t.scalar_type() == p.scalar_type() && t.device() == p.device(),
              "leaky_rnn: ", name, " must be ", torch::headeronly::toString(p.scalar_type()),
              " on ", device_str(p.device()), ", got ",
              torch::headeronly::toString(t.scalar_type()), " on ", device_str(t.device()));
  };
  same(w, "weight_hh", {H, H});
  if (h0) same(*h0, "h0", {B, H});
  if (alpha) same(*alpha, "alpha", {H});
  MTS_CHECK(dilation >= 1, "leaky_rnn: dilation must be >= 1, got ", dilation);
  MTS_CHECK(skip >= 0, "leaky_rnn: skip must be >= 1 (or 0 for none), got ", skip);
  MTS_CHECK((skip > 0) == w_skip.has_value(),
            "leaky_rnn: weight_skip must be given exactly when skip > 0");
  if (w_skip) same(*w_skip, "weight_skip", {H, H});
  return {T, B, H};
}

// t in `dtype`; t itself when it already is (every stable op is a dispatcher call).
inline Tensor as_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}

// The dtype the recurrence runs in (float32 for float16/bfloat16 inputs),
// contiguous; the tensor itself when it already is both.
inline Tensor compute(const Tensor& t) {
  return as_contiguous(as_dtype(t, opmath_dtype(t.scalar_type())));
}

// Time index of processing step k.
inline int64_t time_of(int64_t k, int64_t T, bool reverse) { return reverse ? T - 1 - k : k; }

// Rows [start, start + n) of dim 0.
inline Tensor rows(Tensor t, int64_t start, int64_t n) {
  return torch::stable::narrow(t, 0, start, n);
}

// a + b through the one binary op with a scalar factor the stable ops have
// (subtract: a - alpha * b).
inline Tensor add(const Tensor& a, const Tensor& b) { return torch::stable::subtract(a, b, -1.0); }

// Operands of one call, in the compute dtype (float32 for float16/bfloat16),
// contiguous (T, B, H) / (B, H) / (H, H), with the time loop left to a Loop policy.
struct Problem {
  Shape s;
  Phi phi;
  int64_t skip, dilation;
  bool reverse;
  Tensor w, h0;
  std::optional<Tensor> w_skip, alpha;  // none when absent
  std::optional<Tensor> lengths;        // (B,) int64, contiguous; none: all T steps
  bool leak() const { return alpha.has_value(); }
  // With reverse and lengths the steps reading h0 are not the same rows of every
  // (T, B, H) tensor (see delayed_gram, dalpha_of).
  bool ragged_start() const { return reverse && lengths.has_value(); }
};

inline Problem make_problem(const Shape& s, const std::string& nonlinearity, const Tensor& w_in,
                            const std::optional<Tensor>& h0_in,
                            const std::optional<Tensor>& alpha_in,
                            const std::optional<Tensor>& w_skip_in, int64_t skip,
                            int64_t dilation, bool reverse, const Tensor& like,
                            const std::optional<Tensor>& lengths) {
  // A delay of T or more reads h0 at every step, exactly as a delay of T does:
  // clamped here, so no ring, GEMM split or index below is ever sized by it (and
  // no k - delay can overflow).
  Problem pr{s, parse_phi(nonlinearity), std::min(skip, s.T), std::min(dilation, s.T), reverse,
             compute(w_in),
             h0_in ? compute(*h0_in) : torch::stable::new_zeros(like, {s.B, s.H}),
             std::nullopt, std::nullopt, std::nullopt};
  if (lengths) pr.lengths = as_contiguous(*lengths);
  if (w_skip_in) pr.w_skip = compute(*w_skip_in);
  if (alpha_in) pr.alpha = compute(*alpha_in);
  return pr;
}

// (n, B, H) -> (n * B, H)
inline Tensor flat_rows(const Tensor& t) { return torch::stable::reshape(t, {t.size(0) * t.size(1), t.size(2)}); }

// What a Loop policy may leave out (it inherits these defaults):
//   empty_like(t)  allocates the (T, B, H) outputs;
//   contiguous(t)  t.contiguous() (grad_h, which a loss like y.sum() expands);
//   gram(a, b)     a^T b of (K, M) and (K, N) matrices (the weight gradients);
//   step_gram(pr, e, h, delay)  sum_{t, b} e[t, b]^T h[t, b] of (n, B, H) views
//                  whose rows pair up (delayed_gram's steps that read h, h
//                  `delay` steps behind e; with lengths, pairs with a padded e
//                  are 0 and may be skipped: the valid ones are t < L_b - delay);
//   window_sum(pr, x, d)  (B, H): sum over row b's first d processing steps of
//                  x[t, b] (needed with lengths and reverse only);
//   kDirectBwd     false: the caller copies grad_h into delta, which
//                  Loop::bwd(pr, u, delta, e_all, dh0) completes in place; true:
//                  Loop::bwd_direct(pr, grad_h, h, u, e_all, dh0) runs the whole
//                  backward loop from grad_h and returns dalpha (when leaky).
struct LoopDefaults {
  static constexpr bool kDirectBwd = false;
  static Tensor empty_like(const Tensor& t) { return torch::stable::empty_like(t); }
  static Tensor contiguous(const Tensor& t) { return as_contiguous(t); }
  static Tensor gram(const Tensor& a, const Tensor& b) {
    return torch::stable::matmul(torch::stable::transpose(a, 0, 1), b);
  }
  static Tensor step_gram(const Problem&, const Tensor& e, const Tensor& h, int64_t) {
    return gram(flat_rows(e), flat_rows(h));
  }
  static Tensor window_sum(const Problem&, const Tensor&, int64_t) {
    throw std::runtime_error("leaky_rnn: this backend does not take lengths");
  }
};

// sum_t e_t^T h_{t-delay} (h0 before the start) without materialising the
// delayed copy of h: one GEMM over the steps that read h, plus (sum of the
// remaining e_t)^T h0. e_start, when given, is that sum per row (B, H) (with
// reverse and lengths the steps that read h0 differ per row: the Loop's
// window_sum); the GEMM's pairs with a padded h are 0 because padded h is.
template <class Loop>
Tensor delayed_gram(const Problem& pr, const Tensor& e, const Tensor& h, const Tensor& h0, bool has_h0,
                    int64_t delay, bool reverse, const std::optional<Tensor>& e_start = std::nullopt) {
  const int64_t T = h.size(0), H = h.size(2);
  const int64_t n = std::max<int64_t>(T - delay, 0), n0 = T - n;
  auto main_steps = [&] {
    return Loop::step_gram(pr, reverse ? rows(e, 0, n) : rows(e, n0, n), reverse ? rows(h, delay, n) : rows(h, 0, n),
                           delay);
  };
  Tensor out = n > 0 ? main_steps() : torch::stable::new_zeros(e, {H, H});
  if (has_h0) {  // else h0 = 0 and the start steps add nothing
    if (e_start) {  // sum_b e_start[b]^T h0[b]
      out = add(out, Loop::gram(*e_start, h0));
      return out;
    }
    const Tensor first = reverse ? rows(e, n, n0) : rows(e, 0, n0);
    const Tensor s = torch::stable::sum(first, std::vector<int64_t>{0});
    out = add(out, Loop::gram(s, h0));
  }
  return out;
}

// sum_{t,b} delta_t * (h_{t-d} - u_t) (h0 before the start), for loops that
// complete delta in place; through the dispatcher, since the stable ops have no
// multiplication. delta_start (ragged starts only): window_sum of delta.
inline Tensor dalpha_of(const Tensor& delta, const Tensor& h, const Tensor& u, const Tensor& h0,
                        int64_t d, bool reverse,
                        const std::optional<Tensor>& delta_start = std::nullopt) {
  const int64_t T = h.size(0);
  const int64_t n = std::max<int64_t>(T - d, 0), n0 = T - n;
  const std::vector<int64_t> dims{0, 1};
  auto mul = [](const Tensor& a, const Tensor& b) { return call_aten("aten::mul", "Tensor", a, b); };
  auto part = [&](const Tensor& dl, const Tensor& hd, const Tensor& ul) {
    return torch::stable::sum(mul(dl, torch::stable::subtract(hd, ul)), dims);
  };
  const int64_t s1 = reverse ? 0 : n0;
  if (delta_start) {
    // -sum delta u over every step, + the pairs with a delayed h (padded h is 0,
    // which drops the steps that read h0), + sum_b delta_start[b] h0[b].
    Tensor out = torch::stable::subtract(
        torch::stable::sum(mul(*delta_start, h0), std::vector<int64_t>{0}),
        torch::stable::sum(mul(delta, u), dims));
    if (n > 0)
      out = add(out, torch::stable::sum(mul(rows(delta, s1, n), reverse ? rows(h, d, n) : rows(h, 0, n)),
                                        dims));
    return out;
  }
  // steps reading h0 (the first d processed), broadcast over their rows
  const int64_t s0 = reverse ? n : 0;
  Tensor out = part(rows(delta, s0, n0), torch::stable::unsqueeze(h0, 0), rows(u, s0, n0));
  if (n > 0)
    out = add(out, part(rows(delta, s1, n), reverse ? rows(h, d, n) : rows(h, 0, n), rows(u, s1, n)));
  return out;
}

// Loop: a policy deriving from LoopDefaults with a static fwd(pr, p, h, u) filling h
// (and u when leaky) from p, and bwd or bwd_direct as LoopDefaults describes:
// CpuLoop (leaky_rnn_cpu.cpp), CudaLoop (leaky_rnn_cuda.cpp).
template <class Loop>
std::tuple<Tensor, Tensor> leaky_rnn_fwd(Tensor p_in, Tensor w_in, std::optional<Tensor> h0_in,
                                         std::optional<Tensor> alpha_in,
                                         std::optional<Tensor> w_skip_in, int64_t skip,
                                         int64_t dilation, std::string nonlinearity, bool reverse,
                                         std::optional<Tensor> lengths) {
  const Shape s = check_args(p_in, w_in, h0_in, alpha_in, w_skip_in, skip, dilation);
  check_lengths("leaky_rnn", lengths, s.B, p_in.device());
  const Tensor p = compute(p_in);
  const Problem pr = make_problem(s, nonlinearity, w_in, h0_in, alpha_in, w_skip_in, skip,
                                  dilation, reverse, p, lengths);
  Tensor h = Loop::empty_like(p);
  std::optional<Tensor> u;
  if (pr.leak()) u = Loop::empty_like(p);
  Loop::fwd(pr, p, h, u);
  const ScalarType dtype = p_in.scalar_type();
  return {as_dtype(h, dtype), u ? as_dtype(*u, dtype) : torch::stable::new_empty(p_in, {0})};
}

template <class Loop>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> leaky_rnn_bwd(
    Tensor grad_h, Tensor w_in, Tensor h_in, Tensor u_in, std::optional<Tensor> h0_in,
    std::optional<Tensor> alpha_in, std::optional<Tensor> w_skip_in, int64_t skip,
    int64_t dilation, std::string nonlinearity, bool reverse, std::optional<Tensor> lengths) {
  const Shape s = check_args(h_in, w_in, h0_in, alpha_in, w_skip_in, skip, dilation);
  check_lengths("leaky_rnn_bwd", lengths, s.B, h_in.device());
  // grad_h and u are read with h's element type and layout: same dtype and device.
  auto like_h = [&](const Tensor& t, const char* name, const char* when) {
    MTS_CHECK(same_sizes(t.sizes(), h_in.sizes()) && t.scalar_type() == h_in.scalar_type() &&
                  t.device() == h_in.device(),
              "leaky_rnn_bwd: ", name, " must be ", torch::headeronly::toString(h_in.scalar_type()),
              " of shape ", shape_str(h_in.sizes()), " on ", device_str(h_in.device()), when,
              ", got ", torch::headeronly::toString(t.scalar_type()), " of shape ",
              shape_str(t.sizes()), " on ", device_str(t.device()));
  };
  like_h(grad_h, "grad_h", "");
  if (alpha_in.has_value()) like_h(u_in, "u", " when alpha is given");
  const Tensor h = compute(h_in);
  const Problem pr = make_problem(s, nonlinearity, w_in, h0_in, alpha_in, w_skip_in, skip,
                                  dilation, reverse, h, lengths);
  const Tensor u = pr.leak() ? compute(u_in) : h;
  Tensor dh0 = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor e_all = Loop::empty_like(h);
  std::optional<Tensor> dalpha;
  const Tensor g = Loop::contiguous(as_dtype(grad_h, opmath_dtype(grad_h.scalar_type())));
  if constexpr (Loop::kDirectBwd) {
    dalpha = Loop::bwd_direct(pr, g, h, u, e_all, dh0);
  } else {
    // delta_t, completed in place as later steps are processed (a private copy).
    Tensor delta = g.data_ptr() == grad_h.data_ptr() ? torch::stable::clone(g) : g;
    Loop::bwd(pr, u, delta, e_all, dh0);
    if (pr.leak())
      dalpha = dalpha_of(delta, h, u, pr.h0, pr.dilation, reverse,
                         pr.ragged_start() ? std::optional<Tensor>(Loop::window_sum(pr, delta, pr.dilation))
                                           : std::nullopt);
  }
  // Weight gradients: one large GEMM each over all steps.
  const bool has_h0 = h0_in.has_value();
  auto start = [&](int64_t delay) -> std::optional<Tensor> {
    if (!has_h0 || !pr.ragged_start()) return std::nullopt;
    return Loop::window_sum(pr, e_all, delay);
  };
  const Tensor dw = delayed_gram<Loop>(pr, e_all, h, pr.h0, has_h0, pr.dilation, reverse, start(pr.dilation));
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  return {out(e_all), out(dw), out(dh0),
          dalpha ? out(*dalpha) : torch::stable::new_empty(w_in, {0}),
          skip > 0 ? out(delayed_gram<Loop>(pr, e_all, h, pr.h0, has_h0, pr.skip, reverse, start(pr.skip)))
                   : torch::stable::new_empty(w_in, {0})};
}

// The compute dtypes (float32 / float64; float16 / bfloat16 run in float32):
// f(TypeTag<T>{}) for t's.
template <typename F>
decltype(auto) dispatch_compute(ScalarType t, const char* name, F&& f) {
  if (t == ScalarType::Double) return f(TypeTag<double>{});
  MTS_CHECK(t == ScalarType::Float, name, ": unexpected compute dtype ",
            torch::headeronly::toString(t));
  return f(TypeTag<float>{});
}

HIDDEN_NAMESPACE_END(mts, rnn)
