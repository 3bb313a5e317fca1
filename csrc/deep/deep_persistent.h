#pragma once
// The persistent kernel of the deep-transition time loop: one launch runs all T
// steps with every block's slice of W_1..W_L (and U) in shared memory for the
// whole sequence. Written as a phase program (csrc/persistent_grid.h), so the
// CUDA kernels (deep_transition_rnn_persistent.cu) and the host test hook
// (deep_transition_rnn_persistent_emulate_cpu.cpp) run the same code with the
// same geometry. Free of torch and CUDA headers. The per-element math is
// deep_step.h's, the very bodies the cuBLAS loop's kernels run (deep_loop.h has
// the recurrence and the operands); only the products move on chip.
//
// Blocks are (unit slice ub, batch block bb), index = bb * Gu + ub; block
// (ub, bb) owns units [j0, j0 + R) of batch rows [b0, b0 + nb): every element
// (b, j) of the (B, H) scratch rows and of the (T, B, H) slabs is computed,
// read back and written by one thread of one block, in every segment, so the
// only rows a block reads from other blocks are the full product inputs, which
// it stages into shared memory at the start of a segment.
//  * Forward, step k, sub-layer l (one segment each): stage rows b of the input
//    (the state for l = 0, else the previous sub-layer s^{l-1}); element (b, j):
//    z = sum_i in[b, i] W_l[j, i] (the top one + sum_i h_{t-1}[b, i] U[j, i],
//    computed at l = 0 while the state is staged and kept in shared memory),
//    then deep_step.h's forward body. Tile: row n of matrix m holds W_m[j0 + n, :].
//  * Backward, step k: a segment with the top body (no product); for l = L-2..0
//    a segment staging e^{l+2} and computing ds = sum_j e[b, j] W_{l+1}[j, i] for
//    the lower body (the first also carry += e^L U); a segment staging e^1 with
//    carry += e^1 W_1 (with L = 1 also e^L U first, the cuBLAS loop's order).
//    Tile: row n of matrix m holds column i0 + n of W_m.
// The sub-layer rows handed between segments alternate between two buffers
// (sbuf / ebuf), so a segment never overwrites a row other blocks may still be
// staging; the state and the carries alternate per step as in deep_loop.h.
// Rows that have ended at step k (lengths) skip their products: the bodies
// write their zeros without reading them.
//
// Shared memory per block, in elements of T: n_mats * R * ks (the tile; ks = H
// rounded up to odd, so the threads of a warp, on consecutive tile rows, read
// different banks) + nb * H (the staged rows) + nb * R with the shortcut (its
// partial products). plan() chooses R and nb from the device's opt-in maximum.
#include <cstdint>

#include "../persistent_grid.h"
#include "deep_step.h"

namespace mts {
namespace deep {

constexpr int64_t kPersistMaxBatch = int64_t(1) << 20;
constexpr int64_t kPersistMaxHidden = int64_t(1) << 15;

struct PersistGeo {
  int units;         // R: units per block (the last unit slice may own fewer)
  int unit_blocks;   // Gu = ceil(H / R)
  int rows;          // nb: batch rows per block (the last batch block may own fewer)
  int batch_blocks;  // Gb = ceil(B / nb)
  int kstride;       // ks: tile row stride
  int n_mats;        // L, + 1 with the shortcut
  bool grid_sync;    // Gu > 1: blocks read each other's rows (cooperative launch)
  int64_t tile_elems, stage_elems, smem_elems;
};

// The sizes (L: the transition depth), the nonlinearity and the direction.
struct PersistShape {
  int64_t B, H, L, Tn;
  bool relu, reverse;
};

template <typename T>
struct DeepPersistFwd : PersistShape {
  const T* p_all;          // (T, B, H)
  const T* w;              // (L, H, H)
  const T* bias;           // (L, H); nullptr: none
  const T* ws;             // (H, H) U; nullptr: no shortcut
  const T* alpha;          // (H); nullptr: no leak
  const T* h0;             // (B, H)
  T* h_all;                // (T, B, H)
  T* s_all;                // (L, T, B, H)
  T* state[2];             // (B, H) each; step k writes state[k & 1]
  T* sbuf[2];              // (B, H) each; sub-layer l < L - 1 writes sbuf[l & 1]
  const int64_t* lengths;  // (B); nullptr: every row runs Tn steps
};

template <typename T>
struct DeepPersistBwd : PersistShape {
  const T* g_all;          // (T, B, H) grad_h
  const T* w;              // (L, H, H)
  const T* ws;             // (H, H); nullptr: no shortcut
  const T* alpha;          // (H); nullptr: no leak
  const T* h_all;          // (T, B, H)
  const T* s_all;          // (L, T, B, H)
  const T* h0;             // (B, H)
  T* dp;                   // (T, B, H) e^1
  T* e_rest;               // (L - 1, T, B, H) e^2..e^L
  T* hprev_all;            // (T, B, H)
  T* dh0;                  // (B, H)
  T* da;                   // (B, H); with alpha
  T* carry[2];             // (B, H) each; carry[0] zeros on entry
  T* ebuf[2];              // (B, H) each
  const int64_t* lengths;
};

struct PersistSlice {
  int first, count;  // units [first, first + count)
  int64_t b0;
  int nb;            // rows [b0, b0 + nb)
};

MTS_HD PersistSlice persist_slice(const PersistGeo& g, int index, int64_t H, int64_t B) {
  const int ub = index % g.unit_blocks, bb = index / g.unit_blocks;
  PersistSlice s;
  s.first = ub * g.units;
  const int64_t left = H - s.first;
  s.count = static_cast<int>(left < g.units ? left : g.units);
  s.b0 = static_cast<int64_t>(bb) * g.rows;
  const int64_t rows_left = B - s.b0;
  s.nb = static_cast<int>(rows_left < g.rows ? rows_left : g.rows);
  return s;
}

// a . w over n, four partial sums (the order is fixed by n alone).
template <typename T>
MTS_HD T persist_dot(const T* a, const T* w, int64_t n) {
  T s0 = T(0), s1 = T(0), s2 = T(0), s3 = T(0);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 += a[i] * w[i];
    s1 += a[i + 1] * w[i + 1];
    s2 += a[i + 2] * w[i + 2];
    s3 += a[i + 3] * w[i + 3];
  }
  for (; i < n; ++i) s0 += a[i] * w[i];
  return (s0 + s1) + (s2 + s3);
}

// The block's tile: matrix m < L is W_{m+1}, m = L is U. Forward rows are the
// owned units' rows, backward rows the owned units' columns.
template <typename T, class Blk>
MTS_HD void persist_fill_tile(const PersistGeo& g, const PersistSlice& s, int64_t H, int64_t L,
                              const T* w, const T* ws, bool backward, T* tile, const Blk& blk) {
  blk.run([&](int tid) {
    const int64_t per = static_cast<int64_t>(s.count) * H;
    const int64_t n_el = g.n_mats * per;
    for (int64_t e = tid; e < n_el; e += blk.threads) {
      const int64_t m = e / per, rem = e - m * per;
      const T* W = m < L ? w + m * H * H : ws;
      T* rows = tile + m * g.units * g.kstride;
      if (!backward) {
        const int64_t n = rem / H, i = rem - n * H;
        rows[n * g.kstride + i] = W[(s.first + n) * H + i];
      } else {  // consecutive e: consecutive columns of one row of W (coalesced reads)
        const int64_t j = rem / s.count, n = rem - j * s.count;
        rows[n * g.kstride + j] = W[j * H + s.first + n];
      }
    }
  });
}

// Rows [b0, b0 + nb) of a (B, H) buffer other blocks wrote into the stage.
template <typename T, class Blk>
MTS_HD void persist_stage(const T* src, int64_t H, const PersistSlice& s, T* stage, const Blk& blk) {
  blk.run([&](int tid) {
    const T* from = src + s.b0 * H;
    const int64_t n = static_cast<int64_t>(s.nb) * H;
    for (int64_t e = tid; e < n; e += blk.threads) stage[e] = persist::load_cg(from + e);
  });
}

MTS_HD bool persist_runs(const int64_t* lengths, int64_t b, int64_t k, int64_t Tn) {
  return k < row_len(lengths, b, Tn);
}

template <typename T, class Grid>
MTS_HD void deep_persist_fwd(const DeepPersistFwd<T>& q, const PersistGeo& g, Grid& grid) {
  const int64_t B = q.B, H = q.H, TBH = q.Tn * B * H;
  const bool sc = q.ws != nullptr;
  for (int64_t k = 0; k < q.Tn; ++k) {
    const T* prev = k == 0 ? q.h0 : q.state[(k - 1) & 1];
    T* next = q.state[k & 1];
    for (int64_t l = 0; l < q.L; ++l) {
      const bool top = l == q.L - 1;
      const T* src = l == 0 ? prev : q.sbuf[(l - 1) & 1];
      grid.segment([&](const auto& blk) {
        const PersistSlice sl = persist_slice(g, blk.index, H, B);
        T* tile = blk.smem;
        T* stage = tile + g.tile_elems;
        T* part = stage + g.stage_elems;
        if (k == 0 && l == 0) persist_fill_tile(g, sl, H, q.L, q.w, q.ws, false, tile, blk);
        persist_stage(src, H, sl, stage, blk);
        blk.run([&](int tid) {
          DeepStepFwd<T> f{};
          static_cast<StepAt&>(f) = StepAt{B, H, k, q.Tn, q.relu, q.reverse};
          f.first = l == 0;
          f.top = top;
          f.bias = q.bias != nullptr ? q.bias + l * H : nullptr;
          f.p_all = q.p_all;
          f.alpha = q.alpha;
          f.hprev = prev;
          f.s_all = q.s_all + l * TBH;
          f.s_next = q.sbuf[l & 1];
          f.h_all = q.h_all;
          f.h_next = next;
          f.lengths = q.lengths;
          const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
          for (int64_t e = tid; e < n_el; e += blk.threads) {
            const int64_t bl = e / sl.count, n = e - bl * sl.count;
            const int64_t b = sl.b0 + bl;
            T z = T(0);
            if (persist_runs(q.lengths, b, k, q.Tn)) {
              const T* a = stage + bl * H;
              z = persist_dot(a, tile + (l * g.units + n) * g.kstride, H);
              if (sc) {
                if (l == 0) {
                  const T u = persist_dot(a, tile + (q.L * g.units + n) * g.kstride, H);
                  if (top) {
                    z += u;
                  } else {
                    part[bl * g.units + n] = u;
                  }
                } else if (top) {
                  z += part[bl * g.units + n];
                }
              }
            }
            fwd_elem(f, b * H + sl.first + n, z);
          }
        });
      });
    }
  }
}

template <typename T, class Grid>
MTS_HD void deep_persist_bwd(const DeepPersistBwd<T>& q, const PersistGeo& g, Grid& grid) {
  const int64_t B = q.B, H = q.H, TBH = q.Tn * B * H;
  const bool sc = q.ws != nullptr;
  T* const dp = q.dp;
  T* const e_rest = q.e_rest;
  auto e_of = [dp, e_rest, TBH](int64_t l) { return l == 0 ? dp : e_rest + (l - 1) * TBH; };
  for (int64_t r = 0; r < q.Tn; ++r) {
    const int64_t k = q.Tn - 1 - r;
    const T* cin = q.carry[r & 1];
    T* cout = k > 0 ? q.carry[(r + 1) & 1] : q.dh0;
    grid.segment([&](const auto& blk) {
      const PersistSlice sl = persist_slice(g, blk.index, H, B);
      if (r == 0) persist_fill_tile(g, sl, H, q.L, q.w, q.ws, true, blk.smem, blk);
      blk.run([&](int tid) {
        DeepStepBwdTop<T> t{};
        static_cast<StepAt&>(t) = StepAt{B, H, k, q.Tn, q.relu, q.reverse};
        t.g_all = q.g_all;
        t.carry_in = cin;
        t.s_all = q.s_all + (q.L - 1) * TBH;
        t.h_all = q.h_all;
        t.h0 = q.h0;
        t.alpha = q.alpha;
        t.e_all = e_of(q.L - 1);
        t.e_next = q.ebuf[0];
        t.carry_out = cout;
        t.hprev_all = q.hprev_all;
        t.da = q.da;
        t.lengths = q.lengths;
        const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
        for (int64_t e = tid; e < n_el; e += blk.threads) {
          const int64_t bl = e / sl.count, n = e - bl * sl.count;
          step_elem(t, (sl.b0 + bl) * H + sl.first + n);
        }
      });
    });
    int cur = 0;
    for (int64_t l = q.L - 2; l >= 0; --l) {
      const T* ein = q.ebuf[cur];
      T* eout = q.ebuf[cur ^ 1];
      grid.segment([&](const auto& blk) {
        const PersistSlice sl = persist_slice(g, blk.index, H, B);
        T* tile = blk.smem;
        T* stage = tile + g.tile_elems;
        persist_stage(ein, H, sl, stage, blk);
        blk.run([&](int tid) {
          DeepStepBwdLower<T> lw{};
          static_cast<StepAt&>(lw) = StepAt{B, H, k, q.Tn, q.relu, q.reverse};
          lw.s_all = q.s_all + l * TBH;
          lw.e_all = e_of(l);
          lw.e_next = eout;
          lw.lengths = q.lengths;
          const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
          for (int64_t e = tid; e < n_el; e += blk.threads) {
            const int64_t bl = e / sl.count, n = e - bl * sl.count;
            const int64_t b = sl.b0 + bl, i = b * H + sl.first + n;
            T ds = T(0);
            if (persist_runs(q.lengths, b, k, q.Tn)) {
              const T* a = stage + bl * H;
              ds = persist_dot(a, tile + ((l + 1) * g.units + n) * g.kstride, H);
              if (sc && l == q.L - 2) cout[i] += persist_dot(a, tile + (q.L * g.units + n) * g.kstride, H);
            }
            lower_elem(lw, i, ds);
          }
        });
      });
      cur ^= 1;
    }
    const T* e1 = q.ebuf[cur];
    grid.segment([&](const auto& blk) {
      const PersistSlice sl = persist_slice(g, blk.index, H, B);
      T* tile = blk.smem;
      T* stage = tile + g.tile_elems;
      persist_stage(e1, H, sl, stage, blk);
      blk.run([&](int tid) {
        const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
        for (int64_t e = tid; e < n_el; e += blk.threads) {
          const int64_t bl = e / sl.count, n = e - bl * sl.count;
          const int64_t b = sl.b0 + bl, i = b * H + sl.first + n;
          if (!persist_runs(q.lengths, b, k, q.Tn)) continue;  // its carry stays the top's 0
          const T* a = stage + bl * H;
          T c = cout[i];
          if (sc && q.L == 1) c += persist_dot(a, tile + (q.L * g.units + n) * g.kstride, H);
          cout[i] = c + persist_dot(a, tile + n * g.kstride, H);
        }
      });
    });
  }
}

// The launch geometry, or false when the problem does not fit (the caller runs
// the cuBLAS loop). sms: multiprocessors; smem_bytes: the opt-in shared memory
// per block; one block per multiprocessor is assumed for the co-residency of a
// grid-synchronised launch (the caller checks the occupancy of the result).
// threads: per block. force_grid (testing): split the units whenever H > 1.
// elem: sizeof(T).
inline bool persist_plan(int64_t B, int64_t H, int64_t L, bool shortcut, bool force_grid, int64_t elem,
                         int64_t sms, int64_t smem_bytes, bool cooperative, int threads, PersistGeo* out) {
  if (B < 1 || H < 1 || L < 1 || B > kPersistMaxBatch || H > kPersistMaxHidden || sms < 1 || threads < 1)
    return false;
  const int64_t budget = smem_bytes / elem;
  const int64_t ks = H | 1;
  const int64_t n_mats = L + (shortcut ? 1 : 0);
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  // rows of the stage (and the shortcut's partials) that fit beside an R-unit tile
  auto rows_fit = [&](int64_t R) {
    const int64_t left = budget - n_mats * R * ks;
    return left <= 0 ? int64_t(0) : left / (H + (shortcut ? R : 0));
  };
  auto finish = [&](int64_t R, int64_t nb) {
    PersistGeo g{};
    g.units = static_cast<int>(R);
    g.unit_blocks = static_cast<int>(ceil_div(H, R));
    g.rows = static_cast<int>(nb);
    g.batch_blocks = static_cast<int>(ceil_div(B, nb));
    g.kstride = static_cast<int>(ks);
    g.n_mats = static_cast<int>(n_mats);
    g.grid_sync = g.unit_blocks > 1;
    g.tile_elems = n_mats * R * ks;
    g.stage_elems = nb * H;
    g.smem_elems = g.tile_elems + g.stage_elems + (shortcut ? nb * R : 0);
    *out = g;
    return true;
  };
  if (!(force_grid && H > 1) && rows_fit(H) >= 1) {
    // All of W in every block: blocks split the batch only and never wait on
    // each other. Rows per block: the batch spread over the multiprocessors, at
    // least a block's worth of elements, at most what fits.
    int64_t nb = ceil_div(B, sms);
    const int64_t fill = ceil_div(threads, H);
    if (nb < fill) nb = fill;
    if (nb > B) nb = B;
    if (nb > rows_fit(H)) nb = rows_fit(H);
    return finish(H, nb);
  }
  if (!cooperative) return false;
  // Units split over Gu > 1 co-resident blocks, Gu * Gb <= sms. For each batch
  // split, as many unit slices as the multiprocessors allow; the cheapest by
  // the per-step work of a block (its products' dot lengths per thread plus its
  // staging), ties to fewer blocks.
  int64_t best_cost = -1, best_r = 0, best_nb = 0;
  const int64_t gb_max = B < sms ? B : sms;
  for (int64_t gb = 1; gb <= gb_max; ++gb) {
    const int64_t nb = ceil_div(B, gb);
    int64_t gu = sms / ceil_div(B, nb);
    if (gu > H) gu = H;
    if (gu < 2) break;
    const int64_t R = ceil_div(H, gu);
    if (rows_fit(R) < nb) continue;
    const int64_t blocks = ceil_div(H, R) * ceil_div(B, nb);
    const int64_t cost = ceil_div(nb * R, threads) * H + ceil_div(nb * H, threads);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best_r = R;
      best_nb = nb;
    } else if (cost == best_cost && blocks < ceil_div(H, best_r) * ceil_div(B, best_nb)) {
      best_r = R;
      best_nb = nb;
    }
  }
  if (best_cost < 0) return false;
  return finish(best_r, best_nb);
}

}  // namespace deep
}  // namespace mts
