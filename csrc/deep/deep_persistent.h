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
// Geometry (persistent_grid.h): block (ub, bb) owns units [j0, j0 + R) of
// batch rows [b0, b0 + nb), one thread per element in every segment.
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
// Shared memory: the n_mats = L (+ 1 with the shortcut) matrix tile, the staged
// rows and, with the shortcut, the forward's partial products (persist::plan).
#include <cstdint>

#include "../persistent_grid.h"
#include "deep_step.h"

namespace mts {
namespace deep {

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
  // the plan's inputs (persist::plan): tile matrices, and the shortcut's partials
  MTS_HD int64_t n_mats() const { return L + (ws != nullptr ? 1 : 0); }
  MTS_HD bool partials() const { return ws != nullptr; }
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
  MTS_HD int64_t n_mats() const { return L + (ws != nullptr ? 1 : 0); }
  MTS_HD bool partials() const { return false; }
};

using persist::Geo;
using persist::Slice;

// The block's tile: matrix m < L is W_{m+1}, m = L is U.
template <typename T, class Blk>
MTS_HD void persist_fill_tile(const Geo& g, const Slice& s, int64_t H, int64_t L, const T* w, const T* ws,
                              bool backward, T* tile, const Blk& blk) {
  persist::fill_tile(g, s, H, [&](int64_t m) { return m < L ? w + m * H * H : ws; }, backward, tile, blk);
}

MTS_HD bool persist_runs(const int64_t* lengths, int64_t b, int64_t k, int64_t Tn) {
  return k < row_len(lengths, b, Tn);
}

template <typename T, class Grid>
MTS_HD void run_program(const DeepPersistFwd<T>& q, const Geo& g, Grid& grid) {
  const int64_t B = q.B, H = q.H, TBH = q.Tn * B * H;
  const bool sc = q.ws != nullptr;
  for (int64_t k = 0; k < q.Tn; ++k) {
    const T* prev = k == 0 ? q.h0 : q.state[(k - 1) & 1];
    T* next = q.state[k & 1];
    for (int64_t l = 0; l < q.L; ++l) {
      const bool top = l == q.L - 1;
      const T* src = l == 0 ? prev : q.sbuf[(l - 1) & 1];
      grid.segment([&](const auto& blk) {
        const Slice sl = persist::slice_of(g, blk.index, H, B);
        T* tile = blk.smem;
        T* stage = tile + g.tile_elems;
        T* part = stage + g.stage_elems;
        if (k == 0 && l == 0) persist_fill_tile(g, sl, H, q.L, q.w, q.ws, false, tile, blk);
        persist::stage_rows(src, H, sl, stage, blk);
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
              z = persist::dot(a, tile + (l * g.units + n) * g.kstride, H);
              if (sc) {
                if (l == 0) {
                  const T u = persist::dot(a, tile + (q.L * g.units + n) * g.kstride, H);
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
MTS_HD void run_program(const DeepPersistBwd<T>& q, const Geo& g, Grid& grid) {
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
      const Slice sl = persist::slice_of(g, blk.index, H, B);
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
        const Slice sl = persist::slice_of(g, blk.index, H, B);
        T* tile = blk.smem;
        T* stage = tile + g.tile_elems;
        persist::stage_rows(ein, H, sl, stage, blk);
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
              ds = persist::dot(a, tile + ((l + 1) * g.units + n) * g.kstride, H);
              if (sc && l == q.L - 2) cout[i] += persist::dot(a, tile + (q.L * g.units + n) * g.kstride, H);
            }
            lower_elem(lw, i, ds);
          }
        });
      });
      cur ^= 1;
    }
    const T* e1 = q.ebuf[cur];
    grid.segment([&](const auto& blk) {
      const Slice sl = persist::slice_of(g, blk.index, H, B);
      T* tile = blk.smem;
      T* stage = tile + g.tile_elems;
      persist::stage_rows(e1, H, sl, stage, blk);
      blk.run([&](int tid) {
        const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
        for (int64_t e = tid; e < n_el; e += blk.threads) {
          const int64_t bl = e / sl.count, n = e - bl * sl.count;
          const int64_t b = sl.b0 + bl, i = b * H + sl.first + n;
          if (!persist_runs(q.lengths, b, k, q.Tn)) continue;  // its carry stays the top's 0
          const T* a = stage + bl * H;
          T c = cout[i];
          if (sc && q.L == 1) c += persist::dot(a, tile + (q.L * g.units + n) * g.kstride, H);
          cout[i] = c + persist::dot(a, tile + n * g.kstride, H);
        }
      });
    });
  }
}

}  // namespace deep
}  // namespace mts
