// The input projection of a clockwork layer at its modules' active steps only
// (schemas in csrc/registration.cpp). With the clock of clockwork_rnn_fwd (module
// m covers units [lo_m, lo_m + k_m), active at t >= first_m with
// (t - first_m) % P_m == 0) and M[t, b, i] = 1 where unit i's module is active at
// t and t < L_b, else 0:
//
//   clockwork_projection:        out = M * (x W^T + b_ih + b_hh)        (T, B, N)
//   clockwork_projection_dx:     dx  = (M * g) W                        (T, B, K)
//   clockwork_projection_grads:  dW  = (M * g)^T x,  db = sum (M * g)   over all (t, b)
//
// The recurrence reads module m's projection at its active steps only, so a
// module of period P needs 1/P of the rows: with periods 1, 2, ..., 128 about a
// quarter of the dense projection's multiply-adds, and the same for both
// gradients (the recurrence's dp is 0 elsewhere).
//
// The forward and dx are cut into time chunks (about 2^17 elements of x and out), each
// chunk's output rows written by one task (zeros first, then module by module):
// a module's active rows of a chunk are one GEMM, in place when they are
// consecutive (the period-1 module without lengths), else gathered into an
// L2-resident tile. The chunks go to the threads in zigzag order (first, last,
// second, ...), so that each thread's contiguous share mixes early steps (every
// sequence running) with late ones (only the long ones). dW is one chunked
// reduction per module (ragged_rows.h: gram_rows). Bitwise the same on any
// thread count: every output row and reduction chunk is fixed by the shape,
// the clock and the lengths.
#include <algorithm>
#include <numeric>
#include <vector>

#include "../clockwork/clockwork_args.h"
#include "../cpu_alloc.h"
#include "../lengths.h"
#include "ragged_rows.h"

HIDDEN_NAMESPACE_BEGIN(mts, projection)
namespace {

using clockwork::Clock;

struct Plan {
  int64_t T, B;
  Clock clock;
  std::vector<int64_t> len;  // empty: every sequence has T steps
  bool valid(int64_t t, int64_t b) const { return len.empty() || t < len[b]; }
  // module m's first active step >= t
  int64_t next_active(int64_t m, int64_t t) const {
    const int64_t P = clock.period[m], f = clock.first[m];
    return f >= t ? f : f + (t - f + P - 1) / P * P;
  }
  // flat rows t * B + b of module m's active steps in [ta, tb) (valid ones), ascending
  void rows(int64_t m, int64_t ta, int64_t tb, std::vector<int64_t>& out) const {
    out.clear();
    for (int64_t t = next_active(m, ta); t < tb; t += clock.period[m])
      for (int64_t b = 0; b < B; ++b)
        if (valid(t, b)) out.push_back(t * B + b);
  }
  // Time chunks [c * S, (c + 1) * S) in zigzag order. About 2^17 elements of x
  // and out rows each (at least kTileRows rows, at most 8192): at I = 8, H = 64
  // chunks of 512 rows made 128 GEMM calls of a few microseconds' fixed cost
  // for a projection of 0.3 ms.
  int64_t chunk_steps(int64_t width) const {
    const int64_t rows = std::clamp<int64_t>((int64_t(1) << 17) / std::max<int64_t>(width, 1), kTileRows, 8192);
    return std::max<int64_t>(1, rows / std::max<int64_t>(B, 1));
  }
  std::vector<int64_t> chunk_order(int64_t S) const {
    const int64_t n = (T + S - 1) / S;
    std::vector<int64_t> order;
    for (int64_t lo = 0, hi = n - 1; lo <= hi; ++lo, --hi) {
      order.push_back(lo);
      if (hi != lo) order.push_back(hi);
    }
    return order;
  }
};

Plan plan_of(const char* op, const Tensor& x, int64_t N, const std::vector<int64_t>& sizes,
             const std::vector<int64_t>& periods, const std::vector<int64_t>& firsts,
             const std::optional<Tensor>& lengths) {
  Plan p{x.size(0), x.size(1), clockwork::make_clock(x.size(0), N, sizes, periods, firsts, op), {}};
  if (lengths) {
    check_lengths(op, lengths, p.B, x.device());
    p.len = lengths_on_host(op, *lengths, p.T);
  }
  return p;
}

// Consecutive rows of a uniformly strided operand are one matrix.
bool consecutive(const std::vector<int64_t>& rows) { return rows.back() - rows.front() + 1 == int64_t(rows.size()); }

// f(ta, tb) for each time chunk of rows `width` elements wide (x's and out's)
template <typename F>
void for_chunks(const Plan& p, int64_t width, F&& f) {
  const int64_t S = p.chunk_steps(width);
  const std::vector<int64_t> order = p.chunk_order(S);
  parallel_tasks(static_cast<int64_t>(order.size()), [&](int64_t i) {
    const int64_t ta = order[i] * S;
    f(ta, std::min(ta + S, p.T));
  });
}

template <typename T>
Tensor project(const Tensor& x_in, const Tensor& w, const std::optional<Tensor>& b1,
               const std::optional<Tensor>& b2, const Plan& p) {
  const Tensor x = with_unit_rows(x_in);
  const int64_t K = x.size(2), N = w.size(0), B = p.B;
  const Clock& c = p.clock;
  Tensor out = empty_cpu(x, {p.T, B, N});
  if (out.numel() == 0) return out;
  const AlignedVec<T> bias = summed_bias<T>(b1, b2, N);
  const Operand<T> xo = operand<T>(x);
  const bool flat = uniform(x);
  T* op = mut<T>(out);
  const T* wp = ptr<T>(w);
  const int64_t ws0 = w.stride(0), ws1 = w.stride(1);
  for_chunks(p, K + N, [&](int64_t ta, int64_t tb) {
    std::vector<int64_t> rows, next(c.g);
    for (int64_t m = 0; m < c.g; ++m) next[m] = p.next_active(m, ta);
    for (int64_t t = ta; t < tb; ++t) {
      for (int64_t m = 0; m < c.g; ++m) {
        const bool on = next[m] == t;
        if (on) next[m] += c.period[m];
        for (int64_t b = 0; b < B && !on; ++b)
          if (p.valid(t, b)) std::fill_n(op + (t * B + b) * N + c.lo[m], c.k[m], T(0));
      }
      for (int64_t b = 0; b < B; ++b)
        if (!p.valid(t, b)) std::fill_n(op + (t * B + b) * N, N, T(0));
    }
    for (int64_t m = 0; m < c.g; ++m) {
      p.rows(m, ta, tb, rows);
      if (rows.empty()) continue;
      const int64_t n = static_cast<int64_t>(rows.size()), lo = c.lo[m], k = c.k[m];
      const bool run = consecutive(rows);
      const T* a = xo.row(rows[0], B);
      int64_t lda = xo.fs;
      if (!(run && flat)) {
        T* xb = tile_buffer<T>(0, n * K);
        for (int64_t q = 0; q < n; ++q) std::copy_n(xo.row(rows[q], B), K, xb + q * K);
        a = xb, lda = K;
      }
      T* cp = run ? op + rows[0] * N + lo : tile_buffer<T>(1, n * k);
      const int64_t ldc = run ? N : k;
      for (int64_t q = 0; q < n; ++q) std::copy_n(bias.data() + lo, k, cp + q * ldc);
      // rows (n, K) @ W[lo:lo+k]^T: element (kk, j) is w[(lo + j) * ws0 + kk * ws1]
      cpu::gemm_acc<T>(n, K, k, a, lda, 1, wp + lo * ws0, ws1, ws0, cp, ldc, 1);
      if (!run)
        for (int64_t q = 0; q < n; ++q) std::copy_n(cp + q * k, k, op + rows[q] * N + lo);
    }
  });
  return out;
}

template <typename T>
Tensor project_dx(const Tensor& g_in, const Tensor& w, const Plan& p) {
  const Tensor g = with_unit_rows(g_in);
  const int64_t K = w.size(1), B = p.B;
  const Clock& c = p.clock;
  Tensor dx = empty_cpu(g, {p.T, B, K});
  if (dx.numel() == 0) return dx;
  const Operand<T> go = operand<T>(g);
  const bool flat = uniform(g);
  T* dp = mut<T>(dx);
  const T* wp = ptr<T>(w);
  const int64_t ws0 = w.stride(0), ws1 = w.stride(1);
  for_chunks(p, K + w.size(0), [&](int64_t ta, int64_t tb) {
    std::fill(dp + ta * B * K, dp + tb * B * K, T(0));
    std::vector<int64_t> rows;
    for (int64_t m = 0; m < c.g; ++m) {
      p.rows(m, ta, tb, rows);
      if (rows.empty()) continue;
      const int64_t n = static_cast<int64_t>(rows.size()), lo = c.lo[m], k = c.k[m];
      const bool run = consecutive(rows);
      const T* a = go.row(rows[0], B) + lo;
      int64_t lda = go.fs;
      if (!(run && flat)) {
        T* gb = tile_buffer<T>(0, n * k);
        for (int64_t q = 0; q < n; ++q) std::copy_n(go.row(rows[q], B) + lo, k, gb + q * k);
        a = gb, lda = k;
      }
      T* cp = dp + rows[0] * K;
      if (!run) {
        cp = tile_buffer<T>(1, n * K);
        for (int64_t q = 0; q < n; ++q) std::copy_n(dp + rows[q] * K, K, cp + q * K);
      }
      // g rows (n, k) @ W[lo:lo+k] (k, K)
      cpu::gemm_acc<T>(n, k, K, a, lda, 1, wp + lo * ws0, ws0, ws1, cp, K, 1);
      if (!run)
        for (int64_t q = 0; q < n; ++q) std::copy_n(cp + q * K, K, dp + rows[q] * K);
    }
  });
  return dx;
}

template <typename T>
std::tuple<Tensor, Tensor> grads(const Tensor& g_in, const Tensor& x_in, const Plan& p, bool with_bias) {
  const Tensor g = with_unit_rows(g_in), x = with_unit_rows(x_in);
  const int64_t N = g.size(2), K = x.size(2);
  Tensor dw = torch::stable::new_zeros(x, {N, K});
  Tensor db = torch::stable::new_zeros(x, {with_bias ? N : 0});
  const Operand<T> go = operand<T>(g), xo = operand<T>(x);
  const bool in_place = uniform(g) && uniform(x);
  std::vector<int64_t> rows;
  for (int64_t m = 0; m < p.clock.g; ++m) {
    const int64_t lo = p.clock.lo[m];
    p.rows(m, 0, p.T, rows);
    const Operand<T> gm{go.p + lo, go.st, go.sb, go.fs};
    gram_rows<T>(rows, p.B, gm, p.clock.k[m], xo, 0, K, in_place, mut<T>(dw) + lo * K, K,
                 with_bias ? mut<T>(db) + lo : nullptr);
  }
  return {dw, db};
}

void check_grad(const char* op, const Tensor& grad, int64_t N, const Tensor& like) {
  MTS_CHECK(grad.dim() == 3 && grad.size(2) == N, op, ": grad must be 3-D (T, B, N) with N = ", N,
            " (the sum of module_sizes), got shape ", shape_str(grad.sizes()));
  check_float(op, "grad", grad);
  check_operand(op, "grad", grad, grad.sizes(), like);
}

Tensor clockwork_projection(Tensor x, Tensor weight, std::optional<Tensor> bias_ih, std::optional<Tensor> bias_hh,
                            std::vector<int64_t> module_sizes, std::vector<int64_t> periods,
                            std::vector<int64_t> first_steps, std::optional<Tensor> lengths) {
  const char* op = "clockwork_projection";
  check_projection_args(op, x, weight, bias_ih, bias_hh);
  const Plan p = plan_of(op, x, weight.size(0), module_sizes, periods, first_steps, lengths);
  return dispatch(x.scalar_type(), [&](auto tag) {
    return project<typename decltype(tag)::type>(x, weight, bias_ih, bias_hh, p);
  });
}

Tensor clockwork_projection_dx(Tensor grad, Tensor weight, std::vector<int64_t> module_sizes,
                               std::vector<int64_t> periods, std::vector<int64_t> first_steps,
                               std::optional<Tensor> lengths) {
  const char* op = "clockwork_projection_dx";
  MTS_CHECK(weight.dim() == 2, op, ": weight must be 2-D (N, K), got shape ", shape_str(weight.sizes()));
  check_float(op, "weight", weight);
  check_grad(op, grad, weight.size(0), weight);
  check_operand(op, "weight", weight, weight.sizes(), grad);
  const Plan p = plan_of(op, grad, weight.size(0), module_sizes, periods, first_steps, lengths);
  return dispatch(grad.scalar_type(), [&](auto tag) {
    return project_dx<typename decltype(tag)::type>(grad, weight, p);
  });
}

std::tuple<Tensor, Tensor> clockwork_projection_grads(Tensor grad, Tensor x, std::vector<int64_t> module_sizes,
                                                      std::vector<int64_t> periods,
                                                      std::vector<int64_t> first_steps,
                                                      std::optional<Tensor> lengths, bool with_bias) {
  const char* op = "clockwork_projection_grads";
  check_grads_args(op, grad, x);
  const Plan p = plan_of(op, x, grad.size(2), module_sizes, periods, first_steps, lengths);
  return dispatch(x.scalar_type(), [&](auto tag) {
    return grads<typename decltype(tag)::type>(grad, x, p, with_bias);
  });
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, projection)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("clockwork_projection", TORCH_BOX(&mts::projection::clockwork_projection));
  m.impl("clockwork_projection_dx", TORCH_BOX(&mts::projection::clockwork_projection_dx));
  m.impl("clockwork_projection_grads", TORCH_BOX(&mts::projection::clockwork_projection_grads));
}
