// CPU kernels of the deep-transition recurrence in one fused time loop (schemas
// in csrc/registration.cpp), L = depth sub-layers per step, s^0_t = h_{t-1}:
//
//   s^1_t = phi(W_1 h_{t-1} + p_t + b_1)
//   s^l_t = phi(W_l s^{l-1}_t + b_l)                      l = 2..L
//           (shortcut U: s^L_t = phi(W_L s^{L-1}_t + b_L + U h_{t-1}))
//   h_t   = alpha * h_{t-1} + (1 - alpha) * s^L_t          (alpha None: s^L_t)
//
// Forward: per step L products (plus the shortcut's, from the same state) over
// the running rows, each followed by one vectorized pass (phi, and the leak on
// the top sub-layer). Every s^l_t is stored for the backward.
//
// Backward, with delta_t = dL/dh_t = grad_h_t + the carry from step t+1 and
// e^l_t = dL/d(pre-activation of sub-layer l):
//   e^L = phi'(s^L) (1 - alpha) delta,   e^{l-1} = phi'(s^{l-1}) (e^l W_l)
//   carry to h_{t-1}: alpha delta + e^1 W_1 + e^L U;   dp_t = e^1
//   dalpha = sum_{t,b} delta (h_{t-1} - s^L)
// so per step again L products (plus U's) and one pass per sub-layer; the weight
// gradients are GEMMs over all steps after the loop: dW_l = sum e^l^T s^{l-1},
// dU = sum e^L^T h_{t-1}, db_l = sum e^l.
//
// Lengths (csrc/lengths.h): rows walk in order of decreasing length, so the first
// n_k rows are the ones still running at step k and the others leave the per-step
// products; outputs are 0 at t >= L_b and grad_h there is ignored. Products: the
// register-tiled loop below kSmallWork multiply-adds, BLAS above (csrc/cpu_blas.h).
// float16/bfloat16 compute in float32 (state and accumulation); float64 exact.
#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../cpu_alloc.h"
#include "../cpu_blas.h"
#include "../cpu_vec.h"
#include "../lengths.h"
#include "../rnn/leaky_rnn_impl.h"
#include "../rnn/leaky_rnn_math.h"
#include "../stable_util.h"
#include "deep_args.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

using namespace ::mts::cpu;
using ::mts::rnn::as_dtype;
using ::mts::rnn::compute;
using ::mts::rnn::dispatch_compute;
using ::mts::rnn::dphi_times;
using ::mts::rnn::leak_mix;
using ::mts::rnn::relu_of;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The loop's operands in the compute dtype T (float / double). The weights are
// packed with zero padding columns to Np (a multiple of the vector width), so the
// tiled product may write whole vectors into the padded (B, Np) accumulators.
template <typename T>
struct Raw {
  int64_t Tn, B, H, Np, L;
  bool reverse, tanh;
  const T* alpha;  // (H,); nullptr: no leak
  const T* bias;   // (L, H); nullptr: none
  const T* w;      // L blocks (H, Np): forward W_l^T (z += s W_l^T), backward W_l (ds += e W_l)
  const T* u;      // (H, Np), U^T / U; nullptr without shortcut
  const T* h0;     // (B, H)
  const int64_t* len;     // nullptr: every row runs Tn steps
  const int64_t* order;   // rows by decreasing length (with len)
  const int64_t* active;  // rows still running at step k (with len)
  int64_t rows_at(int64_t k) const { return len ? active[k] : B; }
  int64_t row(int64_t i) const { return len ? order[i] : i; }
  int64_t steps() const { return Tn * B * H; }  // one (T, B, H) slab
  // Offset of processing row i's step k in a (T, B, H) tensor.
  int64_t off(int64_t k, int64_t i) const {
    const int64_t b = row(i), n = len ? len[b] : Tn;
    return ((reverse ? n - 1 - k : k) * B + b) * H;
  }
  // c (n, Np) += a (n, H) @ m (H, Np)
  void prod(int64_t n, const T* a, const T* m, T* c) const {
    gemm_acc<T>(n, H, Np, H, a, H, m, Np, c, Np);
  }
};

// The (n, H) states step k reads (h_{t-1}, h0 at each row's first step), in
// processing order: a view of h without lengths, else gathered into buf.
template <typename T>
inline const T* prev_rows(const Raw<T>& r, int64_t k, int64_t n, const T* h, T* buf) {
  if (!r.len) return k > 0 ? h + r.off(k - 1, 0) : r.h0;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = k > 0 ? h + r.off(k - 1, i) : r.h0 + r.row(i) * r.H;
    std::copy(src, src + r.H, buf + i * r.H);
  }
  return buf;
}

// h (T, B, H) and s (L, T, B, H) from p (T, B, H). The state lives in a private
// (B, H) buffer in processing order.
template <typename T>
inline void fwd_steps(const Raw<T>& r, const T* p, T* h, T* s) {
  const int64_t B = r.B, H = r.H, Np = r.Np, L = r.L;
  std::vector<T> state(B * H), cur(B * H), zbuf(B * Np, T(0));
  T* st0 = state.data();
  T* sc = cur.data();
  T* z = zbuf.data();
  for (int64_t i = 0; i < B; ++i) std::copy(r.h0 + r.row(i) * H, r.h0 + (r.row(i) + 1) * H, st0 + i * H);
  for (int64_t k = 0; k < r.Tn; ++k) {
    const int64_t n = r.rows_at(k);
    if (n == 0) break;
    for (int64_t l = 0; l < L; ++l) {
      const T* bl = r.bias ? r.bias + l * H : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const T* pt = p + r.off(k, i);
        T* zb = z + i * Np;
        for_lanes<T>(H, [&](int64_t j, auto v) {
          using V = decltype(v);
          V zv = V{};
          if (l == 0) ld(zv, pt + j);
          if (bl) {
            V bv;
            ld(bv, bl + j);
            zv = zv + bv;
          }
          st(zb + j, zv);
        });
      }
      const bool top = l == L - 1;
      r.prod(n, l == 0 ? st0 : sc, r.w + l * H * Np, z);
      if (top && r.u) r.prod(n, st0, r.u, z);
      T* sl = s + l * r.steps();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = r.off(k, i);
        const T* zb = z + i * Np;
        T* so = sl + off;
        T* sb = (top ? st0 : sc) + i * H;  // top: the state, updated in place
        T* ho = h + off;
        for_lanes<T>(H, [&](int64_t j, auto v) {
          using V = decltype(v);
          V zv, uv;
          ld(zv, zb + j);
          uv = r.tanh ? tanh_of(zv) : relu_of(zv);
          st(so + j, uv);
          if (!top) {
            st(sb + j, uv);
            return;
          }
          if (r.alpha) {
            V a, hv;
            ld(a, r.alpha + j);
            ld(hv, sb + j);
            uv = leak_mix(a, hv, uv);
          }
          st(sb + j, uv);
          st(ho + j, uv);
        });
      }
    }
  }
  zero_padded(r, h);
  for (int64_t l = 0; l < L; ++l) zero_padded(r, s + l * r.steps());
}

// e (L blocks of (T, B, H): e[0] is dp) from grad_h g; dh0 (B, H); dalpha (H,
// double, accumulated: per step in T, across steps in double).
template <typename T>
inline void bwd_steps(const Raw<T>& r, const T* g, const T* h, const T* s, T* const* e, T* dh0,
                      double* dalpha) {
  const int64_t B = r.B, H = r.H, Np = r.Np, L = r.L;
  std::vector<T> carry(B * Np, T(0)), ebuf(B * H), zbuf(B * Np, T(0)), gathered(r.len ? B * H : 0),
      da_step(r.alpha ? H : 0, T(0));
  T* cr = carry.data();
  T* eb = ebuf.data();
  T* z = zbuf.data();
  const T* sL = s + (L - 1) * r.steps();
  for (int64_t k = r.Tn - 1; k >= 0; --k) {
    const int64_t n = r.rows_at(k);
    if (n == 0) continue;
    const T* hp = r.alpha ? prev_rows(r, k, n, h, gathered.data()) : nullptr;
    // top sub-layer: delta, the leak's carry and dalpha, e^L
    for (int64_t i = 0; i < n; ++i) {
      const int64_t off = r.off(k, i);
      const T *gb = g + off, *ub = sL + off;
      T *cb = cr + i * Np, *ebi = eb + i * H, *eo = e[L - 1] + off;
      for_lanes<T>(H, [&](int64_t j, auto v) {
        using V = decltype(v);
        V d, gv, uv;
        ld(d, cb + j);
        ld(gv, gb + j);
        ld(uv, ub + j);
        d = d + gv;
        // (1 - alpha) delta first, then phi': relu's phi' = 0 masks it the way
        // torch's threshold_backward does
        V du = d, keep = V{};
        if (r.alpha) {
          V a, hv, dav;
          ld(a, r.alpha + j);
          ld(hv, hp + i * H + j);
          ld(dav, da_step.data() + j);
          st(da_step.data() + j, dav + d * (hv - uv));
          keep = a * d;
          du = (T(1) - a) * d;
        }
        st(cb + j, keep);
        const V ev = dphi_times(du, uv, !r.tanh);
        st(ebi + j, ev);
        st(eo + j, ev);
      });
    }
    for (int64_t j = 0; j < (r.alpha ? H : 0); ++j) {
      dalpha[j] += double(da_step[j]);
      da_step[j] = T(0);
    }
    if (r.u) r.prod(n, eb, r.u, cr);  // dL/dh_{t-1} += e^L U
    for (int64_t l = L - 1; l >= 1; --l) {  // e^l -> e^{l-1} (0-based l: sub-layer l + 1)
      std::fill(z, z + n * Np, T(0));
      r.prod(n, eb, r.w + l * H * Np, z);
      const T* sl = s + (l - 1) * r.steps();
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = r.off(k, i);
        const T *zb = z + i * Np, *ub = sl + off;
        T *ebi = eb + i * H, *eo = e[l - 1] + off;
        for_lanes<T>(H, [&](int64_t j, auto v) {
          using V = decltype(v);
          V zv, uv;
          ld(zv, zb + j);
          ld(uv, ub + j);
          const V ev = dphi_times(zv, uv, !r.tanh);
          st(ebi + j, ev);
          st(eo + j, ev);
        });
      }
    }
    r.prod(n, eb, r.w, cr);  // dL/dh_{t-1} += e^1 W_1
  }
  for (int64_t i = 0; i < B; ++i) std::copy(cr + i * Np, cr + i * Np + H, dh0 + r.row(i) * H);
  for (int64_t l = 0; l < L; ++l) zero_padded(r, e[l]);
}

MTS_CPU_CLONES void fwd_steps_f32(const Raw<float>& r, const float* p, float* h, float* s) {
  fwd_steps<float>(r, p, h, s);
}
MTS_CPU_CLONES void bwd_steps_f32(const Raw<float>& r, const float* g, const float* h, const float* s,
                                  float* const* e, float* dh0, double* dalpha) {
  bwd_steps<float>(r, g, h, s, e, dh0, dalpha);
}
inline void run_fwd(const Raw<float>& r, const float* p, float* h, float* s) { fwd_steps_f32(r, p, h, s); }
inline void run_bwd(const Raw<float>& r, const float* g, const float* h, const float* s, float* const* e,
                    float* dh0, double* dalpha) {
  bwd_steps_f32(r, g, h, s, e, dh0, dalpha);
}
inline void run_fwd(const Raw<double>& r, const double* p, double* h, double* s) {
  fwd_steps<double>(r, p, h, s);
}
inline void run_bwd(const Raw<double>& r, const double* g, const double* h, const double* s,
                    double* const* e, double* dh0, double* dalpha) {
  bwd_steps<double>(r, g, h, s, e, dh0, dalpha);
}

// count (H, H) matrices -> (count, H, Np) with zero padding columns, each one
// transposed (the forward's W^T) or not (the backward's W).
template <typename T>
std::vector<T> pack(const T* w, int64_t count, int64_t H, int64_t Np, bool transpose) {
  std::vector<T> out(count * H * Np, T(0));
  for (int64_t c = 0; c < count; ++c)
    for (int64_t a = 0; a < H; ++a)
      for (int64_t b = 0; b < H; ++b)
        out[(c * H + a) * Np + b] = transpose ? w[(c * H + b) * H + a] : w[(c * H + a) * H + b];
  return out;
}

inline std::optional<Tensor> compute_opt(const std::optional<Tensor>& t) {
  return t ? std::optional<Tensor>(compute(*t)) : std::nullopt;
}

template <typename T>
Raw<T> raw_of(const Shape& s, bool tanh, bool reverse, const std::optional<Tensor>& alpha,
              const std::optional<Tensor>& bias, const std::vector<T>& w, const std::vector<T>& u,
              const Tensor& h0, const RowOrder& o) {
  const bool ragged = !o.len.empty() || !o.order.empty();
  return Raw<T>{s.T, s.B, s.H, round_up(s.H, kLanes<T>), s.L, reverse, tanh,
                alpha ? ptr<T>(*alpha) : nullptr, bias ? ptr<T>(*bias) : nullptr, w.data(),
                u.empty() ? nullptr : u.data(), ptr<T>(h0),
                ragged ? o.len.data() : nullptr, ragged ? o.order.data() : nullptr,
                ragged ? o.active.data() : nullptr};
}

std::tuple<Tensor, Tensor> deep_transition_rnn_fwd(Tensor p_in, Tensor w_in, std::optional<Tensor> h0_in,
                                                   std::optional<Tensor> bias_in,
                                                   std::optional<Tensor> ws_in,
                                                   std::optional<Tensor> alpha_in, std::string nonlinearity,
                                                   bool reverse, std::optional<Tensor> lengths) {
  const char* op = "deep_transition_rnn_fwd";
  const Shape s =
      check_args(op, "p", p_in, w_in, h0_in, bias_in, ws_in, alpha_in, torch::headeronly::DeviceType::CPU);
  const bool tanh = parse_tanh(nonlinearity, op);
  check_lengths(op, lengths, s.B, p_in.device());
  const RowOrder order = row_order(lengths, s.B, s.T, op);
  const Tensor p = compute(p_in), w = compute(w_in);
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(p, {s.B, s.H});
  const std::optional<Tensor> alpha = compute_opt(alpha_in), bias = compute_opt(bias_in),
                              ws = compute_opt(ws_in);
  Tensor h = empty_like_cpu(p);
  Tensor st = torch::stable::new_empty(p, {s.L, s.T, s.B, s.H});
  dispatch_compute(p.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t Np = round_up(s.H, kLanes<T>);
    const std::vector<T> wp = pack<T>(ptr<T>(w), s.L, s.H, Np, true);
    const std::vector<T> up = ws ? pack<T>(ptr<T>(*ws), 1, s.H, Np, true) : std::vector<T>();
    const Raw<T> r = raw_of<T>(s, tanh, reverse, alpha, bias, wp, up, h0, order);
    run_fwd(r, ptr<T>(p), mut<T>(h), mut<T>(st));
  });
  const ScalarType dtype = p_in.scalar_type();
  return {as_dtype(h, dtype), as_dtype(st, dtype)};
}

// out (H, H) += sum over every step of e_t^T h_{t-1}, where h_{t-1} is the state
// the step read (h0 at each row's first step; has_h0 false: h0 = 0, no term): one
// GEMM over the (T - 1) B step pairs that read h (pairs at a padded step are 0:
// e is), plus the first steps' e^T h0.
template <typename T>
void prev_gram(const Tensor& out, const T* e, const T* h, const T* h0, bool has_h0, const Shape& s,
               bool reverse, const RowOrder& o) {
  constexpr ScalarType dtype = std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
  const Device cpu(torch::headeronly::DeviceType::CPU);
  const int64_t B = s.B, H = s.H, BH = B * H;
  auto view = [&](const T* p, int64_t rows) {
    return torch::stable::from_blob(const_cast<T*>(p), {rows, H}, {H, 1}, cpu, dtype);
  };
  // out += a^T b in reduction chunks fixed by the shape (any thread count: blas_blocked.h)
  auto acc = [&](const Tensor& a, const Tensor& b) { cpu::blocked_gram<T>(a, b, out); };
  const int64_t n = (s.T - 1) * B;
  if (n > 0) acc(view(e + (reverse ? 0 : BH), n), view(h + (reverse ? BH : 0), n));
  if (!has_h0) return;
  if (!reverse || o.len.empty()) {
    acc(view(e + (reverse ? (s.T - 1) * BH : 0), B), view(h0, B));
    return;
  }
  // reverse with lengths: row b's first step is t = L_b - 1
  std::vector<T> first(BH, T(0));
  for (int64_t b = 0; b < B; ++b)
    if (o.len[b] > 0) std::copy(e + ((o.len[b] - 1) * B + b) * H, e + ((o.len[b] - 1) * B + b + 1) * H, first.data() + b * H);
  acc(view(first.data(), B), view(h0, B));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> deep_transition_rnn_bwd(
    Tensor grad_h, Tensor w_in, Tensor h_in, Tensor s_in, std::optional<Tensor> h0_in,
    std::optional<Tensor> ws_in, std::optional<Tensor> alpha_in, std::string nonlinearity, bool reverse,
    std::optional<Tensor> lengths) {
  const char* op = "deep_transition_rnn_bwd";
  const Shape s = check_args(op, "h", h_in, w_in, h0_in, std::nullopt, ws_in, alpha_in,
                             torch::headeronly::DeviceType::CPU);
  const bool tanh = parse_tanh(nonlinearity, op);
  check_lengths(op, lengths, s.B, h_in.device());
  check_like(op, "grad_h", grad_h, h_in.sizes(), h_in);
  check_like(op, "s", s_in, {s.L, s.T, s.B, s.H}, h_in);
  const RowOrder order = row_order(lengths, s.B, s.T, op);
  const Tensor h = compute(h_in), w = compute(w_in), sv = compute(s_in);
  const Tensor g = contiguous_cpu(as_dtype(grad_h, opmath_dtype(grad_h.scalar_type())));
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(h, {s.B, s.H});
  const std::optional<Tensor> alpha = compute_opt(alpha_in), ws = compute_opt(ws_in);
  // e^1 = dp on its own, so dp is not a view keeping the other sub-layers' e alive
  Tensor dp = empty_like_cpu(h);
  std::optional<Tensor> e_rest;
  if (s.L > 1) e_rest = torch::stable::new_empty(h, {s.L - 1, s.T, s.B, s.H});
  Tensor dh0 = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor dw = torch::stable::new_zeros(h, {s.L, s.H, s.H});
  Tensor db = torch::stable::new_empty(h, {s.L, s.H});
  std::optional<Tensor> dws, dalpha;
  if (ws) dws = torch::stable::new_zeros(h, {s.H, s.H});
  dispatch_compute(h.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr ScalarType dtype = std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
    const Device cpu(torch::headeronly::DeviceType::CPU);
    const int64_t Np = round_up(s.H, kLanes<T>), HH = s.H * s.H, THB = s.T * s.B * s.H;
    const std::vector<T> wp = pack<T>(ptr<T>(w), s.L, s.H, Np, false);
    const std::vector<T> up = ws ? pack<T>(ptr<T>(*ws), 1, s.H, Np, false) : std::vector<T>();
    const Raw<T> r = raw_of<T>(s, tanh, reverse, alpha, std::nullopt, wp, up, h0, order);
    std::vector<T*> e(s.L);
    e[0] = mut<T>(dp);
    for (int64_t l = 1; l < s.L; ++l) e[l] = mut<T>(*e_rest) + (l - 1) * THB;
    std::vector<double> da(alpha ? s.H : 0, 0.0);
    run_bwd(r, ptr<T>(g), ptr<T>(h), ptr<T>(sv), e.data(), mut<T>(dh0), da.data());
    // weight and bias gradients: GEMMs / reductions over all steps
    auto view = [&](const T* p, std::vector<int64_t> sizes) {
      std::vector<int64_t> strides = contiguous_strides(IntRef(sizes));
      return torch::stable::from_blob(const_cast<T*>(p), sizes, strides, cpu, dtype);
    };
    const int64_t TB = s.T * s.B;
    prev_gram<T>(view(mut<T>(dw), {s.H, s.H}), e[0], ptr<T>(h), ptr<T>(h0), h0_in.has_value(), s,
                 reverse, order);
    for (int64_t l = 1; l < s.L; ++l) {
      const Tensor out = view(mut<T>(dw) + l * HH, {s.H, s.H});
      cpu::blocked_gram<T>(view(e[l], {TB, s.H}), view(ptr<T>(sv) + (l - 1) * THB, {TB, s.H}), out);
    }
    if (ws)
      prev_gram<T>(*dws, e[s.L - 1], ptr<T>(h), ptr<T>(h0), h0_in.has_value(), s, reverse, order);
    for (int64_t l = 0; l < s.L; ++l) {
      const Tensor sum = as_contiguous(torch::stable::sum(view(e[l], {TB, s.H}), std::vector<int64_t>{0}));
      std::copy(ptr<T>(sum), ptr<T>(sum) + s.H, mut<T>(db) + l * s.H);
    }
    if (alpha) dalpha = from_double<T>(da, h);
  });
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  auto empty = [&] { return torch::stable::new_empty(h_in, {0}); };
  return {out(dp), out(dw), out(db), out(dh0), dws ? out(*dws) : empty(), dalpha ? out(*dalpha) : empty()};
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("deep_transition_rnn_fwd", TORCH_BOX(&mts::deep::deep_transition_rnn_fwd));
  m.impl("deep_transition_rnn_bwd", TORCH_BOX(&mts::deep::deep_transition_rnn_bwd));
}
