#pragma once
// The persistent kernel of the clockwork time loop: one launch per direction
// runs all T steps with every block's slice of W_hh in shared memory for the
// whole sequence and the clock evaluated on the device. A phase program
// (csrc/persistent_grid.h): the CUDA kernels (clockwork_rnn_persistent.cu) and
// the host test hook (clockwork_rnn_persistent_emulate_cpu.cpp) run the same
// code in the same geometry. Free of torch and CUDA headers. The per-element
// math is clockwork_step.h's, the bodies the cuBLAS loop's kernels run
// (clockwork_loop.h: the recurrence, the operands and the weight gradients,
// which stay GEMMs after the loop); only the products move on chip.
//
// Geometry (persistent_grid.h): block (ub, bb) owns units [j0, j0 + R) of batch
// rows [b0, b0 + nb), one thread per element in every segment.
//  * Forward, step t (one segment): if any owned unit's module is active, stage
//    rows b of h(t-1); element (b, j) of an active module m (row running):
//    z = sum_{i >= lo_m} h(t-1)[b, i] W[j, i], the block-upper-triangular part
//    only; inactive units and ended rows compute nothing. Then the forward body
//    (update, hold, or the zeros of an ended row). Tile: row n = W[j0 + n, :].
//  * Backward: a first segment with the body of step T-1; then per step t one
//    segment: stage rows b of e(t) (if an active module reaches an owned
//    column); element (b, i): carry(t)[b, i] += sum over the active modules
//    m <= mod(i) of sum_{j in m} e(t)[b, j] W[j, i] (module by module, the
//    cuBLAS loop's order), which completes it, so the same thread runs the body
//    of step t-1 on it at once (its e(t-1) is a slab nobody stages in this
//    segment). Tile: row n = column i0 + n of W.
// One barrier per step either way; the carries alternate per step as in
// clockwork_loop.h, the states are the (T, B, H) output itself.
#include <cstdint>

#include "../persistent_grid.h"
#include "clockwork_step.h"

namespace mts {
namespace clockwork {

// The schedule, by value in the kernel parameters: the module boundaries (module
// m covers units [lo[m], lo[m + 1])), and module m is active at step t iff
// t >= first[m] and (t - first[m]) % period[m] == 0. The host loop of
// clockwork_loop.h reads its per-step masks from it too (active_at).
struct ClockworkClock : ClockworkCudaModules {
  int64_t period[kMaxCudaModules];
  int64_t first[kMaxCudaModules];
};

MTS_HD uint64_t active_at(const ClockworkClock& c, int64_t t) {
  uint64_t mask = 0;
  for (int64_t m = 0; m < c.g; ++m)
    if (t >= c.first[m] && (t - c.first[m]) % c.period[m] == 0) mask |= uint64_t{1} << m;
  return mask;
}

// Whether a module active in `mask` covers a unit of [first, first + count).
MTS_HD bool rows_active(const ClockworkClock& c, uint64_t mask, int64_t first, int64_t count) {
  for (int64_t m = 0; m < c.g; ++m)
    if (((mask >> m) & 1u) && c.lo[m] < first + count && c.lo[m + 1] > first) return true;
  return false;
}

// Whether an active module reaches a column of [first, first + count) (its
// blocks j >= lo_m: lo_m <= the last column).
MTS_HD bool columns_reached(const ClockworkClock& c, uint64_t mask, int64_t first, int64_t count) {
  for (int64_t m = 0; m < c.g; ++m)
    if (((mask >> m) & 1u) && c.lo[m] < first + count) return true;
  return false;
}

// What both directions read: sizes, the nonlinearity, the unit -> module map,
// W, the leak, the lengths and the clock.
template <typename T>
struct CwPersistCommon {
  int64_t B, H, Tn;
  bool relu;
  const int32_t* mod;      // (H) unit -> module
  const T* w;              // (H, H)
  const T* alpha;          // (H); nullptr: no leak
  const int64_t* lengths;  // (B); nullptr: every row runs every step
  ClockworkClock clock;
  // the plan's inputs (persist::plan): one matrix, no partials
  MTS_HD int64_t n_mats() const { return 1; }
  MTS_HD bool partials() const { return false; }
};

template <typename T>
struct CwPersistFwd : CwPersistCommon<T> {
  const T* h0;             // (B, H)
  const T* p_all;          // (T, B, H)
  T* h_all;                // (T, B, H)
  T* u_all;                // (T, B, H); nullptr iff alpha == nullptr
};

template <typename T>
struct CwPersistBwd : CwPersistCommon<T> {
  const T* g_all;          // (T, B, H) grad_h
  const T* u_all;          // (T, B, H) u (h without alpha)
  const T* h_all;          // (T, B, H)
  const T* h0;             // (B, H)
  T* e_all;                // (T, B, H) dL/dp
  T* dh0;                  // (B, H)
  T* da;                   // (B, H); with alpha
  T* carry[2];             // (B, H) each; carry[0] zeros on entry
};

template <typename T, class Grid>
MTS_HD void run_program(const CwPersistFwd<T>& q, const persist::Geo& g, Grid& grid) {
  const int64_t B = q.B, H = q.H, BH = B * H;
  for (int64_t t = 0; t < q.Tn; ++t) {
    const uint64_t act = active_at(q.clock, t);
    const T* prev = t > 0 ? q.h_all + (t - 1) * BH : q.h0;
    grid.segment([&](const auto& blk) {
      const persist::Slice sl = persist::slice_of(g, blk.index, H, B);
      T* tile = blk.smem;
      T* stage = tile + g.tile_elems;
      if (t == 0) persist::fill_tile(g, sl, H, [&](int64_t) { return q.w; }, false, tile, blk);
      if (rows_active(q.clock, act, sl.first, sl.count)) persist::stage_rows(prev, H, sl, stage, blk);
      blk.run([&](int tid) {
        ClockworkStepFwd<T> f{};
        f.B = B;
        f.H = H;
        f.t = t;
        f.Tn = q.Tn;
        f.relu = q.relu;
        f.active = act;
        f.mod = q.mod;
        f.alpha = q.alpha;
        f.prev = prev;
        f.p = q.p_all + t * BH;
        f.h = q.h_all + t * BH;
        f.u = q.u_all != nullptr ? q.u_all + t * BH : nullptr;
        f.lengths = q.lengths;
        const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
        for (int64_t e = tid; e < n_el; e += blk.threads) {
          const int64_t bl = e / sl.count, n = e - bl * sl.count;
          const int64_t b = sl.b0 + bl, j = sl.first + n;
          T z = T(0);
          if (row_runs(q.lengths, b, t, q.Tn) && unit_active(act, q.mod, j)) {
            const int64_t lo = q.clock.lo[q.mod[j]];
            z = persist::dot(stage + bl * H + lo, tile + n * g.kstride + lo, H - lo);
          }
          fwd_elem(f, b * H + j, z);
        }
      });
    });
  }
}

template <typename T, class Grid>
MTS_HD void run_program(const CwPersistBwd<T>& q, const persist::Geo& g, Grid& grid) {
  const int64_t B = q.B, H = q.H, BH = B * H, Tn = q.Tn;
  if (Tn < 1) return;
  T* const dh0 = q.dh0;
  T* const c0 = q.carry[0];
  T* const c1 = q.carry[1];
  // the carry step t reads (from step t + 1; zeros at T - 1) and the one it writes
  auto carry_in = [c0, c1, Tn](int64_t t) { return ((Tn - 1 - t) & 1) ? c1 : c0; };
  auto carry_out = [c0, c1, dh0, Tn](int64_t t) { return t == 0 ? dh0 : (((Tn - t) & 1) ? c1 : c0); };
  // the body of step t over this thread's elements of slice sl
  auto body = [&](int64_t t, const persist::Slice& sl, int tid, int threads) {
    ClockworkStepBwd<T> r{};
    r.B = B;
    r.H = H;
    r.t = t;
    r.Tn = Tn;
    r.relu = q.relu;
    r.active = active_at(q.clock, t);
    r.mod = q.mod;
    r.alpha = q.alpha;
    r.g = q.g_all + t * BH;
    r.carry_in = carry_in(t);
    r.u = q.u_all + t * BH;
    r.prev = t > 0 ? q.h_all + (t - 1) * BH : q.h0;
    r.e = q.e_all + t * BH;
    r.carry_out = carry_out(t);
    r.da = q.da;
    r.lengths = q.lengths;
    const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
    for (int64_t e = tid; e < n_el; e += threads) {
      const int64_t bl = e / sl.count, n = e - bl * sl.count;
      step_elem(r, (sl.b0 + bl) * H + sl.first + n);
    }
  };
  grid.segment([&](const auto& blk) {
    const persist::Slice sl = persist::slice_of(g, blk.index, H, B);
    persist::fill_tile(g, sl, H, [&](int64_t) { return q.w; }, true, blk.smem, blk);
    blk.run([&](int tid) { body(Tn - 1, sl, tid, blk.threads); });
  });
  for (int64_t t = Tn - 1; t >= 0; --t) {
    const uint64_t act = active_at(q.clock, t);
    const T* et = q.e_all + t * BH;
    T* out = carry_out(t);
    grid.segment([&](const auto& blk) {
      const persist::Slice sl = persist::slice_of(g, blk.index, H, B);
      T* tile = blk.smem;
      T* stage = tile + g.tile_elems;
      if (columns_reached(q.clock, act, sl.first, sl.count)) persist::stage_rows(et, H, sl, stage, blk);
      const int64_t n_el = static_cast<int64_t>(sl.nb) * sl.count;
      blk.run([&](int tid) {
        for (int64_t e = tid; e < n_el; e += blk.threads) {
          const int64_t bl = e / sl.count, n = e - bl * sl.count;
          const int64_t b = sl.b0 + bl;
          if (!row_runs(q.lengths, b, t, Tn)) continue;  // an ended row's e(t) is 0: its carry stays 0
          const int64_t i = b * H + sl.first + n;
          const int32_t mi = q.mod[sl.first + n];
          T c = out[i];
          for (int32_t m = 0; m <= mi; ++m) {
            if (!((act >> m) & 1u)) continue;
            const int64_t lo = q.clock.lo[m];
            c += persist::dot(stage + bl * H + lo, tile + n * g.kstride + lo, q.clock.lo[m + 1] - lo);
          }
          out[i] = c;
        }
      });
      // the same elements, the same threads: carry(t) is complete for them
      if (t > 0) {
        blk.run([&](int tid) { body(t - 1, sl, tid, blk.threads); });
      }
    });
  }
}

}  // namespace clockwork
}  // namespace mts
