#pragma once
// The execution model of the persistent kernels written as phase programs
// (csrc/deep/deep_persistent.h, csrc/clockwork/clockwork_persistent.h). A program is a sequence of grid.segment(f)
// calls, each ending in a barrier of the whole grid (or of the block, when the
// blocks never read each other's rows); inside a segment, f(blk) runs phases
// blk.run(g), each g(tid) over the block's threads and ending in a block
// barrier. Every thread of the grid makes the same sequence of segment and run
// calls (the loops around them are uniform), so the barriers match. Written
// once, a program runs
//  * on the device (DeviceGrid, nvcc only): each thread calls the program once;
//    run() is the thread's own g(threadIdx.x) then __syncthreads(); a segment
//    ends in cooperative_groups grid.sync() (kGrid) or __syncthreads();
//  * on the host (HostGrid, the test hooks): the same program with the same
//    geometry, thread by thread. With grid sync every block runs a segment
//    before any block runs the next one. Without it the caller runs the whole
//    program once per block (`only`), the most a device can reorder blocks that
//    never wait for each other. `reverse` runs blocks and threads last-first, so
//    a barrier the program is missing, or a row read before its writer's
//    barrier, gives a wrong result in one of the two orders.
// Rows that other blocks wrote during the kernel are read with load_cg (L2,
// never a stale L1 line on the device); grid.sync() orders them across blocks.
// Below the execution model: the block geometry, tile and staging helpers and
// the launch plan the programs (and their host runs) share.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "common.h"

namespace mts {
namespace persist {

template <typename T>
MTS_HD T load_cg(const T* p) {
#ifdef __CUDA_ARCH__
  return __ldcg(p);
#else
  return *p;
#endif
}

template <typename S>
struct HostBlock {
  int index, threads;
  S* smem;
  bool reverse;
  template <class F>
  void run(F&& f) const {
    for (int n = 0; n < threads; ++n) f(reverse ? threads - 1 - n : n);
  }
};

template <typename S>
struct HostGrid {
  int blocks, threads;
  bool reverse;
  int only;        // >= 0: that block alone (a program without grid sync)
  S* smem;         // blocks * smem_elems, block b's at b * smem_elems
  int64_t smem_elems;
  template <class F>
  void segment(F&& f) {
    for (int n = 0; n < blocks; ++n) {
      const int b = reverse ? blocks - 1 - n : n;
      if (only >= 0 && b != only) continue;
      const HostBlock<S> blk{b, threads, smem + b * smem_elems, reverse};
      f(blk);
    }
  }
};

// ---------------------------------------------------------------------------
// The geometry the persistent programs share: blocks are (unit slice ub, batch
// block bb), index = bb * Gu + ub; block (ub, bb) owns units [first, first + R)
// of batch rows [b0, b0 + nb), and every element (b, j) of them is computed,
// read back and written by one thread of that block in every segment (elements
// e = tid, tid + threads, ... of the nb x count slice, unit fastest), so the
// only rows a block reads from other blocks are the full product inputs it
// stages into shared memory. Shared memory per block, in elements of T:
// n_mats * R * ks (the weight tile, n_mats matrices of R rows; ks = H rounded up
// to odd, so the threads of a warp, on consecutive tile rows, read different
// banks) + nb * H (the staged rows) + nb * R with `partials` (one value per
// owned element kept between segments).

constexpr int64_t kMaxBatch = int64_t(1) << 20;
constexpr int64_t kMaxHidden = int64_t(1) << 15;

struct Geo {
  int units;         // R: units per block (the last unit slice may own fewer)
  int unit_blocks;   // Gu = ceil(H / R)
  int rows;          // nb: batch rows per block (the last batch block may own fewer)
  int batch_blocks;  // Gb = ceil(B / nb)
  int kstride;       // ks: tile row stride
  int n_mats;
  bool grid_sync;    // Gu > 1: blocks read each other's rows (cooperative launch)
  int64_t tile_elems, stage_elems, smem_elems;
};

struct Slice {
  int first, count;  // units [first, first + count)
  int64_t b0;
  int nb;            // rows [b0, b0 + nb)
};

MTS_HD Slice slice_of(const Geo& g, int index, int64_t H, int64_t B) {
  const int ub = index % g.unit_blocks, bb = index / g.unit_blocks;
  Slice s;
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
MTS_HD T dot(const T* a, const T* w, int64_t n) {
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

// Rows [b0, b0 + nb) of a (B, H) buffer other blocks wrote, into the stage.
template <typename T, class Blk>
MTS_HD void stage_rows(const T* src, int64_t H, const Slice& s, T* stage, const Blk& blk) {
  blk.run([&](int tid) {
    const T* from = src + s.b0 * H;
    const int64_t n = static_cast<int64_t>(s.nb) * H;
    for (int64_t e = tid; e < n; e += blk.threads) stage[e] = load_cg(from + e);
  });
}

// The tile of n_mats (H, H) matrices W(m) (m < n_mats; `mat(m)` gives its
// pointer): forward rows (row n of matrix m = W(m)[first + n, :]) or, backward,
// columns (row n of matrix m = column first + n of W(m)).
template <typename T, class Mat, class Blk>
MTS_HD void fill_tile(const Geo& g, const Slice& s, int64_t H, Mat&& mat, bool columns, T* tile,
                      const Blk& blk) {
  blk.run([&](int tid) {
    const int64_t per = static_cast<int64_t>(s.count) * H;
    const int64_t n_el = g.n_mats * per;
    for (int64_t e = tid; e < n_el; e += blk.threads) {
      const int64_t m = e / per, rem = e - m * per;
      const T* W = mat(m);
      T* rows = tile + m * g.units * g.kstride;
      if (!columns) {
        const int64_t n = rem / H, i = rem - n * H;
        rows[n * g.kstride + i] = W[(s.first + n) * H + i];
      } else {  // consecutive e: consecutive columns of one row of W (coalesced reads)
        const int64_t j = rem / s.count, n = rem - j * s.count;
        rows[n * g.kstride + j] = W[j * H + s.first + n];
      }
    }
  });
}

// The launch geometry, or false when the problem does not fit (the caller runs
// its cuBLAS loop). sms: multiprocessors; smem_bytes: the opt-in shared memory
// per block; one block per multiprocessor is assumed for the co-residency of a
// grid-synchronised launch (the caller checks the occupancy of the result).
// threads: per block. force_grid (testing): split the units whenever H > 1.
// elem: sizeof(T).
inline bool plan(int64_t B, int64_t H, int64_t n_mats, bool partials, bool force_grid, int64_t elem,
                 int64_t sms, int64_t smem_bytes, bool cooperative, int threads, Geo* out) {
  if (B < 1 || H < 1 || n_mats < 1 || B > kMaxBatch || H > kMaxHidden || sms < 1 || threads < 1)
    return false;
  const int64_t budget = smem_bytes / elem;
  const int64_t ks = H | 1;
  auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  // rows of the stage (and the partials) that fit beside an R-unit tile
  auto rows_fit = [&](int64_t R) {
    const int64_t left = budget - n_mats * R * ks;
    return left <= 0 ? int64_t(0) : left / (H + (partials ? R : 0));
  };
  auto finish = [&](int64_t R, int64_t nb) {
    Geo g{};
    g.units = static_cast<int>(R);
    g.unit_blocks = static_cast<int>(ceil_div(H, R));
    g.rows = static_cast<int>(nb);
    g.batch_blocks = static_cast<int>(ceil_div(B, nb));
    g.kstride = static_cast<int>(ks);
    g.n_mats = static_cast<int>(n_mats);
    g.grid_sync = g.unit_blocks > 1;
    g.tile_elems = n_mats * R * ks;
    g.stage_elems = nb * H;
    g.smem_elems = g.tile_elems + g.stage_elems + (partials ? nb * R : 0);
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

// Runs program(grid) on the host: once with every block (grid sync) or once per
// block (without). Every block's shared memory starts as NaN (on the device it
// starts as whatever was there), so a read of an element no phase wrote shows
// in the results.
template <typename S, class Program>
void host_run(int blocks, int threads, int64_t smem_elems, bool grid_sync, bool reverse,
              Program&& program) {
  std::vector<S> storage(static_cast<size_t>(blocks) * static_cast<size_t>(smem_elems),
                         std::numeric_limits<S>::quiet_NaN());
  if (grid_sync) {
    HostGrid<S> grid{blocks, threads, reverse, -1, storage.data(), smem_elems};
    program(grid);
    return;
  }
  for (int n = 0; n < blocks; ++n) {
    HostGrid<S> grid{blocks, threads, reverse, reverse ? blocks - 1 - n : n, storage.data(), smem_elems};
    program(grid);
  }
}

}  // namespace persist
}  // namespace mts

#ifdef __CUDACC__
#include <cooperative_groups.h>

namespace mts {
namespace persist {

template <typename S>
struct DeviceBlock {
  int index, threads;
  S* smem;
  template <class F>
  __device__ void run(F&& f) const {
    f(static_cast<int>(threadIdx.x));
    __syncthreads();
  }
};

template <typename S, bool kGrid>
struct DeviceGrid {
  S* smem;
  template <class F>
  __device__ void segment(F&& f) {
    const DeviceBlock<S> blk{static_cast<int>(blockIdx.x), static_cast<int>(blockDim.x), smem};
    f(blk);
    if constexpr (kGrid) {
      cooperative_groups::this_grid().sync();
    } else {
      __syncthreads();
    }
  }
};

}  // namespace persist
}  // namespace mts
#endif
