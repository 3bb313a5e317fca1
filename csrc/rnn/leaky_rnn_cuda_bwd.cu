// Persistent backward kernel of the dense leaky recurrence (the time loop only:
// the weight gradients are GEMMs over e_all afterwards, by the caller) and its
// host entry point (leaky_rnn_launch.h). Design, barriers and limits:
// leaky_rnn_cuda_kernels.cuh.
#include "leaky_rnn_cuda_kernels.cuh"

namespace mts {
namespace rnn {
namespace persistent {
namespace {

// e_t = (1 - alpha) * phi'(u_t) * delta_t for this block's (b, i), t = row b's
// time of step k. delta_t of those elements is complete (see the .cuh). A row
// that does not run step k zeroes e and delta at its padded time k instead
// (nobody else reads or writes them: every other access of row b is at t < L_b).
MTS_RNN_DEV void block_e(const LeakyRnnBwdParams& p, int64_t k, int64_t b0, int nb, int i0, int nu) {
  const int64_t T = p.s.T;
  const int H = static_cast<int>(p.s.H);
  const int64_t BH = p.s.B * H;
  const int64_t count = static_cast<int64_t>(nb) * nu;
  for (int64_t f = threadIdx.x; f < count; f += kThreads) {
    const int64_t bl = f / nu;
    const int n = static_cast<int>(f - bl * nu);
    const int i = i0 + n;
    const int64_t b = b0 + bl;
    const int64_t L = row_len(p.lengths, b, T);
    const int64_t o = row_time(k, L, p.s.reverse) * BH + b * H + i;
    if (k >= L) {
      st_cg(p.delta + o, 0.f);
      st_cg(p.e + o, 0.f);
      continue;
    }
    float e = dphi_times(ld_cg(p.delta + o), __ldg(p.u + o), p.s.relu);
    if (p.alpha != nullptr) e *= 1.f - __ldg(p.alpha + i);
    st_cg(p.e + o, e);
  }
}

template <bool kGrid, bool kVec>
__global__ void __launch_bounds__(kThreads)
    leaky_rnn_bwd_kernel(const LeakyRnnBwdParams p, const Geo g) {
  extern __shared__ float4 smem4[];
  float* const wsm = reinterpret_cast<float*>(smem4);
  const int64_t T = p.s.T, B = p.s.B;
  const int H = static_cast<int>(p.s.H);
  const int64_t BH = B * H;
  const Slice sl = block_slice(g, H, B);
  const int i0 = sl.first, nu = sl.count;
  const int64_t b0 = sl.b0;
  const int nb = sl.nb;

  // Shared tile: wsm[m * R4 + n][j] = W_m[j][i0 + n], zero padded. n runs
  // fastest over the threads so the global reads are row pieces.
  const int tile_len = g.rows * g.k_len;
  for (int f = static_cast<int>(threadIdx.x); f < tile_len; f += kThreads) {
    const int j = f / g.rows;
    const int n = f - j * g.rows;
    const bool second = n >= g.units_pad;
    const int nl = second ? n - g.units_pad : n;
    const float* wm = second ? p.w_skip : p.w;
    wsm[n * g.k_len + j] = (nl < nu && j < H) ? __ldg(wm + static_cast<int64_t>(j) * H + i0 + nl) : 0.f;
  }
  block_e(p, T - 1, b0, nb, i0, nu);
  __syncthreads();  // the shared tile
  step_barrier<kGrid>();  // e of the last step, all units

  const Lanes ln = lanes_of(g);
  const bool leak = p.alpha != nullptr;
  const bool rev = p.s.reverse;
  const int64_t dil = p.s.dilation, skip = p.s.skip;
  for (int64_t k = T - 1; k >= 0; --k) {
    // Whether the targets are rows of delta (else dh0); uniform over the rows.
    const bool td_delta = k >= dil;
    const bool ts_delta = skip > 0 && k >= skip;
    for (int base = 0; base < g.tiles; base += ln.per_pass) {
      const int tile = base + ln.group;
      const bool active = tile < g.tiles;
      const int tb = active ? tile / g.tiles_n : 0;
      const int tn = active ? tile - tb * g.tiles_n : 0;
      float v[16];
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = 0.f;
      if (active) {
        // e_t rows at each row's own time; a row that does not run step k reads
        // an in-bounds row of the full-length timing, unused; a tile none of
        // whose rows runs skips the product.
        int64_t off[4];
        bool any = false;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t b = b0 + min(4 * tb + r, nb - 1);
          const int64_t L = row_len(p.lengths, b, T);
          const bool runs = k < L;
          any = any || runs;
          off[r] = row_time(k, runs ? L : T, rev) * BH + b * H;
        }
        if (any) tile_dot<kVec>(v, p.e, p.e, off, off, wsm + 4 * tn * g.k_len, g, H, ln.s);
      }
      const int first = reduce_tile(v, ln.s, g.log2_split);  // whole warp takes part
      // A tile lies in one matrix (R4 is a multiple of 4). delta_{t-d} and
      // delta_{t-s} may be the same row: W_skip's updates wait for W's.
      const int mat = 4 * tn >= g.units_pad ? 1 : 0;
      for (int phase = 0; phase < g.n_mats; ++phase) {
        if (phase > 0) __syncthreads();
        if (!(active && ln.emitter && mat == phase)) continue;
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int e = first + m;
          const int bl = 4 * tb + (e >> 2);
          const int n = 4 * tn + (e & 3) - mat * g.units_pad;
          if (m < ln.kept && bl < nb && n < nu) {
            const int i = i0 + n;
            const int64_t b = b0 + bl;
            const int64_t o = b * H + i;
            const int64_t L = row_len(p.lengths, b, T);
            if (k >= L) continue;  // row b does not run step k
            if (mat == 0) {
              float* const tgt = td_delta ? p.delta + row_time(k - dil, L, rev) * BH : p.dh0;
              float upd = v[m];
              if (leak)
                upd = fmaf(__ldg(p.alpha + i), ld_cg(p.delta + row_time(k, L, rev) * BH + o), upd);
              st_cg(tgt + o, ld_cg(tgt + o) + upd);
            } else {
              float* const tgt = ts_delta ? p.delta + row_time(k - skip, L, rev) * BH : p.dh0;
              st_cg(tgt + o, ld_cg(tgt + o) + v[m]);
            }
          }
        }
      }
    }
    if (k > 0) {
      __syncthreads();  // delta of step k - 1 updated by other threads of the block
      block_e(p, k - 1, b0, nb, i0, nu);
      step_barrier<kGrid>();  // e of step k - 1, all units, before anyone reads it
    }
  }
}

using BwdFn = KernelFn<LeakyRnnBwdParams>;

BwdFn bwd_kernel(bool grid, bool vec) {
  if (grid) return vec ? leaky_rnn_bwd_kernel<true, true> : leaky_rnn_bwd_kernel<true, false>;
  return vec ? leaky_rnn_bwd_kernel<false, true> : leaky_rnn_bwd_kernel<false, false>;
}

}  // namespace
}  // namespace persistent

cudaError_t leaky_rnn_bwd_cuda(const LeakyRnnBwdParams& p, cudaStream_t stream, bool* launched) {
  using namespace persistent;
  *launched = false;
  if (p.s.B < 1 || p.s.H < 1) return cudaSuccess;  // nothing to loop over: caller's loop
  if (!valid_shape(p.s, p.w_skip) || p.u == nullptr || p.w == nullptr || p.delta == nullptr ||
      p.e == nullptr || p.dh0 == nullptr)
    return cudaErrorInvalidValue;
  DeviceInfo dev{};
  cudaError_t err = device_info(&dev);
  if (err != cudaSuccess) return err;
  const bool vec = p.s.H % 4 == 0 && aligned16(p.e);
  const int n_mats = p.s.skip > 0 ? 2 : 1;
  Plan plan{};
  err = make_plan(
      p.s.B, p.s.H, n_mats, /*backward=*/true, p.s.force_grid_sync, dev,
      [&](bool grid, size_t smem, int* occ) {
        return kernel_occupancy(bwd_kernel(grid, vec), dev, smem, occ);
      },
      &plan);
  if (err != cudaSuccess || !plan.ok) return err;
  return launch_plan(bwd_kernel(plan.grid_sync, vec), plan, p, stream, launched);
}

}  // namespace rnn
}  // namespace mts
