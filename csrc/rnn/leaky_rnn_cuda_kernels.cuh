#pragma once
// Persistent CUDA kernels of the dense leaky recurrence: shared device code and
// launch planning, private to leaky_rnn_cuda_fwd.cu / leaky_rnn_cuda_bwd.cu (no
// torch headers). The op and the operand layout are in leaky_rnn_launch.h.
//
// Design (Diamos et al. 2016, "Persistent RNNs"; cuDNN's persistent RNN). One
// launch runs all T steps; every block keeps a slice of W_hh (and W_skip) in
// shared memory for the whole sequence and reads it from there at every step.
// Blocks are indexed (unit slice ub, batch block bb), blockIdx.x = bb * Gu + ub.
//
//  * Forward. Block (ub, bb) owns the hidden units J = [j0, j0 + R) and the
//    batch rows [b0, b0 + Bblk). Its shared tile holds rows j in J of W_hh and
//    W_skip side by side, Wsm[n][m * H4 + i] = W_m[j0 + n][i] (zero padded to
//    R4 rows and H4 = round_up(H, 4) columns per matrix). Step k:
//        z[b, j] = p_t[b, j] + sum_i h_{t-d}[b, i] W[j, i] + sum_i h_{t-s}[b, i] W_skip[j, i]
//    over all i (the concatenation [h_{t-d} | h_{t-s}] is the reduction
//    operand, length n_mats * H4), then u, h_t[b, j] for its own (b, j) only.
//  * Backward. Block (ub, bb) owns the input units I = [i0, i0 + R): columns
//    of W. Shared tile Wsm[m * R4 + n][j] = W_m[j][i0 + n] (one row per owned
//    column of each matrix, length H4). Step k (e_t of all units already in
//    e_all): for its own (b, i)
//        delta_{t-d}[b, i] += alpha_i delta_t[b, i] + sum_j e_t[b, j] W[j, i]
//        delta_{t-s}[b, i] += sum_j e_t[b, j] W_skip[j, i]
//    so every element of delta (and dh0) is only ever written by the block
//    that owns its column and batch row: no atomics, deterministic. Then the
//    block computes e_{t'} (t' = time of step k - 1) for its own (b, i): delta_{t'}
//    is complete for them, since its last contributions came from steps k - 1
//    + d and k - 1 + s >= k, i.e. from this block, at this step or earlier.
//
// Barriers. Step k reads rows written by other blocks at earlier steps only
// (forward: h_{t-d}, h_{t-s}, d, s >= 1; backward: e_t, written before the
// previous barrier) and writes rows nobody reads during step k (h_t; delta
// rows of other times and dh0 only by their owner; e_{t'}), so one barrier per
// step suffices: cooperative_groups grid.sync() when the units are split over
// several blocks (Gu > 1, cooperative launch: every block co-resident), else
// __syncthreads() (Gu == 1: each block owns all units of its batch rows and
// only ever reads what it wrote itself). Rows written inside the kernel (h,
// delta, e) are read with ld.global.cg (L2, never a possibly stale L1 line)
// and written with st.global.cg; grid.sync() orders them across blocks.
// Inputs that stay constant (p, W, alpha, u) use the read-only path.
// Within a block (backward with W_skip), delta_{t-d} and delta_{t-s} may be
// the same row (d == s, or both dh0), updated by different threads: the two
// matrices' updates run in two phases separated by __syncthreads().
//
// Per-step product in a block: C[Bblk][N] = A[Bblk][K] * Wsm[N][K]^T, with A
// streamed from global memory (L2) and Wsm in shared memory. A thread owns a
// 4 x 4 output tile (4 batch rows x 4 rows of Wsm) and a 1/S share of K: S
// consecutive lanes (S = 8, 16 or 32; a power of two, so a group never
// straddles warps) take interleaved 4-wide chunks q = s, s + S, ... of K, so a
// group's A loads are contiguous 16-byte pieces of the same 4 rows (float4
// when H % 4 == 0 and the rows are 16-byte aligned) and its shared loads
// consecutive 16-byte words of the same 4 rows (conflict-free: S >= 8 fills a
// quarter warp). Tiles are numbered with the Wsm-row index fastest, so the
// groups of a warp share A rows and the coalescer merges their loads. The S
// partial 4 x 4 tiles are reduced with shuffles by recursive halving (each
// level halves the values a lane keeps, 15 shuffles for S = 16); the epilogue
// is spread over the group: a lane finishes 2 (S = 8) or 1 (S = 16; S = 32:
// even lanes) of the 16 sums. Tiles beyond the 256 / S groups of a block are
// done in further passes (S = 8 once there are more than 16 tiles).
//
// Limit. A block needs n_mats * R4 * H4 * 4 bytes of shared memory (n_mats = 2
// with the skip term; R4 >= 4), at most the device's opt-in maximum per block
// (227 KiB on H100/H200, 163 KiB on A100), and all Gu * Gb blocks must be
// co-resident (<= multiProcessorCount x resident blocks per SM), so roughly
//     n_mats * H^2 * 4 bytes <= SMs x max shared memory per block.
// make_plan() decides per call from the device's properties; with these rules
// (B = 64) the persistent kernels take
//     H100 (132 SMs): H <= 2640 without W_skip, H <= 1816 with it
//     A100 (108 SMs): H <= 2084 without W_skip, H <= 1304 with it
// and, up to H = 240 / 168 (H100) or 204 / 144 (A100), all of W fits one block:
// then blocks split the batch only and never wait on each other (Gu == 1,
// ordinary launch, no grid barrier). Also B <= 2^20, H <= 2^15 (32-bit
// block-local indices), and a device with cooperative launch support when
// Gu > 1. Beyond that nothing is launched and the caller falls back to its
// ATen loop.
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "../persistent_launch.cuh"
#include "leaky_rnn_launch.h"
#include "leaky_rnn_math.h"

#define MTS_RNN_DEV __device__ __forceinline__

namespace mts {
namespace rnn {
namespace persistent {

constexpr int kThreads = 256;
constexpr int64_t kMaxBatch = int64_t(1) << 20;
constexpr int64_t kMaxHidden = int64_t(1) << 15;

// Geometry of one launch (uniform over the grid).
struct Geo {
  int units;        // R: units owned per block (the last block may own fewer)
  int units_pad;    // R4: R rounded up to 4 (rows of the tile per matrix)
  int unit_blocks;  // Gu = ceil(H / R)
  int h4;           // H4 = round_up(H, 4)
  int n_mats;       // 1, or 2 with W_skip
  int rows;         // N: rows of the shared tile (forward R4, backward n_mats * R4)
  int k_len;        // K: row length of the shared tile (forward n_mats * H4, backward H4)
  int batch;        // Bblk: batch rows per block (the last block may own fewer)
  int tiles_n;      // N / 4
  int tiles;        // ceil(Bblk / 4) * N / 4: 4 x 4 output tiles per block and step
  int log2_split;   // log2 S, 3..5
};

MTS_RNN_DEV int64_t time_of(int64_t k, int64_t T, bool reverse) { return reverse ? T - 1 - k : k; }

// Variable lengths (leaky_rnn_launch.h). Row b's length clamped to [0, T]; T
// without lengths (device values, never checked on the host).
MTS_RNN_DEV int64_t row_len(const int64_t* lengths, int64_t b, int64_t T) {
  if (lengths == nullptr) return T;
  const int64_t L = __ldg(lengths + b);
  return L < 0 ? 0 : (L > T ? T : L);
}

// Time of step k of a row of length L: t_b(k) while k < L, else the padded
// time k whose zeros the row writes at that step (each padded time once).
MTS_RNN_DEV int64_t row_time(int64_t k, int64_t L, bool reverse) {
  return k < L ? (reverse ? L - 1 - k : k) : k;
}

// This block's share of the work: units [first, first + count) (forward: output
// units; backward: input units) for batch rows [b0, b0 + nb). count, nb >= 1.
struct Slice {
  int first, count;
  int64_t b0;
  int nb;
};

MTS_RNN_DEV Slice block_slice(const Geo& g, int H, int64_t B) {
  const int ub = static_cast<int>(blockIdx.x) % g.unit_blocks;
  const int bb = static_cast<int>(blockIdx.x) / g.unit_blocks;
  Slice s;
  s.first = ub * g.units;
  s.count = min(g.units, H - s.first);
  s.b0 = static_cast<int64_t>(bb) * g.batch;
  s.nb = static_cast<int>(min(static_cast<int64_t>(g.batch), B - s.b0));
  return s;
}

// Global loads / stores of rows that the kernel itself writes: via L2 only.
MTS_RNN_DEV float ld_cg(const float* p) { return __ldcg(p); }
MTS_RNN_DEV void st_cg(float* p, float v) { __stcg(p, v); }

MTS_RNN_DEV float phi(float z, bool relu) { return relu ? relu_of(z) : tanhf(z); }

template <bool kGrid>
MTS_RNN_DEV void step_barrier() {
  if constexpr (kGrid) {
    cooperative_groups::this_grid().sync();
  } else {
    __syncthreads();
  }
}

// A[row][i .. i + 3] of one reduction row, zero beyond H.
template <bool kVec>
MTS_RNN_DEV float4 load_a4(const float* row, int i, int H) {
  if constexpr (kVec) {
    return __ldcg(reinterpret_cast<const float4*>(row + i));
  } else {
    float4 a;
    a.x = i < H ? ld_cg(row + i) : 0.f;
    a.y = i + 1 < H ? ld_cg(row + i + 1) : 0.f;
    a.z = i + 2 < H ? ld_cg(row + i + 2) : 0.f;
    a.w = i + 3 < H ? ld_cg(row + i + 3) : 0.f;
    return a;
  }
}

// v[4 r + c] += sum over this lane's chunks q = s, s + S, ... < K / 4 of
//   A[r][4q .. 4q + 3] . wsm[c][4q .. 4q + 3],
// where A row r is a0 + off0[r] for reduction index < H4 and a1 + off1[r] past
// it (the forward's skip operand, whose rows may sit at other times per row
// with lengths; the backward passes K == H4).
template <bool kVec>
MTS_RNN_DEV void tile_dot(float (&v)[16], const float* a0, const float* a1,
                          const int64_t (&off0)[4], const int64_t (&off1)[4], const float* wsm,
                          const Geo& g, int H, int s) {
  const int S = 1 << g.log2_split;
  const int nq = g.k_len >> 2;
#pragma unroll 2
  for (int q = s; q < nq; q += S) {
    const int kk = q << 2;
    const bool second = kk >= g.h4;
    const int i = second ? kk - g.h4 : kk;
    float4 a[4], w[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = load_a4<kVec>(second ? a1 + off1[r] : a0 + off0[r], i, H);
#pragma unroll
    for (int c = 0; c < 4; ++c) w[c] = *reinterpret_cast<const float4*>(wsm + c * g.k_len + kk);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        float x = v[4 * r + c];
        x = fmaf(a[r].x, w[c].x, x);
        x = fmaf(a[r].y, w[c].y, x);
        x = fmaf(a[r].z, w[c].z, x);
        x = fmaf(a[r].w, w[c].w, x);
        v[4 * r + c] = x;
      }
    }
  }
}

// Sums v[0..16) over the S = 2^log2_split lanes of a group (S = 8, 16 or 32;
// lane index s = lane % S; all 32 lanes of the warp must call it, S uniform).
// Recursive halving: at level l (lane offset S >> l) a lane keeps the lower or
// upper half of its values, adds the partner's copy of that half and hands
// over the other half. After min(log2 S, 4) levels a lane holds kept = 16 >>
// min(log2 S, 4) complete sums (for S = 32 after a last plain butterfly over
// lane offset 1), those of the elements first .. first + kept - 1; `first` is
// returned. For S = 32 lanes s and s ^ 1 hold the same sums: only even s emit.
template <int kHalf>
MTS_RNN_DEV void halve(float (&v)[16], int s, int lane_off, int& first) {
  const bool upper = (s & lane_off) != 0;
#pragma unroll
  for (int m = 0; m < kHalf; ++m) {
    const float send = upper ? v[m] : v[m + kHalf];
    const float keep = upper ? v[m + kHalf] : v[m];
    v[m] = keep + __shfl_xor_sync(0xffffffffu, send, lane_off);
  }
  if (upper) first += kHalf;
}

MTS_RNN_DEV int reduce_tile(float (&v)[16], int s, int log2_split) {
  const int S = 1 << log2_split;
  int first = 0;
  halve<8>(v, s, S >> 1, first);
  halve<4>(v, s, S >> 2, first);
  halve<2>(v, s, S >> 3, first);
  if (log2_split >= 4) halve<1>(v, s, S >> 4, first);
  if (log2_split >= 5) v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  return first;
}

// Thread roles within a block, fixed for the launch.
struct Lanes {
  int s;          // lane index within the group, 0..S-1
  int group;      // group index, 0..256/S - 1
  int per_pass;   // groups per block = tiles per pass
  int kept;       // sums a lane finishes per tile: 2 (S = 8) or 1
  bool emitter;   // false for the duplicate lanes (odd s when S = 32)
};

MTS_RNN_DEV Lanes lanes_of(const Geo& g) {
  Lanes l;
  const int S = 1 << g.log2_split;
  l.s = static_cast<int>(threadIdx.x) & (S - 1);
  l.group = static_cast<int>(threadIdx.x) >> g.log2_split;
  l.per_pass = kThreads >> g.log2_split;
  l.kept = g.log2_split == 3 ? 2 : 1;
  l.emitter = g.log2_split <= 4 || (l.s & 1) == 0;
  return l;
}

// ---------------------------------------------------------------------------
// Host side: device properties and the launch plan.

using persist::clear_error;
using persist::cooperative_fallback;
using persist::device_info;
using persist::DeviceInfo;

struct Plan {
  bool ok;          // false: the problem does not fit, launch nothing
  bool grid_sync;   // Gu > 1: cooperative launch, grid.sync() per step
  int blocks;       // Gu * Gb
  size_t smem;      // dynamic shared memory bytes per block
  Geo g;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up4(int64_t a) { return (a + 3) / 4 * 4; }

// Fills the tile counts of g (units, units_pad, n_mats, h4, batch set) for a
// forward or backward launch; returns a cost estimate (lane iterations of the
// product per step, per block, plus a per-pass overhead), or -1 if the block's
// tile count does not fit in int.
inline int64_t finish_geo(Geo* g, bool backward) {
  g->rows = backward ? g->n_mats * g->units_pad : g->units_pad;
  g->k_len = backward ? g->h4 : g->n_mats * g->h4;
  g->tiles_n = g->rows / 4;
  const int64_t tiles = ceil_div(g->batch, 4) * g->tiles_n;
  if (tiles > INT_MAX / 2) return -1;
  g->tiles = static_cast<int>(tiles);
  int p2 = 1;  // smallest power of two >= min(tiles, 32)
  while (p2 < tiles && p2 < 32) p2 *= 2;
  int log2_p2 = 0;
  while ((1 << log2_p2) < p2) ++log2_p2;
  g->log2_split = 8 - log2_p2 < 5 ? 8 - log2_p2 : 5;  // S = min(32, 256 / p2) >= 8
  const int64_t split = int64_t(1) << g->log2_split;
  const int64_t passes = ceil_div(tiles, kThreads / split);
  return passes * (ceil_div(g->k_len / 4, split) + 4);
}

// occupancy(grid_sync, smem_bytes, &blocks_per_sm) -> cudaError_t queries the
// kernel that would run. Leaves plan->ok false when the problem does not fit.
// force_grid: split the units even if W fits one block (testing; H > 4).
template <class Occupancy>
cudaError_t make_plan(int64_t B, int64_t H, int n_mats, bool backward, bool force_grid,
                      const DeviceInfo& dev, Occupancy&& occupancy, Plan* plan) {
  *plan = Plan{};
  if (B < 1 || H < 1 || B > kMaxBatch || H > kMaxHidden || dev.sms < 1) return cudaSuccess;
  Geo g{};
  g.n_mats = n_mats;
  g.h4 = static_cast<int>(round_up4(H));
  const int64_t budget = dev.smem_optin / 4;           // floats per block
  int64_t rmax = budget / (n_mats * g.h4) / 4 * 4;     // units per block that fit
  if (force_grid && H > 4) {
    // round_up4(ceil(H / 2)) < H for H > 4: at least two unit slices.
    const int64_t half = round_up4(ceil_div(H, 2));
    if (half < rmax) rmax = half;
  }
  int64_t batch_blocks = 0;
  if (rmax >= g.h4) {
    // All of W in every block: blocks split the batch only.
    g.units = static_cast<int>(H);
    g.units_pad = g.h4;
    g.unit_blocks = 1;
    int occ = 0;
    const cudaError_t err =
        occupancy(false, static_cast<size_t>(n_mats) * g.h4 * g.h4 * 4, &occ);
    if (err != cudaSuccess) return err;
    if (occ < 1) return cudaSuccess;
    const int64_t cap = static_cast<int64_t>(dev.sms) * occ;
    const int64_t min_rows = B < 4 ? B : 4;
    const int64_t rows = ceil_div(B, cap);
    g.batch = static_cast<int>(rows > min_rows ? rows : min_rows);
    batch_blocks = ceil_div(B, g.batch);
    if (finish_geo(&g, backward) < 0) return cudaSuccess;
  } else {
    // Units split over Gu > 1 co-resident blocks (and the batch over Gb).
    if (!dev.cooperative || rmax < 4) return cudaSuccess;
    int occ = 0;
    const cudaError_t err = occupancy(true, static_cast<size_t>(n_mats) * rmax * g.h4 * 4, &occ);
    if (err != cudaSuccess) return err;
    if (occ < 1) return cudaSuccess;
    // Every block of the grid must be resident; slices narrower than rmax
    // need less shared memory, so cap (counted at rmax) is a lower bound.
    const int64_t cap = static_cast<int64_t>(dev.sms) * occ;
    const int64_t gu_min = ceil_div(H, rmax);
    if (gu_min > cap) return cudaSuccess;
    const int64_t gb_max = cap / gu_min < B ? cap / gu_min : B;
    int64_t best = -1;
    for (int64_t gb_try = 1; gb_try <= gb_max; ++gb_try) {
      Geo c = g;
      const int64_t rows = ceil_div(B, gb_try);
      const int64_t gb = ceil_div(B, rows);
      const int64_t gu_target = cap / gb;  // >= gu_min
      int64_t r = round_up4(ceil_div(H, gu_target));
      if (r > rmax) r = rmax;  // not reached: ceil(H / gu_target) <= ceil(H / gu_min) <= rmax
      c.units = static_cast<int>(r);
      c.units_pad = c.units;
      c.unit_blocks = static_cast<int>(ceil_div(H, r));
      c.batch = static_cast<int>(rows);
      const int64_t cost = finish_geo(&c, backward);
      if (cost < 0 || c.unit_blocks * gb > cap) continue;
      if (best < 0 || cost <= best) {  // ties: more batch blocks, less A traffic
        best = cost;
        g = c;
        batch_blocks = gb;
      }
    }
    if (best < 0) return cudaSuccess;
  }
  const int64_t blocks = g.unit_blocks * batch_blocks;
  if (blocks < 1 || blocks > INT_MAX) return cudaSuccess;
  plan->ok = true;
  plan->grid_sync = g.unit_blocks > 1;
  plan->blocks = static_cast<int>(blocks);
  plan->smem = static_cast<size_t>(g.rows) * g.k_len * sizeof(float);
  plan->g = g;
  return cudaSuccess;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Kernel pointer of one instantiation (grid_sync, vec) and its launch.
template <class Params>
using KernelFn = void (*)(Params, Geo);

template <class Params>
cudaError_t kernel_occupancy(KernelFn<Params> fn, const DeviceInfo& dev, size_t smem, int* blocks) {
  // Always the device maximum, so concurrent launches with other sizes never
  // see a smaller limit set in between.
  cudaError_t err =
      cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
  if (err == cudaSuccess)
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, fn, kThreads, smem);
  return clear_error(err);
}

// Sets *launched. A cooperative launch refused for a reason cooperative_fallback
// accepts is not an error: the caller runs its own loop. Either way the error
// is out of the last-error slot.
template <class Params>
cudaError_t launch_plan(KernelFn<Params> fn, const Plan& plan, const Params& params,
                        cudaStream_t stream, bool* launched) {
  *launched = false;
  if (plan.grid_sync) {
    Params p = params;
    Geo g = plan.g;
    void* args[] = {&p, &g};
    const cudaError_t err = clear_error(cudaLaunchCooperativeKernel(
        fn, dim3(static_cast<unsigned>(plan.blocks)), dim3(kThreads), args, plan.smem, stream));
    *launched = err == cudaSuccess;
    if (!*launched && cooperative_fallback(err, stream)) return cudaSuccess;
    return err;
  }
  fn<<<static_cast<unsigned>(plan.blocks), kThreads, plan.smem, stream>>>(params, plan.g);
  const cudaError_t err = cudaGetLastError();
  *launched = err == cudaSuccess;
  return err;
}

// Checks shared by both directions; false: a caller bug.
inline bool valid_shape(const LeakyRnnCudaShape& s, const float* w_skip) {
  return s.T >= 1 && s.B >= 1 && s.H >= 1 && s.dilation >= 1 && s.skip >= 0 &&
         (s.skip > 0) == (w_skip != nullptr);
}

}  // namespace persistent
}  // namespace rnn
}  // namespace mts
