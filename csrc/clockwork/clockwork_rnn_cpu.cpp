// CPU kernels of the clockwork recurrence in one fused time loop (schemas in
// csrc/registration.cpp):
//
//   module i active at step t (t >= first_i and (t - first_i) % T_i == 0):
//     u_i(t) = phi(p_i(t) + sum_{j >= i} W_ij h_j(t-1))
//     h_i(t) = alpha_i * h_i(t-1) + (1 - alpha_i) * u_i(t)      (alpha None: u_i(t))
//   inactive: h_i(t) = h_i(t-1)
//
// Forward: the state lives in one (n, H) buffer in the rows' processing order
// (n = B, or a group's rows: see run_groups).
// Step t updates the active modules fast to slow, in place: module i reads only
// the blocks j >= i, none of which an earlier (faster) module of the same step has
// written, so the in-place update reads exactly h(t-1). Each active module is one
// product (n_t x (H - lo_i)) @ (H - lo_i x k_i) over the running rows, then one
// vectorized pass; inactive modules cost nothing but the copy of the state into
// h(t) that every step writes.
//
// Backward (delta = dL/dh(t), carried in one (B, H) buffer): at step t the
// incoming gradient is added; every active module forms e_i = dL/dp_i(t) =
// (1 - alpha_i) phi'(u_i) delta_i and leaves alpha_i delta_i behind, then adds
// e_i W_{i, j>=i} into the carry of h(t-1); inactive modules' delta passes through
// untouched. dalpha sums delta (h(t-1) - u) over active steps. dW's block row i
// sums e_i(t)^T h_{j>=i}(t-1) over module i's active steps: at small sizes inside
// the loop (dw_in_loop), else one GEMM after it; the lower blocks (never read)
// get exactly zero.
//
// Lengths: rows walk in order of decreasing length (a permutation of indices), so
// the first n_t rows are the ones still running at step t and the others leave
// the per-step work; outputs are 0 at t >= L_b, grad_h there is ignored.
// float16/bfloat16 compute in float32 (state and accumulation); float64 exact.
// Products: the register-tiled loop of csrc/cpu_vec.h for small ones, BLAS above
// kSmallWork multiply-adds (a BLAS call's fixed cost is a few microseconds).
#include <algorithm>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "../blas_blocked.h"
#include "clockwork_args.h"
#include "../cpu_alloc.h"
#include "../cpu_blas.h"
#include "../cpu_vec.h"
#include "../lengths.h"
#include "../projection/ragged_rows.h"
#include "../row_groups.h"
#include "../rnn/leaky_rnn_math.h"
#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace {

using namespace ::mts::cpu;
using ::mts::rnn::dphi_times;
using ::mts::rnn::leak_mix;
using ::mts::rnn::relu_of;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

// The loop's operands in the compute dtype T (float / double).
template <typename T>
struct Raw {
  int64_t Tn, B, H;
  bool tanh;
  const T* alpha;  // nullptr: no leak
  const T* h0;     // (B, H)
  const Clock* clock;
  // Per module m, its weight block packed with zero padding columns to a multiple
  // of the vector width: forward W[lo:hi, lo:]^T, (H - lo) x fw_ld[m]; backward
  // W[lo:hi, lo:], k x bw_ld[m].
  std::vector<const T*> w;
  std::vector<int64_t> ld;
  const int64_t* len;     // nullptr: every row runs Tn steps
  const int64_t* order;   // the call's rows by decreasing length (with len)
  const int64_t* active;  // the call's rows still running at step t (with len)
  int64_t n, row0;        // the call's rows: n of them (without len: rows row0 + i)
  int64_t rows_at(int64_t t) const { return len ? active[t] : n; }
  int64_t row(int64_t i) const { return len ? order[i] : row0 + i; }
  int64_t off(int64_t t, int64_t i) const { return (t * B + row(i)) * H; }
};

// Each batch row's recurrence is independent of the others'. Where a step's
// products are register-tiled (the whole batch's below kSmallWork multiply-adds,
// too small for a BLAS call or a split of the columns to pay), the rows run in
// groups, one task each, every group's whole time loop on one thread without any
// synchronisation. The groups are fixed by the batch size (at most 8, of at least
// two rows; with lengths every Q-th row in order of length, which balances the
// work), never by the thread count, so the results are bitwise the same on any
// thread count. ClockworkRNN B=4, H=64, 4 modules, T=4096 on 2 cores: forward
// op 1.21 -> 1.03 ms, backward op 1.83 -> 1.64 ms (each group's step is shorter
// but keeps the per-step bookkeeping, so not 2x).
template <typename T>
bool tiled_steps(const Raw<T>& r) {
  return r.B * r.H * r.H <= kSmallWork;
}
template <typename T>
int64_t group_count(const Raw<T>& r) {
  return r.B >= 4 && tiled_steps(r) ? std::min<int64_t>(r.B / 2, 8) : 1;
}

// The backward forms dW inside its loop (bwd_steps) where the steps are
// register-tiled (tiled_steps) and a group's H x H accumulator fits in L1
// (H <= 90 in float32, 64 in float64), else after the loop from e and h
// (weight_grad, whose GEMMs at such sizes spend more time packing strided views
// than multiplying). ClockworkRNN B=4, H=64, 4 modules, T=4096, one thread (AMD
// EPYC): backward op 2.8-3.1 -> 2.4-2.6 ms.
template <typename T>
bool dw_in_loop(const Raw<T>& r) {
  return tiled_steps(r) && r.H * r.H * int64_t(sizeof(T)) <= 32768;
}

template <typename T, typename F>
void run_groups(const Raw<T>& r, const RowOrder& o, F&& f) {
  run_row_groups(r, o, group_count(r), f, [](Raw<T>&, const RowGroup&) {});
}

template <typename T>
inline void fwd_steps(const Raw<T>& r, const T* p, T* h, T* u) {
  const Clock& c = *r.clock;
  const int64_t B = r.n, H = r.H;
  int64_t zw = 0;
  for (int64_t m = 0; m < c.g; ++m) zw = std::max(zw, r.ld[m]);
  AlignedVec<T> state(B * H), zbuf(B * zw, T(0));
  T* s = state.data();
  T* z = zbuf.data();
  for (int64_t i = 0; i < B; ++i) std::copy(r.h0 + r.row(i) * H, r.h0 + (r.row(i) + 1) * H, s + i * H);
  std::vector<int64_t> next(c.first);  // each module's next active step (no division per step)
  for (int64_t t = 0; t < r.Tn; ++t) {
    const int64_t n = r.rows_at(t);
    if (n == 0) break;
    if (t + kAhead < r.Tn)
      for (int64_t i = 0, na = r.rows_at(t + kAhead); i < na; ++i) {
        const int64_t o = r.off(t + kAhead, i);
        prefetch_row<false>(p + o, H);
        prefetch_row<true>(h + o, H);
        if (u) prefetch_row<true>(u + o, H);
      }
    for (int64_t m = 0; m < c.g; ++m) {  // fast to slow: see the file comment
      const int64_t lo = c.lo[m], k = c.k[m], N = r.ld[m];
      const bool on = next[m] == t;
      if (on) next[m] += c.period[m];
      if (!on) {
        if (u)  // u is read at active steps only; zeros keep the output deterministic
          for (int64_t i = 0; i < n; ++i) std::fill(u + r.off(t, i) + lo, u + r.off(t, i) + lo + k, T(0));
        continue;
      }
      for (int64_t i = 0; i < n; ++i) {
        const T* pt = p + r.off(t, i) + lo;
        std::copy(pt, pt + k, z + i * N);
      }
      gemm_acc<T>(n, H - lo, N, k, s + lo, H, r.w[m], N, z, N);
      const T* a = r.alpha ? r.alpha + lo : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const T* zb = z + i * N;
        T* sb = s + i * H + lo;
        T* ub = u ? u + r.off(t, i) + lo : nullptr;
        for_lanes<T>(k, [&](int64_t j, auto v) {
          using V = decltype(v);
          V zv, uv;
          ld(zv, zb + j);
          uv = r.tanh ? tanh_of(zv) : relu_of(zv);
          if (a) {
            V av, hv;
            ld(av, a + j);
            ld(hv, sb + j);
            st(ub + j, uv);
            st(sb + j, leak_mix(av, hv, uv));
          } else {
            st(sb + j, uv);
          }
        });
      }
    }
    for (int64_t i = 0; i < n; ++i) std::copy(s + i * H, s + (i + 1) * H, h + r.off(t, i));
  }
}

// The in-loop weight gradient: each active module's rows (e_m(t) and a pointer to
// h(t-1)) are collected until kOuterRows of them make one register-tiled update
// of a T accumulator (outer_acc: each tile of dW loaded and stored once per
// kOuterRows rows), which is added into a double one every kFlushSteps steps, so
// each T partial sum stays a short one, as the chunked GEMMs after the loop keep
// theirs.
constexpr int64_t kOuterRows = 16;
constexpr int64_t kFlushSteps = 64;

// e (T, B, H) receives dL/dp (0 at inactive steps), dh0 (B, H) dL/dh0, dalpha
// (H, double) is accumulated, and so is dw (H x H, double; nullptr: the weight
// gradient is formed after the loop, weight_grad) where dw_in_loop.
template <typename T>
inline void bwd_steps(const Raw<T>& r, const T* g, const T* h, const T* u, T* e, T* dh0,
                      double* dalpha, double* dw) {
  const Clock& c = *r.clock;
  const int64_t B = r.n, H = r.H;
  int64_t kmax = 0;
  for (int64_t m = 0; m < c.g; ++m) kmax = std::max(kmax, c.k[m]);
  const int64_t slots = dw ? c.g * kOuterRows : 0;
  AlignedVec<T> dw_part(dw ? H * H : 0, T(0)), rows_e(slots * kmax);
  std::vector<const T*> prev(dw ? B : 0), rows_h(slots);
  std::vector<int64_t> nrows(c.g, 0);
  auto outer = [&](int64_t m, int64_t R, const T* a, int64_t lda, const T* const* x) {
    const int64_t lo = c.lo[m];
    outer_acc<T>(R, c.k[m], H - lo, a, lda, x, dw_part.data() + lo * H + lo, H);
  };
  auto drain = [&](int64_t m) {
    if (nrows[m] > 0) outer(m, nrows[m], rows_e.data() + m * kOuterRows * kmax, kmax, rows_h.data() + m * kOuterRows);
    nrows[m] = 0;
  };
  int64_t since_flush = 0;
  auto flush = [&] {
    for (int64_t j = 0; j < H * H; ++j) {
      dw[j] += double(dw_part[j]);
      dw_part[j] = T(0);
    }
    since_flush = 0;
  };
  // The carry's rows are padded so that each module's tiled product may write the
  // padded width of its columns [lo, H) (lo + round_up(H - lo) < H + lanes).
  const int64_t Hc = round_up(H, kLanes<T>) + kLanes<T>;
  AlignedVec<T> carry(B * Hc, T(0)), ebuf(B * H, T(0)), da_step(r.alpha ? H : 0, T(0));
  T* cr = carry.data();
  T* eb = ebuf.data();
  std::vector<char> on(c.g);
  std::vector<int64_t> last(c.g);  // each module's last active step not yet processed
  for (int64_t m = 0; m < c.g; ++m)
    last[m] = c.first[m] < r.Tn ? c.first[m] + (r.Tn - 1 - c.first[m]) / c.period[m] * c.period[m] : -1;
  for (int64_t t = r.Tn - 1; t >= 0; --t) {
    // the clock advances at every step, also past every sequence's end (where no
    // row runs), so that each module's last active step stays in step with t
    for (int64_t m = 0; m < c.g; ++m) {
      on[m] = last[m] == t;
      if (on[m]) last[m] -= c.period[m];
    }
    const int64_t n = r.rows_at(t);
    if (n == 0) continue;
    if (t >= kAhead + 1)  // the rows of step t - kAhead and the states they read
      for (int64_t i = 0, na = r.rows_at(t - kAhead); i < na; ++i) {
        const int64_t o = r.off(t - kAhead, i), o1 = r.off(t - kAhead - 1, i);
        prefetch_row<false>(g + o, H);
        prefetch_row<false>(h + o1, H);
        if (r.alpha) prefetch_row<false>(u + o, H);
        prefetch_row<true>(e + o, H);
      }
    for (int64_t m = 0; m < c.g; ++m) {
      const int64_t lo = c.lo[m], k = c.k[m];
      // delta(t) = grad_h(t) + the carry, formed in the carry itself
      for (int64_t i = 0; i < n; ++i) {
        const T* gb = g + r.off(t, i) + lo;
        T* cb = cr + i * Hc + lo;
        for_lanes<T>(k, [&](int64_t j, auto v) {
          using V = decltype(v);
          V gv, cv;
          ld(gv, gb + j);
          ld(cv, cb + j);
          st(cb + j, cv + gv);
        });
      }
      if (!on[m]) {  // delta passes straight through to h(t-1); dp is 0 here
        for (int64_t i = 0; i < n; ++i) std::fill(e + r.off(t, i) + lo, e + r.off(t, i) + lo + k, T(0));
        continue;
      }
      const T* a = r.alpha ? r.alpha + lo : nullptr;
      T* das = r.alpha ? da_step.data() + lo : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t off = r.off(t, i) + lo;
        const T* hp = (t > 0 ? h + r.off(t - 1, i) : r.h0 + r.row(i) * H) + lo;
        const T* ub = u + off;
        T* cb = cr + i * Hc + lo;
        T* ebi = eb + i * H + lo;
        T* eo = e + off;
        for_lanes<T>(k, [&](int64_t j, auto v) {
          using V = decltype(v);
          V d, uv;
          ld(d, cb + j);
          ld(uv, ub + j);
          V du = d, keep = V{};
          if (a) {
            V av, hv, dav;
            ld(av, a + j);
            ld(hv, hp + j);
            ld(dav, das + j);
            st(das + j, dav + d * (hv - uv));
            keep = av * d;
            du = (T(1) - av) * d;
          }
          st(cb + j, keep);
          const V ev = dphi_times(du, uv, !r.tanh);
          st(ebi + j, ev);
          st(eo + j, ev);
        });
      }
    }
    if (r.alpha)
      for (int64_t j = 0; j < H; ++j) {
        dalpha[j] += double(da_step[j]);
        da_step[j] = T(0);
      }
    // dL/dh_{j >= i}(t-1) += e_i W_{i, j >= i}, after every module's e_i is formed
    for (int64_t m = 0; m < c.g; ++m) {
      if (!on[m]) continue;
      const int64_t lo = c.lo[m];
      gemm_acc<T>(n, c.k[m], r.ld[m], H - lo, eb + lo, H, r.w[m], r.ld[m], cr + lo, Hc);
    }
    if (!dw) continue;
    // dW_{i, j >= i} += e_i(t)^T h_{j >= i}(t-1): off the recurrence's dependent
    // chain, so it fills the FMA slots that chain's latency leaves idle
    for (int64_t m = 0; m < c.g; ++m) {
      if (!on[m]) continue;
      const int64_t lo = c.lo[m], k = c.k[m];
      if (nrows[m] + n > kOuterRows) drain(m);
      if (n > kOuterRows) {  // a step with enough rows of its own
        for (int64_t i = 0; i < n; ++i) prev[i] = (t > 0 ? h + r.off(t - 1, i) : r.h0 + r.row(i) * H) + lo;
        outer(m, n, eb + lo, H, prev.data());
        continue;
      }
      T* re = rows_e.data() + (m * kOuterRows + nrows[m]) * kmax;
      const T** rh = rows_h.data() + m * kOuterRows + nrows[m];
      for (int64_t i = 0; i < n; ++i) {
        std::copy(eb + i * H + lo, eb + i * H + lo + k, re + i * kmax);
        rh[i] = (t > 0 ? h + r.off(t - 1, i) : r.h0 + r.row(i) * H) + lo;
      }
      nrows[m] += n;
    }
    if (++since_flush == kFlushSteps) flush();
  }
  if (dw) {
    for (int64_t m = 0; m < c.g; ++m) drain(m);
    flush();
  }
  for (int64_t i = 0; i < B; ++i) std::copy(cr + i * Hc, cr + i * Hc + H, dh0 + r.row(i) * H);
}

MTS_CPU_CLONES void fwd_steps_f32(const Raw<float>& r, const float* p, float* h, float* u) {
  fwd_steps<float>(r, p, h, u);
}
MTS_CPU_CLONES void bwd_steps_f32(const Raw<float>& r, const float* g, const float* h,
                                  const float* u, float* e, float* dh0, double* dalpha, double* dw) {
  bwd_steps<float>(r, g, h, u, e, dh0, dalpha, dw);
}
inline void run_fwd(const Raw<float>& r, const float* p, float* h, float* u) {
  fwd_steps_f32(r, p, h, u);
}
inline void run_bwd(const Raw<float>& r, const float* g, const float* h, const float* u, float* e,
                    float* dh0, double* dalpha, double* dw) {
  bwd_steps_f32(r, g, h, u, e, dh0, dalpha, dw);
}
inline void run_fwd(const Raw<double>& r, const double* p, double* h, double* u) {
  fwd_steps<double>(r, p, h, u);
}
inline void run_bwd(const Raw<double>& r, const double* g, const double* h, const double* u,
                    double* e, double* dh0, double* dalpha, double* dw) {
  bwd_steps<double>(r, g, h, u, e, dh0, dalpha, dw);
}

inline Tensor as_dtype(const Tensor& t, ScalarType dtype) {
  return t.scalar_type() == dtype ? t : torch::stable::to(t, dtype);
}
// float32 for float16/bfloat16, contiguous.
inline Tensor compute(const Tensor& t) {
  return contiguous_cpu(as_dtype(t, opmath_dtype(t.scalar_type())));
}

// Packed weight blocks (see Raw::w) for the forward (transposed) or backward.
template <typename T>
AlignedVec<T> pack_weights(const T* w, const Clock& c, int64_t H, bool fwd,
                            std::vector<const T*>& blocks, std::vector<int64_t>& lds) {
  std::vector<int64_t> offs;
  int64_t total = 0;
  for (int64_t m = 0; m < c.g; ++m) {
    const int64_t K = H - c.lo[m];
    const int64_t ld = round_up(fwd ? c.k[m] : K, kLanes<T>);
    lds.push_back(ld);
    offs.push_back(total);
    total += (fwd ? K : c.k[m]) * ld;
  }
  AlignedVec<T> pool(total, T(0));
  for (int64_t m = 0; m < c.g; ++m) {
    const int64_t lo = c.lo[m], k = c.k[m], K = H - lo, ld = lds[m];
    T* dst = pool.data() + offs[m];
    for (int64_t a = 0; a < k; ++a)      // block row (unit lo + a)
      for (int64_t b = 0; b < K; ++b) {  // column (unit lo + b)
        const T v = w[(lo + a) * H + lo + b];
        if (fwd)
          dst[b * ld + a] = v;
        else
          dst[a * ld + b] = v;
      }
  }
  for (int64_t m = 0; m < c.g; ++m) blocks.push_back(pool.data() + offs[m]);
  return pool;
}

template <typename T>
Raw<T> raw_of(const Shape& s, bool tanh, const std::optional<Tensor>& alpha, const Tensor& h0,
              const Clock& c, const RowOrder& o, bool ragged) {
  return Raw<T>{s.T, s.B, s.H, tanh, alpha ? ptr<T>(*alpha) : nullptr, ptr<T>(h0), &c, {}, {},
                ragged ? o.len.data() : nullptr, ragged ? o.order.data() : nullptr,
                ragged ? o.active.data() : nullptr, s.B, 0};
}

template <typename F>
decltype(auto) dispatch_compute(ScalarType t, const char* name, F&& f) {
  if (t == ScalarType::Double) return f(TypeTag<double>{});
  MTS_CHECK(t == ScalarType::Float, name, ": unexpected compute dtype ", torch::headeronly::toString(t));
  return f(TypeTag<float>{});
}

std::tuple<Tensor, Tensor> clockwork_rnn_fwd(Tensor p_in, Tensor w_in, std::optional<Tensor> h0_in,
                                             std::optional<Tensor> alpha_in,
                                             std::vector<int64_t> module_sizes,
                                             std::vector<int64_t> periods,
                                             std::vector<int64_t> first_steps,
                                             std::string nonlinearity,
                                             std::optional<Tensor> lengths) {
  const char* op = "clockwork_rnn_fwd";
  const Shape s = check_args(op, "p", p_in, w_in, h0_in, alpha_in, torch::headeronly::DeviceType::CPU);
  const bool tanh = parse_tanh(nonlinearity, op);
  const Clock clock = make_clock(s.T, s.H, module_sizes, periods, first_steps, op);
  check_lengths(op, lengths, s.B, p_in.device());
  const RowOrder order = row_order(lengths, s.B, s.T, op);
  const Tensor p = compute(p_in), w = compute(w_in);
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(p, {s.B, s.H});
  const std::optional<Tensor> alpha = alpha_in ? std::optional<Tensor>(compute(*alpha_in)) : std::nullopt;
  Tensor h = empty_like_cpu(p);
  std::optional<Tensor> u;
  if (alpha) u = empty_like_cpu(p);
  dispatch_compute(p.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Raw<T> r = raw_of<T>(s, tanh, alpha, h0, clock, order, lengths.has_value());
    const AlignedVec<T> pool = pack_weights<T>(ptr<T>(w), clock, s.H, true, r.w, r.ld);
    run_groups(r, order, [&](const Raw<T>& rg, int64_t) {
      run_fwd(rg, ptr<T>(p), mut<T>(h), u ? mut<T>(*u) : nullptr);
    });
    zero_padded(r, mut<T>(h));
    if (u) zero_padded(r, mut<T>(*u));
  });
  const ScalarType dtype = p_in.scalar_type();
  return {as_dtype(h, dtype), u ? as_dtype(*u, dtype) : torch::stable::new_empty(p_in, {0})};
}

// Above this many batch rows the per-row GEMMs of a slow module's weight gradient
// cost more in call overhead (a few microseconds each) than gathering its rows.
constexpr int64_t kMaxSplitRows = 16;

// dW block row of module m: sum over its active steps t of e_m(t)^T h_{lo:}(t-1)
// (h0 for t = 0). One chunked reduction over the (t, b) pairs (ragged_rows.h:
// gram_rows; the steps past a sequence's length, where e is 0, left out): in
// place for the period-1 module, whose pairs are consecutive rows; a slower
// module's pairs, P steps apart, gathered 512 at a time into L2-resident tiles
// (a packed copy of all of them had cost 10 of the backward's 70 ms at B=32,
// H=512, T=1024 with periods 1..128). A small batch instead takes one GEMM per
// batch row on strided views of e and h, its active steps being evenly strided.
template <typename T>
void weight_grad(const Clock& c, const Shape& s, const Tensor& e, const Tensor& h, const Tensor& h0,
                 bool has_h0, const std::vector<int64_t>* len, Tensor& dw) {
  constexpr ScalarType dtype = std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
  const Device cpu(torch::headeronly::DeviceType::CPU);
  const int64_t B = s.B, H = s.H;
  auto view = [&](const T* p, std::vector<int64_t> sizes, std::vector<int64_t> strides) {
    return torch::stable::from_blob(const_cast<T*>(p), sizes, strides, cpu, dtype);
  };
  // out += a^T b in reduction chunks fixed by the shape (csrc/blas_blocked.h)
  auto acc = [&](const Tensor& out, const Tensor& a, const Tensor& b) { blocked_gram<T>(a, b, out); };
  T* ep = const_cast<T*>(ptr<T>(e));
  T* hp = const_cast<T*>(ptr<T>(h));
  std::vector<int64_t> rows;
  for (int64_t m = 0; m < c.g; ++m) {
    const int64_t lo = c.lo[m], k = c.k[m], K = H - lo, P = c.period[m], f = c.first[m];
    if (f >= s.T) continue;
    const Tensor block = view(mut<T>(dw) + lo * H + lo, {k, K}, {H, 1});
    const int64_t t1 = f > 0 ? f : f + P;  // first active step reading h, not h0
    const int64_t n1 = t1 < s.T ? (s.T - 1 - t1) / P + 1 : 0;
    if (n1 > 0 && (P == 1 || B > kMaxSplitRows)) {
      rows.clear();
      for (int64_t t = t1; t < s.T; t += P)
        for (int64_t b = 0; b < B; ++b)
          if (!len || t < (*len)[b]) rows.push_back(t * B + b);
      const projection::Operand<T> eo{ep + lo, B * H, H, H}, ho{hp + lo, B * H, H, H};
      projection::gram_rows<T>(rows, B, eo, k, ho, B, K, true, mut<T>(dw) + lo * H + lo, H, nullptr);
    } else if (n1 > 0) {
      for (int64_t b = 0; b < B; ++b)
        acc(block, view(ep + (t1 * B + b) * H + lo, {n1, k}, {P * B * H, 1}),
            view(hp + ((t1 - 1) * B + b) * H + lo, {n1, K}, {P * B * H, 1}));
    }
    if (f == 0 && has_h0) acc(block, view(ep + lo, {B, k}, {H, 1}), view(ptr<T>(h0) + lo, {B, K}, {H, 1}));
  }
}

std::tuple<Tensor, Tensor, Tensor, Tensor> clockwork_rnn_bwd(
    Tensor grad_h, Tensor w_in, Tensor h_in, Tensor u_in, std::optional<Tensor> h0_in,
    std::optional<Tensor> alpha_in, std::vector<int64_t> module_sizes, std::vector<int64_t> periods,
    std::vector<int64_t> first_steps, std::string nonlinearity, std::optional<Tensor> lengths) {
  const char* op = "clockwork_rnn_bwd";
  const Shape s = check_args(op, "h", h_in, w_in, h0_in, alpha_in, torch::headeronly::DeviceType::CPU);
  const bool tanh = parse_tanh(nonlinearity, op);
  const Clock clock = make_clock(s.T, s.H, module_sizes, periods, first_steps, op);
  check_lengths(op, lengths, s.B, h_in.device());
  check_like_h(op, h_in, grad_h, u_in, alpha_in.has_value());
  const RowOrder order = row_order(lengths, s.B, s.T, op);
  const Tensor h = compute(h_in), w = compute(w_in), g = compute(grad_h);
  const Tensor u = alpha_in ? compute(u_in) : h;
  const Tensor h0 = h0_in ? compute(*h0_in) : torch::stable::new_zeros(h, {s.B, s.H});
  const std::optional<Tensor> alpha = alpha_in ? std::optional<Tensor>(compute(*alpha_in)) : std::nullopt;
  Tensor e = empty_like_cpu(h);
  Tensor dh0 = torch::stable::new_zeros(h, {s.B, s.H});
  Tensor dw = torch::stable::new_zeros(h, {s.H, s.H});
  std::optional<Tensor> dalpha;
  dispatch_compute(h.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    Raw<T> r = raw_of<T>(s, tanh, alpha, h0, clock, order, lengths.has_value());
    const AlignedVec<T> pool = pack_weights<T>(ptr<T>(w), clock, s.H, false, r.w, r.ld);
    // dalpha (and an in-loop dW) per group, summed in group order
    const int64_t groups = group_count(r), HH = s.H * s.H;
    const bool dw_loop = dw_in_loop(r);
    std::vector<double> da_groups(alpha ? groups * s.H : 0, 0.0), da(alpha ? s.H : 0, 0.0);
    std::vector<double> dw_groups(dw_loop ? groups * HH : 0, 0.0);
    run_groups(r, order, [&](const Raw<T>& rg, int64_t q) {
      run_bwd(rg, ptr<T>(g), ptr<T>(h), ptr<T>(u), mut<T>(e), mut<T>(dh0),
              alpha ? da_groups.data() + q * s.H : nullptr, dw_loop ? dw_groups.data() + q * HH : nullptr);
    });
    for (int64_t q = 0; alpha && q < groups; ++q)
      for (int64_t j = 0; j < s.H; ++j) da[j] += da_groups[q * s.H + j];
    zero_padded(r, mut<T>(e));
    if (dw_loop) {
      for (int64_t q = 1; q < groups; ++q)
        for (int64_t j = 0; j < HH; ++j) dw_groups[j] += dw_groups[q * HH + j];
      T* out = mut<T>(dw);  // the blocks below the diagonal were never touched: exactly 0
      for (int64_t j = 0; j < HH; ++j) out[j] = static_cast<T>(dw_groups[j]);
    } else {
      weight_grad<T>(clock, s, e, h, h0, h0_in.has_value(), lengths ? &order.len : nullptr, dw);
    }
    if (alpha) {
      dalpha = torch::stable::new_empty(h, {s.H});
      T* out = mut<T>(*dalpha);
      for (int64_t j = 0; j < s.H; ++j) out[j] = static_cast<T>(da[j]);
    }
  });
  const ScalarType dtype = h_in.scalar_type();
  auto out = [&](const Tensor& t) { return as_dtype(t, dtype); };
  return {out(e), out(dw), out(dh0), dalpha ? out(*dalpha) : torch::stable::new_empty(w_in, {0})};
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, clockwork)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("clockwork_rnn_fwd", TORCH_BOX(&mts::clockwork::clockwork_rnn_fwd));
  m.impl("clockwork_rnn_bwd", TORCH_BOX(&mts::clockwork::clockwork_rnn_bwd));
}
