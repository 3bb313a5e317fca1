// Persistent forward kernel of the dense leaky recurrence and its host entry
// point (leaky_rnn_launch.h). Design, barriers and limits:
// leaky_rnn_cuda_kernels.cuh.
#include "leaky_rnn_cuda_kernels.cuh"

namespace mts {
namespace rnn {
namespace persistent {
namespace {

// kGrid: units split over blocks (cooperative launch, grid.sync() per step).
// kVec: H % 4 == 0 and h, h0 16-byte aligned (float4 loads of the state rows).
template <bool kGrid, bool kVec>
__global__ void __launch_bounds__(kThreads)
    leaky_rnn_fwd_kernel(const LeakyRnnFwdParams p, const Geo g) {
  extern __shared__ float4 smem4[];
  float* const wsm = reinterpret_cast<float*>(smem4);
  const int64_t T = p.s.T, B = p.s.B;
  const int H = static_cast<int>(p.s.H);
  const int64_t BH = B * H;
  const Slice sl = block_slice(g, H, B);
  const int j0 = sl.first, nu = sl.count;
  const int64_t b0 = sl.b0;
  const int nb = sl.nb;

  // Shared tile: wsm[n][m * H4 + i] = W_m[j0 + n][i], zero padded.
  const int tile_len = g.rows * g.k_len;
  for (int f = static_cast<int>(threadIdx.x); f < tile_len; f += kThreads) {
    const int n = f / g.k_len;
    const int kk = f - n * g.k_len;
    const bool second = kk >= g.h4;
    const int i = second ? kk - g.h4 : kk;
    const float* wm = second ? p.w_skip : p.w;
    wsm[f] = (n < nu && i < H) ? __ldg(wm + static_cast<int64_t>(j0 + n) * H + i) : 0.f;
  }
  __syncthreads();

  const Lanes ln = lanes_of(g);
  const bool leak = p.alpha != nullptr;
  const bool rev = p.s.reverse;
  const int64_t dil = p.s.dilation, skip = p.s.skip;
  for (int64_t k = 0; k < T; ++k) {
    // Whether the delayed operands are rows of h (else h0); uniform over the rows.
    const bool hd_h = k >= dil;
    // The skip operand is only read when n_mats == 2 (K spans two matrices).
    const bool hs_h = skip > 0 && k >= skip;
    const float* hd = hd_h ? p.h : p.h0;
    const float* hs = hs_h ? p.h : p.h0;
    for (int base = 0; base < g.tiles; base += ln.per_pass) {
      const int tile = base + ln.group;
      const bool active = tile < g.tiles;
      const int tb = active ? tile / g.tiles_n : 0;
      const int tn = active ? tile - tb * g.tiles_n : 0;
      float v[16];
#pragma unroll
      for (int e = 0; e < 16; ++e) v[e] = 0.f;
      if (active) {
        // Rows of the delayed states at their own times (with reverse and
        // lengths they differ per row). A row that does not run step k reads
        // in-bounds rows of the full-length timing, unused; a tile none of whose
        // rows runs skips the product.
        int64_t off0[4], off1[4];
        bool any = false;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          const int64_t b = b0 + min(4 * tb + r, nb - 1);
          const int64_t L = row_len(p.lengths, b, T);
          const bool runs = k < L;
          any = any || runs;
          const int64_t Lr = runs ? L : T;
          off0[r] = (hd_h ? row_time(k - dil, Lr, rev) * BH : 0) + b * H;
          off1[r] = (hs_h ? row_time(k - skip, Lr, rev) * BH : 0) + b * H;
        }
        if (any) tile_dot<kVec>(v, hd, hs, off0, off1, wsm + 4 * tn * g.k_len, g, H, ln.s);
      }
      const int first = reduce_tile(v, ln.s, g.log2_split);  // whole warp takes part
      if (active && ln.emitter) {
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int e = first + m;
          const int bl = 4 * tb + (e >> 2);
          const int n = 4 * tn + (e & 3);
          if (m < ln.kept && bl < nb && n < nu) {
            const int j = j0 + n;
            const int64_t b = b0 + bl;
            const int64_t o = b * H + j;
            const int64_t L = row_len(p.lengths, b, T);
            const int64_t t_off = row_time(k, L, rev) * BH;
            if (k >= L) {  // padded time k of row b
              st_cg(p.h + t_off + o, 0.f);
              if (leak) p.u[t_off + o] = 0.f;
              continue;
            }
            const float u = phi(v[m] + __ldg(p.p + t_off + o), p.s.relu);
            if (leak) {
              const float a = __ldg(p.alpha + j);
              const float* hdr = hd_h ? p.h + row_time(k - dil, L, rev) * BH : p.h0;
              st_cg(p.h + t_off + o, leak_mix(a, ld_cg(hdr + o), u));
              p.u[t_off + o] = u;
            } else {
              st_cg(p.h + t_off + o, u);
            }
          }
        }
      }
    }
    // h_t complete everywhere before any block reads it (as h_{t'-d} / h_{t'-s}).
    if (k + 1 < T) step_barrier<kGrid>();
  }
}

using FwdFn = KernelFn<LeakyRnnFwdParams>;

FwdFn fwd_kernel(bool grid, bool vec) {
  if (grid) return vec ? leaky_rnn_fwd_kernel<true, true> : leaky_rnn_fwd_kernel<true, false>;
  return vec ? leaky_rnn_fwd_kernel<false, true> : leaky_rnn_fwd_kernel<false, false>;
}

}  // namespace
}  // namespace persistent

cudaError_t leaky_rnn_fwd_cuda(const LeakyRnnFwdParams& p, cudaStream_t stream, bool* launched) {
  using namespace persistent;
  *launched = false;
  if (p.s.B < 1 || p.s.H < 1) return cudaSuccess;  // nothing to loop over: caller's loop
  if (!valid_shape(p.s, p.w_skip) || (p.alpha == nullptr) != (p.u == nullptr) ||
      p.p == nullptr || p.w == nullptr || p.h0 == nullptr || p.h == nullptr)
    return cudaErrorInvalidValue;
  DeviceInfo dev{};
  cudaError_t err = device_info(&dev);
  if (err != cudaSuccess) return err;
  const bool vec = p.s.H % 4 == 0 && aligned16(p.h) && aligned16(p.h0);
  const int n_mats = p.s.skip > 0 ? 2 : 1;
  Plan plan{};
  err = make_plan(
      p.s.B, p.s.H, n_mats, /*backward=*/false, p.s.force_grid_sync, dev,
      [&](bool grid, size_t smem, int* occ) {
        return kernel_occupancy(fwd_kernel(grid, vec), dev, smem, occ);
      },
      &plan);
  if (err != cudaSuccess || !plan.ok) return err;
  return launch_plan(fwd_kernel(plan.grid_sync, vec), plan, p, stream, launched);
}

}  // namespace rnn
}  // namespace mts
