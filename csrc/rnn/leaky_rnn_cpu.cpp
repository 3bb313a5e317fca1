// CPU registration of the dense leaky recurrence.
//
// The time loop runs over raw pointers for every size: per step one product
// (two with skip) and one vectorized pass for the nonlinearity, the leak and, in
// the backward, the carries and dalpha, so no per-step ATen pointwise ops and no
// (T, B, H) delta copy. The product is a register-tiled loop for small steps
// (B*H*H <= kSmallWork, where a BLAS call's fixed cost would dominate) and a
// BLAS GEMM above, in blocks fixed by the shape (bitwise the same on any
// thread count, csrc/blas_blocked.h). The threads share the work by batch rows
// where there are enough of them (run_groups: each group's whole time loop on
// one thread), else by a step's columns (the forward's team, FwdTeam).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "../blas_blocked.h"
#include "../cpu_alloc.h"
#include "../cpu_blas.h"
#include "../projection/ragged_rows.h"
#include "../row_groups.h"
#include "../step_team.h"
#include "leaky_rnn_impl.h"
#include "tangent_args.h"

#include "../cpu_vec.h"
#include "leaky_rnn_math.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)
namespace {

using namespace ::mts::cpu;


// The time loops over raw pointers (processing order k; reverse maps k to time).
// The (B, H) operands of the per-step product are padded to Np columns (a
// multiple of the vector width) in private buffers: the weights (zero columns)
// and the accumulators; the (T, B, H) tensors are read and written unpadded.
//
// With lengths the loop walks the rows in order of decreasing length (`order`,
// a permutation of indices, not of data), so the rows still running at step k
// are the first n_k and the others leave the per-step product. Their delayed
// states sit at different places per row; the forward's product needs them as
// contiguous (n_k, H) rows, so the forward also keeps the states of the last
// max(d, s) + 1 steps in processing order (a ring, written by the pointwise pass
// beside h; rows running at step k ran at k - d too, as the first n_k of them),
// or, where that ring would be large, gathers them (a separate copy pass, about
// a fifth of a ragged forward's time at B=32, H=256). The backward reads them
// per row where it needs them (the leak) and never gathers.
template <typename T>
struct Raw {
  int64_t Tn, B, H, Np, dilation, skip;
  bool reverse, tanh;
  const T* alpha;  // nullptr: no leak
  const T* w;      // (H, Np) forward: W^T (z = h W^T); backward: W (delta += e W)
  const T* ws;     // the same for W_skip; nullptr without skip
  const T* h0;     // (B, H)
  // c (n, Np) += a (n, H; row stride H) @ m (H, Np): nullptr for the register-tiled
  // loop above, else a BLAS call (blas_product) for steps too large for it.
  void (*gemm)(int64_t B, int64_t K, int64_t Np, const T* a, const T* m, T* c);
  const int64_t* len;     // (B,) sequence lengths; nullptr: every row runs Tn steps
  const int64_t* order;   // rows by decreasing length (with len)
  const int64_t* active;  // (Tn,) rows still running at step k (with len)
  const int64_t* pos;     // (B,) row b's place in order (with len)
  // The call's rows (the batch, or a group's: see run_groups): n of them; with
  // len in ascending batch index in asc (nullptr: rows 0..B-1), else rows row0 + i.
  const int64_t* asc;
  int64_t n, row0;
  bool ragged() const { return len != nullptr; }
  int64_t offset(int64_t k) const { return (reverse ? Tn - 1 - k : k) * B * H; }
  // the call's (n, H) rows of step k, one block without lengths
  int64_t base(int64_t k) const { return offset(k) + row0 * H; }
  int64_t rows_at(int64_t k) const { return len ? active[k] : n; }
  int64_t row(int64_t i) const { return len ? order[i] : row0 + i; }
  // Offset of row i's (of the processing order) step k in a (T, B, H) tensor.
  int64_t row_offset(int64_t k, int64_t i) const {
    if (!len) return base(k) + i * H;
    const int64_t b = order[i];
    return ((reverse ? len[b] - 1 - k : k) * B + b) * H;
  }
};

// f(i) for each of the n rows of the processing order running at step k, in the
// order of their rows in the (T, B, H) tensors (ascending batch index), not in
// the processing order: the prefetcher follows an ascending stream of rows, and
// the scattered 1 KiB rows of the processing order took the backward's pointwise
// pass 2.2x its time without lengths (B=32, H=256, T=1024).
template <typename T, typename F>
inline void for_rows(const Raw<T>& r, int64_t k, int64_t n, F&& f) {
  if (!r.ragged()) {
    for (int64_t i = 0; i < n; ++i) f(i);
    return;
  }
  for (int64_t j = 0, m = r.asc ? r.n : r.B; j < m; ++j) {
    const int64_t b = r.asc ? r.asc[j] : j;
    if (r.len[b] > k) f(r.pos[b]);
  }
}

template <typename T>
inline void product(const Raw<T>& r, int64_t n, const T* a, const T* m, T* c) {
  if (r.gemm)
    r.gemm(n, r.H, r.Np, a, m, c);
  else
    matmul_acc<T>(n, r.H, r.Np, a, r.H, m, c);
}

// The (n, H) state rows step k reads from `delay` steps back (h0 before the
// start): a view of h itself without lengths, else gathered into buf.
template <typename T>
inline const T* delayed_rows(const Raw<T>& r, int64_t k, int64_t delay, int64_t n, const T* h,
                             T* buf) {
  if (!r.ragged()) return k >= delay ? h + r.base(k - delay) : r.h0 + r.row0 * r.H;
  for (int64_t i = 0; i < n; ++i) {
    const T* src = k >= delay ? h + r.row_offset(k - delay, i) : r.h0 + r.row(i) * r.H;
    std::copy(src, src + r.H, buf + i * r.H);
  }
  return buf;
}

// The per-step product through torch's BLAS (MKL / OpenBLAS) on views of the
// loop's buffers, in blocks fixed by the shape (csrc/blas_blocked.h: the same
// result on any thread count); out of line, so the cloned loops call it as it is.
template <typename T>
__attribute__((noinline)) void blas_product(int64_t B, int64_t K, int64_t Np, const T* a,
                                            const T* m, T* c) {
  blocked_gemm_acc<T>(B, K, Np, {a, K, 1}, {m, Np, 1}, {c, Np, 1});
}

// A group's per-step product (see run_groups): one sequential BLAS call, the
// group's task being the parallelism.
template <typename T>
__attribute__((noinline)) void blas_rows(int64_t B, int64_t K, int64_t Np, const T* a, const T* m, T* c) {
  gemm_acc<T>(B, K, Np, a, K, 1, m, Np, 1, c, Np, 1);
}

// (H, H) -> (H, Np), zero padding columns.
template <typename T>
AlignedVec<T> padded(const T* m, int64_t H, int64_t Np) {
  AlignedVec<T> out(H * Np, T(0));
  for (int64_t k = 0; k < H; ++k) std::copy(m + k * H, m + (k + 1) * H, out.data() + k * Np);
  return out;
}

// Slots of the forward's processing-order state ring (see Raw), 0: gather
// instead (no lengths, or a ring above kRingElems elements).
constexpr int64_t kRingElems = int64_t(1) << 22;
template <typename T>
int64_t ring_slots(const Raw<T>& r) {
  if (!r.ragged()) return 0;
  const int64_t slots = std::min(std::max(r.dilation, r.skip), r.Tn) + 1;
  return slots * r.n * r.H <= kRingElems ? slots : 0;
}

// Step k's pointwise pass over columns [j0, j1) of its n rows: u = phi(z), h
// (with the leak), and the state ring's row (rs: processing order) when given.
template <typename T>
inline void fwd_point(const Raw<T>& r, int64_t k, int64_t n, const T* z, const T* hd, T* rs, T* h, T* u,
                      int64_t j0, int64_t j1) {
  for_rows(r, k, n, [&](int64_t i) {
    const int64_t off = r.row_offset(k, i);
    const T* zb = z + i * r.Np;
    const T* hb = hd + i * r.H;
    T* ub = u + off;  // == h's row without leak
    T* htb = h + off;
    T* rb = rs ? rs + i * r.H : nullptr;
    for_lanes<T>(j0, j1, [&](int64_t j, auto v) {
      using V = decltype(v);
      V zv, uv;
      ld(zv, zb + j);
      uv = r.tanh ? tanh_of(zv) : relu_of(zv);
      // with the ring nothing reads h back in this loop: stored past the caches
      if (rb) st_stream(ub + j, uv);
      else st(ub + j, uv);
      V hn = uv;
      if (r.alpha) {
        V a, hv;
        ld(a, r.alpha + j);
        ld(hv, hb + j);
        hn = leak_mix(a, hv, uv);
        if (rb) st_stream(htb + j, hn);
        else st(htb + j, hn);
      }
      if (rb) st(rb + j, hn);
    });
  });
}

// Prefetch of step k's rows (cpu_vec.h prefetch_row) in the register-tiled
// loops, whose steps are short enough for memory latency to show: the forward's
// p, h and u; the backward's grad, u, e and, with the leak, h_{k-d}. Where a
// step is BLAS-sized its rows are long streams the hardware prefetcher follows.
template <typename T>
inline void prefetch_fwd(const Raw<T>& r, int64_t k, const T* p, const T* h, const T* u) {
  if (k >= r.Tn) return;
  for (int64_t i = 0, n = r.rows_at(k); i < n; ++i) {
    const int64_t off = r.row_offset(k, i);
    prefetch_row<false>(p + off, r.H);
    prefetch_row<true>(u + off, r.H);
    if (u != h) prefetch_row<true>(h + off, r.H);
  }
}
template <typename T>
inline void prefetch_bwd(const Raw<T>& r, int64_t k, const T* g, const T* h, const T* u, const T* e) {
  if (k < 0) return;
  for (int64_t i = 0, n = r.rows_at(k); i < n; ++i) {
    const int64_t off = r.row_offset(k, i);
    prefetch_row<false>(g + off, r.H);
    prefetch_row<false>(u + off, r.H);
    prefetch_row<true>(e + off, r.H);
    if (r.alpha && k >= r.dilation) prefetch_row<false>(h + r.row_offset(k - r.dilation, i), r.H);
  }
}

// Step k's z columns [j0, j1) from p (the product accumulates into them).
template <typename T>
inline void fwd_copy_in(const Raw<T>& r, int64_t k, int64_t n, const T* p, T* z, int64_t j0, int64_t j1) {
  for_rows(r, k, n, [&](int64_t i) {
    const T* pt = p + r.row_offset(k, i);
    std::copy(pt + j0, pt + j1, z + i * r.Np + j0);
  });
}

// Column blocks of a BLAS step (run_steps items), fixed by the shape (B, not a
// step's running rows, so every step of a call cuts the same way): one block
// below kSplitWork multiply-adds, else halves (at a multiple of 16) up to
// kBlasBlock columns, blocks of kBlasBlock beyond, the edges blocked_gemm_acc uses
// for a full step.
template <typename T>
int64_t step_columns(const Raw<T>& r) {
  if (r.B * r.Np * r.H < cpu::kSplitWork) return r.Np;
  if (r.Np <= cpu::kBlasBlock) return std::min(r.Np, (r.Np / 2 + 15) / 16 * 16);
  return cpu::kBlasBlock;
}

// The forward with BLAS-sized steps on one team of threads (csrc/step_team.h):
// each item is a column block of step k: its p columns, its product columns
// (one sequential BLAS call per connection) and its pointwise columns, so the
// pointwise pass is shared too and nothing forks per step. Needs every delayed
// state without a gather: no lengths, or the processing-order ring.
template <typename T>
struct FwdTeam {
  const Raw<T>& r;
  const T* p;
  T *h, *u, *z, *ring;
  const T* h0p;  // h0 in processing order (with lengths)
  int64_t R, cols;
  const T* delayed(int64_t k, int64_t delay) const {
    if (k < delay) return h0p ? h0p : r.h0;
    return R > 0 ? ring + ((k - delay) % R) * r.n * r.H : h + r.base(k - delay);
  }
};

template <typename T>
inline void fwd_item(const FwdTeam<T>& t, int64_t k, int64_t item) {
  const Raw<T>& r = t.r;
  const int64_t H = r.H, Np = r.Np;
  const int64_t n = r.rows_at(k), c0 = item * t.cols, c1 = std::min(Np, c0 + t.cols), j1 = std::min(c1, H);
  const T* hd = t.delayed(k, r.dilation);
  if (c0 < H) fwd_copy_in(r, k, n, t.p, t.z, c0, j1);
  cpu::gemm_acc_rows<T>(n, H, c1 - c0, hd, H, r.w + c0, Np, t.z + c0, Np);
  if (r.ws) cpu::gemm_acc_rows<T>(n, H, c1 - c0, t.delayed(k, r.skip), H, r.ws + c0, Np, t.z + c0, Np);
  if (c0 < H) fwd_point(r, k, n, t.z, hd, t.R > 0 ? t.ring + (k % t.R) * r.n * H : nullptr, t.h, t.u, c0, j1);
  stream_fence();  // this thread's streamed rows, before another reads them
}

// The item as its own (per-ISA) function: a team thread enters it through
// parallel_for's callback, which the clones' flattening does not reach, and the
// bits must not depend on which thread (or target) ran an item.
MTS_CPU_CLONES void fwd_item_f32(const FwdTeam<float>& t, int64_t k, int64_t item) { fwd_item<float>(t, k, item); }
inline void run_item(const FwdTeam<float>& t, int64_t k, int64_t item) { fwd_item_f32(t, k, item); }
inline void run_item(const FwdTeam<double>& t, int64_t k, int64_t item) { fwd_item<double>(t, k, item); }

template <typename T>
inline void fwd_steps_team(const Raw<T>& r, const T* p, T* h, T* u, int64_t R) {
  const int64_t B = r.n, H = r.H, Np = r.Np, BH = B * H;
  AlignedVec<T> zbuf(B * Np, T(0)), ring(R * BH), h0p(r.ragged() ? BH : 0);
  if (r.ragged())  // h0 in processing order, for the steps before the first delay
    for (int64_t i = 0; i < B; ++i) std::copy_n(r.h0 + r.row(i) * H, H, h0p.data() + i * H);
  int64_t steps = 0;
  while (steps < r.Tn && r.rows_at(steps) > 0) ++steps;
  const int64_t cols = step_columns(r);
  const FwdTeam<T> team{r, p, h, u, zbuf.data(), ring.data(), r.ragged() ? h0p.data() : nullptr, R, cols};
  cpu::run_steps(steps, (Np + cols - 1) / cols, [&](int64_t k, int64_t item) { run_item(team, k, item); });
}

template <typename T>
inline void fwd_steps(const Raw<T>& r, const T* p, T* h, T* u) {
  const int64_t B = r.n, H = r.H, Np = r.Np, BH = B * H;
  const int64_t R = ring_slots(r);
  // the team shares each step's columns; a group (n < B) runs its steps alone
  if (r.gemm && r.n == r.B && (R > 0 || !r.ragged())) {
    fwd_steps_team(r, p, h, u, R);
  } else {
    AlignedVec<T> zbuf(B * Np), gathered(r.ragged() ? 2 * BH : 0), ring(R * BH);
    T* z = zbuf.data();
    for (int64_t k = 0; k < r.Tn; ++k) {
      const int64_t n = r.rows_at(k);
      if (n == 0) break;
      if (!r.gemm) prefetch_fwd(r, k + kAhead, p, h, u);
      // the (n, H) states `delay` steps back: from the ring once it holds them
      auto delayed = [&](int64_t delay, T* buf) -> const T* {
        return R > 0 && k >= delay ? ring.data() + ((k - delay) % R) * BH : delayed_rows(r, k, delay, n, h, buf);
      };
      const T* hd = delayed(r.dilation, gathered.data());
      fwd_copy_in(r, k, n, p, z, 0, H);
      product(r, n, hd, r.w, z);
      if (r.ws) product(r, n, delayed(r.skip, gathered.data() + BH), r.ws, z);
      fwd_point(r, k, n, z, hd, R > 0 ? ring.data() + (k % R) * BH : nullptr, h, u, 0, H);
    }
  }
  stream_fence();
}

// Backward without a (T, B, H) delta: delta_t = grad_t + carry_t, where the carry
// slots for the next max(d, s) steps sit in a ring (slot k mod L), padded like the
// accumulators; contributions from before the start go to dh0. dalpha is summed
// per unit over a step's batch rows in T, then across steps in double. With
// lengths the ring's rows are the processing order's (row i is sequence order[i]
// at every step) and e_t is formed in a (n_k, H) buffer for the product, then
// scattered to its rows of e_all.
template <typename T>
inline void bwd_steps(const Raw<T>& r, const T* g, const T* h, const T* u, T* e_all, T* dh0,
                      double* dalpha) {
  const int64_t B = r.n, H = r.H, Np = r.Np, BN = B * Np;
  const int64_t L = std::max(r.dilation, r.skip) + 1;  // ring slots
  AlignedVec<T> ring(L * BN, T(0)), dh0_acc(BN, T(0)), da_step(r.alpha ? Np : 0);
  AlignedVec<T> gathered(r.ragged() ? B * H : 0);  // e_t's rows for the product
  auto slot = [&](int64_t k) { return k >= 0 ? ring.data() + (k % L) * BN : dh0_acc.data(); };
  for (int64_t k = r.Tn - 1; k >= 0; --k) {
    const int64_t n = r.rows_at(k);
    if (n == 0) continue;
    if (!r.gemm) prefetch_bwd(r, k - kAhead, g, h, u, e_all);
    T* carry = slot(k);
    T* target = slot(k - r.dilation);
    T* e = r.ragged() ? gathered.data() : e_all + r.base(k);
    std::fill(da_step.begin(), da_step.end(), T(0));
    for_rows(r, k, n, [&](int64_t i) {
      const int64_t off = r.row_offset(k, i);
      // h_{t-d} of this row (read with the leak only)
      const T* hb = k >= r.dilation ? h + r.row_offset(k - r.dilation, i) : r.h0 + r.row(i) * H;
      const T *gb = g + off, *ub = u + off;
      T *eb = e + i * H, *cb = carry + i * Np, *tb = target + i * Np;
      T* eo = r.ragged() ? e_all + off : nullptr;  // e's row in e_all, beside the product's copy
      for_lanes<T>(H, [&](int64_t j, auto v) {
        using V = decltype(v);
        V gv, cv, uv;
        ld(gv, gb + j);
        ld(cv, cb + j);
        ld(uv, ub + j);
        const V d = gv + cv;  // delta_t
        // dL/du = (1 - alpha) delta first, then phi': relu's phi' = 0 masks it the
        // way torch's threshold_backward does (also when alpha is NaN).
        V du = d;
        if (r.alpha) {
          V a, hv, tv, dav;
          ld(a, r.alpha + j);
          ld(hv, hb + j);
          ld(tv, tb + j);
          ld(dav, da_step.data() + j);
          st(da_step.data() + j, dav + d * (hv - uv));
          st(tb + j, tv + a * d);
          du = (T(1) - a) * d;
        }
        const V ev = dphi_times(du, uv, !r.tanh);
        st(eb + j, ev);
        if (eo) st_stream(eo + j, ev);  // the product reads e
      });
      std::fill(cb, cb + Np, T(0));  // the slot is step k - L's next
    });
    for (int64_t j = 0; j < (r.alpha ? H : 0); ++j) dalpha[j] += double(da_step[j]);
    // dL/dh_{t-d} += e_t W (and through the skip weights)
    product(r, n, e, r.w, target);
    if (r.ws) product(r, n, e, r.ws, slot(k - r.skip));
  }
  for (int64_t i = 0; i < B; ++i)
    std::copy(dh0_acc.data() + i * Np, dh0_acc.data() + i * Np + H, dh0 + r.row(i) * H);
  stream_fence();
}


// The linearised recurrence (leaky_rnn_tangent): with x_k = h at processing
// step k (x_{k-d} = start before the first d steps) and keep = r.alpha,
//   outside: h_k = drive_k + keep h_{k-d} + gain_k (W x_{k-d} + Ws x_{k-s})
//   inside:  h_k = drive_k + keep h_{k-d} + W (gain_{k-d} x_{k-d}) + Ws (gain_{k-s} x_{k-s})
// (inside: no start state; terms before the first step are 0). The first is the
// tangent of leaky_rnn, the second its adjoint (transposed weights, the other
// processing order). keep is r.alpha (H,), or keep_all (T, B, H), read at step k
// (outside) or k - d (inside: the adjoint's keep_{k+d} lambda_{k+d}). One
// product per connection per step, one vectorized pass.
template <typename T>
inline void lin_steps(const Raw<T>& r, const T* drive, const T* gain, const T* keep_all, bool inside,
                      T* h) {
  const int64_t B = r.n, H = r.H, Np = r.Np;
  AlignedVec<T> zbuf(B * Np), gathered(2 * B * H);
  T* z = zbuf.data();
  // rows [0, n) of x_{k - delay} (times gain there when inside) in buf
  auto operand = [&](int64_t k, int64_t delay, int64_t n, T* buf) -> const T* {
    if (inside && k < delay) return nullptr;
    for (int64_t i = 0; i < n; ++i) {
      T* dst = buf + i * H;
      if (k < delay) {
        std::copy(r.h0 + r.row(i) * H, r.h0 + (r.row(i) + 1) * H, dst);
        continue;
      }
      const int64_t off = r.row_offset(k - delay, i);
      const T* src = h + off;
      if (!inside) {
        std::copy(src, src + H, dst);
        continue;
      }
      const T* gs = gain + off;
      for_lanes<T>(H, [&](int64_t j, auto v) {
        using V = decltype(v);
        V xv, gv;
        ld(xv, src + j);
        ld(gv, gs + j);
        st(dst + j, xv * gv);
      });
    }
    return buf;
  };
  for (int64_t k = 0; k < r.Tn; ++k) {
    const int64_t n = r.rows_at(k);
    if (n == 0) break;
    std::fill(z, z + n * Np, T(0));
    const T* xd = operand(k, r.dilation, n, gathered.data());
    if (xd) product(r, n, xd, r.w, z);
    if (r.ws) {
      const T* xs = operand(k, r.skip, n, gathered.data() + B * H);
      if (xs) product(r, n, xs, r.ws, z);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t off = r.row_offset(k, i);
      const T* zb = z + i * Np;
      const T* db = drive + off;
      const T* gb = gain + off;
      // keep reads the state itself (not gain times it) at k - d
      const T* hp = k >= r.dilation ? h + r.row_offset(k - r.dilation, i)
                                    : (inside ? nullptr : r.h0 + r.row(i) * H);
      const T* kp = r.alpha;
      if (keep_all)
        kp = !inside ? keep_all + off : (hp ? keep_all + r.row_offset(k - r.dilation, i) : nullptr);
      T* ob = h + off;
      for_lanes<T>(H, [&](int64_t j, auto v) {
        using V = decltype(v);
        V zv, dv;
        ld(zv, zb + j);
        ld(dv, db + j);
        if (!inside) {
          V gv;
          ld(gv, gb + j);
          zv = gv * zv;
        }
        V out = dv + zv;
        if (kp && hp) {
          V a, hv;
          ld(a, kp + j);
          ld(hv, hp + j);
          out = out + a * hv;
        }
        st(ob + j, out);
      });
    }
  }
}

MTS_CPU_CLONES void lin_steps_f32(const Raw<float>& r, const float* drive, const float* gain,
                                  const float* keep_all, bool inside, float* h) {
  lin_steps<float>(r, drive, gain, keep_all, inside, h);
}
inline void run_lin(const Raw<float>& r, const float* drive, const float* gain, const float* keep_all,
                    bool inside, float* h) {
  lin_steps_f32(r, drive, gain, keep_all, inside, h);
}
inline void run_lin(const Raw<double>& r, const double* drive, const double* gain, const double* keep_all,
                    bool inside, double* h) {
  lin_steps<double>(r, drive, gain, keep_all, inside, h);
}

MTS_CPU_CLONES void fwd_steps_f32(const Raw<float>& r, const float* p, float* h, float* u) {
  fwd_steps<float>(r, p, h, u);
}
MTS_CPU_CLONES void bwd_steps_f32(const Raw<float>& r, const float* g, const float* h,
                                  const float* u, float* e, float* dh0, double* dalpha) {
  bwd_steps<float>(r, g, h, u, e, dh0, dalpha);
}
inline void run_fwd(const Raw<float>& r, const float* p, float* h, float* u) {
  fwd_steps_f32(r, p, h, u);
}
inline void run_bwd(const Raw<float>& r, const float* g, const float* h, const float* u,
                    float* e, float* dh0, double* dalpha) {
  bwd_steps_f32(r, g, h, u, e, dh0, dalpha);
}
inline void run_fwd(const Raw<double>& r, const double* p, double* h, double* u) {
  fwd_steps<double>(r, p, h, u);
}
inline void run_bwd(const Raw<double>& r, const double* g, const double* h, const double* u,
                    double* e, double* dh0, double* dalpha) {
  bwd_steps<double>(r, g, h, u, e, dh0, dalpha);
}


// Row groups (csrc/lengths.h row_groups): each group runs its whole time loop
// alone, with no per-step synchronisation.
// - Register-tiled steps (B*H*H <= kSmallWork): groups of at least 2 rows from
//   B = 4 (as clockwork_rnn's loop). LeakyRNN B=4, T=2048, I=32, H=64 fwd+bwd on
//   the 2-core AMD EPYC: 4.67-4.76 -> 4.00-4.48 ms (median of 40, 3 processes).
// - BLAS-sized steps: groups of at least 16 rows from B = 32, up to H = 512. The
//   team's column split (forward) and the per-step blocked product (backward)
//   synchronised the threads at every step, and with lengths those waits did not
//   shrink with the running rows (B=32, H=256, T=1024, lengths U[T/2, T]: the ops
//   took 0.92x / 0.88x their full-length time for 0.77x of the work). Above
//   H = 512 every group reading all of W each step (4 MiB at H = 1024) cost more
//   than the split (forward 145 -> 158 ms at B=32, H=1024, T=256).
template <typename T>
int64_t group_count(const Raw<T>& r) {
  if (!r.gemm) return r.B >= 4 ? std::min<int64_t>(r.B / 2, 8) : 1;
  return r.B >= 32 && r.H <= 512 ? std::min<int64_t>(r.B / 16, 8) : 1;
}

// A BLAS-sized group's per-step product: one sequential BLAS call (blas_rows), or
// the register-tiled loop. Measured on the AMD EPYC (Zen 4, where MKL runs its
// AVX2 "zen" kernels), a (16, 256) @ (256, 256) product: MKL 27 us
// single-threaded (17 at 8 rows, 11 at 4: a fixed cost of about 6 us a call), and
// the ops at B=32, H=256, T=1024 with the tiled loop against MKL: forward 25.3 /
// 31.2 ms, backward 48.9 / 54.8 (lengths U[T/2, T]: 20.7 / 26.9, 39.9 / 48.8). On
// an Intel CPU with AVX-512 MKL takes about 11 us for it (Xeon), twice the AVX2
// clone's peak: the BLAS there, and where torch's BLAS is not x86 MKL. Chosen by
// the machine, never the thread count or the data, so the bits stay the same on
// any thread count; MTS_KERNELS_GROUP_PRODUCT=blas or =tiled overrides it (the
// tests run both).
inline bool group_product_blas() {
  if (const char* v = std::getenv("MTS_KERNELS_GROUP_PRODUCT"); v && *v) {
    const std::string s(v);
    MTS_CHECK(s == "blas" || s == "tiled", "MTS_KERNELS_GROUP_PRODUCT must be 'blas' or 'tiled', got '", s, "'");
    return s == "blas";
  }
#if defined(__x86_64__) || defined(__i386__)
  static const bool intel_avx512 = __builtin_cpu_is("intel") && __builtin_cpu_supports("avx512f");
  return intel_avx512;
#else
  return true;
#endif
}

template <typename T, typename F>
void run_groups(const Raw<T>& r, const RowOrder& o, F&& f) {
  const bool blas = r.gemm && group_product_blas();
  run_row_groups(r, o, group_count(r), f, [&](Raw<T>& g, const RowGroup& rows) {
    g.gemm = blas ? &blas_rows<T> : nullptr;
    if (!r.len) return;
    g.pos = rows.pos.data();
    g.asc = rows.asc.data();
  });
}

// The processing order of a ragged batch (csrc/lengths.h).
inline RowOrder row_order(const Problem& pr) {
  return ::mts::row_order(pr.lengths, pr.s.B, pr.s.T, "leaky_rnn");
}

template <typename T>
Raw<T> raw_of(const Problem& pr, const AlignedVec<T>& w, const AlignedVec<T>& ws, int64_t Np,
              const RowOrder& o) {
  const bool small = pr.s.B * pr.s.H * pr.s.H <= kSmallWork;
  const bool ragged = pr.lengths.has_value();
  return Raw<T>{pr.s.T, pr.s.B, pr.s.H, Np, pr.dilation, pr.skip, pr.reverse,
                pr.phi == Phi::kTanh, pr.alpha ? ptr<T>(*pr.alpha) : nullptr,
                w.data(), pr.w_skip ? ws.data() : nullptr, ptr<T>(pr.h0),
                small ? nullptr : &blas_product<T>,
                ragged ? o.len.data() : nullptr, ragged ? o.order.data() : nullptr,
                ragged ? o.active.data() : nullptr, ragged ? o.pos.data() : nullptr,
                nullptr, pr.s.B, 0};
}

inline int64_t padded_width(int64_t H, int64_t lanes) { return (H + lanes - 1) / lanes * lanes; }

Tensor transposed(const Tensor& w) {
  return torch::stable::contiguous(torch::stable::transpose(w, 0, 1));
}

template <typename T>
void raw_fwd(const Problem& pr, const Tensor& p, Tensor& h, std::optional<Tensor>& u) {
  const int64_t H = pr.s.H, Np = padded_width(H, kLanes<T>);
  const AlignedVec<T> w = padded(ptr<T>(transposed(pr.w)), H, Np);
  const AlignedVec<T> ws =
      pr.w_skip ? padded(ptr<T>(transposed(*pr.w_skip)), H, Np) : AlignedVec<T>();
  T* hp = mut<T>(h);
  T* up = u ? mut<T>(*u) : hp;
  const RowOrder o = row_order(pr);
  const Raw<T> r = raw_of<T>(pr, w, ws, Np, o);
  run_groups(r, o, [&](const Raw<T>& rg, int64_t) { run_fwd(rg, ptr<T>(p), hp, up); });
  zero_padded(r, hp);
  if (up != hp) zero_padded(r, up);
}

template <typename T>
std::optional<Tensor> raw_bwd(const Problem& pr, const Tensor& g, const Tensor& h,
                              const Tensor& u, Tensor& e_all, Tensor& dh0) {
  const int64_t H = pr.s.H, Np = padded_width(H, kLanes<T>);
  const AlignedVec<T> w = padded(ptr<T>(pr.w), H, Np);
  const AlignedVec<T> ws = pr.w_skip ? padded(ptr<T>(*pr.w_skip), H, Np) : AlignedVec<T>();
  const RowOrder o = row_order(pr);
  const Raw<T> r = raw_of<T>(pr, w, ws, Np, o);
  // dalpha per group, summed in group order
  const int64_t Q = group_count(r);
  std::vector<double> da_groups(pr.leak() ? Q * H : 0, 0.0), da(pr.leak() ? H : 0, 0.0);
  run_groups(r, o, [&](const Raw<T>& rg, int64_t q) {
    run_bwd(rg, ptr<T>(g), ptr<T>(h), ptr<T>(u), mut<T>(e_all), mut<T>(dh0),
            pr.leak() ? da_groups.data() + q * H : nullptr);
  });
  zero_padded(r, mut<T>(e_all));
  if (!pr.leak()) return std::nullopt;
  for (int64_t q = 0; q < Q; ++q)
    for (int64_t j = 0; j < H; ++j) da[j] += da_groups[q * H + j];
  Tensor dalpha = torch::stable::new_empty(h, {H});
  T* out = mut<T>(dalpha);
  for (int64_t j = 0; j < H; ++j) out[j] = static_cast<T>(da[j]);
  return dalpha;
}

template <typename T>
Tensor window_sum_typed(const Problem& pr, const Tensor& x_in, int64_t delay) {
  const int64_t T_ = pr.s.T, B = pr.s.B, H = pr.s.H;
  const Tensor x = as_contiguous(x_in);
  const std::vector<int64_t> len = lengths_on_host("leaky_rnn", *pr.lengths, T_);
  Tensor out = torch::stable::new_zeros(x, {B, H});
  const T* xp = ptr<T>(x);
  T* op = mut<T>(out);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t k = 0; k < std::min(delay, len[b]); ++k) {
      const int64_t t = pr.reverse ? len[b] - 1 - k : k;
      const T* row = xp + (t * B + b) * H;
      for (int64_t j = 0; j < H; ++j) op[b * H + j] += row[j];
    }
  return out;
}

struct CpuLoop : LoopDefaults {
  static constexpr bool kDirectBwd = true;
  static Tensor empty_like(const Tensor& t) { return empty_like_cpu(t); }
  static Tensor contiguous(const Tensor& t) { return contiguous_cpu(t); }
  static Tensor gram(const Tensor& a, const Tensor& b) {
    return dispatch_compute(a.scalar_type(), "leaky_rnn_bwd_cpu", [&](auto tag) {
      return blocked_gram<typename decltype(tag)::type>(a, b);
    });
  }
  // with lengths over the valid pairs only (csrc/projection/ragged_rows.h: a
  // quarter of the GEMM at lengths U[T/2, T])
  static Tensor step_gram(const Problem& pr, const Tensor& e, const Tensor& h, int64_t delay) {
    if (!pr.lengths) return gram(flat_rows(e), flat_rows(h));
    projection::Rows rows{e.size(0), e.size(1), lengths_on_host("leaky_rnn_bwd", *pr.lengths, pr.s.T),
                          true, {}};
    for (int64_t& l : rows.len) l = std::clamp<int64_t>(l - delay, 0, rows.T);
    Tensor out = torch::stable::new_zeros(e, {e.size(2), h.size(2)});
    dispatch_compute(e.scalar_type(), "leaky_rnn_bwd_cpu", [&](auto tag) {
      projection::ragged_gram<typename decltype(tag)::type>(e, h, rows, out, nullptr);
    });
    return out;
  }
  static Tensor window_sum(const Problem& pr, const Tensor& x, int64_t delay) {
    return dispatch_compute(x.scalar_type(), "leaky_rnn_window_sum", [&](auto tag) {
      return window_sum_typed<typename decltype(tag)::type>(pr, x, delay);
    });
  }
  static void fwd(const Problem& pr, const Tensor& p, Tensor& h, std::optional<Tensor>& u) {
    dispatch_compute(p.scalar_type(), "leaky_rnn_fwd_cpu", [&](auto tag) {
      raw_fwd<typename decltype(tag)::type>(pr, p, h, u);
    });
  }
  static std::optional<Tensor> bwd_direct(const Problem& pr, const Tensor& g, const Tensor& h,
                                          const Tensor& u, Tensor& e_all, Tensor& dh0) {
    return dispatch_compute(h.scalar_type(), "leaky_rnn_bwd_cpu", [&](auto tag) {
      return raw_bwd<typename decltype(tag)::type>(pr, g, h, u, e_all, dh0);
    });
  }
};

// leaky_rnn_tangent (schema in csrc/registration.cpp; the recurrence at lin_steps).
Tensor leaky_rnn_tangent(Tensor drive_in, Tensor gain_in, Tensor w_in, std::optional<Tensor> keep_in,
                         std::optional<Tensor> w_skip_in, std::optional<Tensor> start_in, int64_t skip,
                         int64_t dilation, bool gain_inside, bool reverse, std::optional<Tensor> lengths) {
  const char* op = "leaky_rnn_tangent";
  const auto [T_, B, H] = check_tangent_args(op, drive_in, gain_in, w_in, keep_in, w_skip_in, start_in, skip,
                                             dilation, gain_inside, lengths, torch::headeronly::DeviceType::CPU);
  const bool keep_all = keep_in && keep_in->dim() == 3;
  const ScalarType dtype = drive_in.scalar_type();
  auto c = [](const Tensor& t) { return contiguous_cpu(as_dtype(t, opmath_dtype(t.scalar_type()))); };
  const Tensor drive = c(drive_in), gain = c(gain_in);
  // the loop's operands as leaky_rnn's forward has them: a per-unit keep in the
  // alpha slot, start as h0, the delays clamped to T
  const Problem pr = make_problem(Shape{T_, B, H}, "tanh", w_in, start_in,
                                  keep_all ? std::nullopt : keep_in, w_skip_in, skip, dilation, reverse,
                                  drive, lengths);
  // keep_all's (T, B, H) keep, contiguous; without it a second handle of drive,
  // never read. Not an optional<Tensor>: GCC 12 at -O3 -g -fwrapv (Python's flags)
  // reports its payload "maybe uninitialized" with torch 2.11's headers, which
  // -Werror turns into a failed build from the sdist there.
  const Tensor keep = keep_all ? c(*keep_in) : drive;
  Tensor h = empty_like_cpu(drive);
  dispatch_compute(drive.scalar_type(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t Np = padded_width(H, kLanes<T>);
    const AlignedVec<T> w = padded(ptr<T>(transposed(pr.w)), H, Np);
    const AlignedVec<T> ws = pr.w_skip ? padded(ptr<T>(transposed(*pr.w_skip)), H, Np) : AlignedVec<T>();
    const RowOrder o = row_order(pr);
    const Raw<T> r = raw_of<T>(pr, w, ws, Np, o);
    run_groups(r, o, [&](const Raw<T>& rg, int64_t) {
      run_lin(rg, ptr<T>(drive), ptr<T>(gain), keep_all ? ptr<T>(keep) : nullptr, gain_inside, mut<T>(h));
    });
    zero_padded(r, mut<T>(h));
  });
  return as_dtype(h, dtype);
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, rnn)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("leaky_rnn_fwd", TORCH_BOX(&mts::rnn::leaky_rnn_fwd<mts::rnn::CpuLoop>));
  m.impl("leaky_rnn_bwd", TORCH_BOX(&mts::rnn::leaky_rnn_bwd<mts::rnn::CpuLoop>));
  m.impl("leaky_rnn_tangent", TORCH_BOX(&mts::rnn::leaky_rnn_tangent));
}
