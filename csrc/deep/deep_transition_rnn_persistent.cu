// The persistent CUDA kernels of the deep-transition time loop (the program and
// its design: deep_persistent.h; the host emulation the CPU tests run:
// deep_transition_rnn_persistent_emulate_cpu.cpp). One launch per direction;
// float only (float16/bfloat16 arrive as float32 copies, float64 takes the
// cuBLAS loop). Nothing synchronises with the host.
#include <cuda_runtime.h>

#include "../persistent_launch.cuh"
#include "deep_persistent.h"
#include "deep_transition_rnn_launch.h"

namespace mts {
namespace deep {
namespace {

constexpr int kThreads = 256;

template <bool kGrid>
__global__ void __launch_bounds__(kThreads) persist_fwd_kernel(const DeepPersistFwd<float> q, const PersistGeo g) {
  extern __shared__ float smem[];
  persist::DeviceGrid<float, kGrid> grid{smem};
  deep_persist_fwd(q, g, grid);
}

template <bool kGrid>
__global__ void __launch_bounds__(kThreads) persist_bwd_kernel(const DeepPersistBwd<float> q, const PersistGeo g) {
  extern __shared__ float smem[];
  persist::DeviceGrid<float, kGrid> grid{smem};
  deep_persist_bwd(q, g, grid);
}

// Plans, checks the occupancy a grid-synchronised launch needs, and launches
// (cooperatively when the blocks wait on each other). *launched false with
// cudaSuccess: the problem or the device does not fit, the caller's loop runs.
template <class Params>
cudaError_t launch(void (*grid_fn)(Params, PersistGeo), void (*block_fn)(Params, PersistGeo), const Params& q,
                   bool force_grid, cudaStream_t stream, bool* launched) {
  using persist::clear_error;
  *launched = false;
  persist::DeviceInfo dev{};
  cudaError_t err = persist::device_info(&dev);
  if (err != cudaSuccess) return err;
  PersistGeo g{};
  if (!persist_plan(q.B, q.H, q.L, q.ws != nullptr, force_grid, sizeof(float), dev.sms, dev.smem_optin,
                    dev.cooperative, kThreads, &g))
    return cudaSuccess;
  const int64_t blocks = static_cast<int64_t>(g.unit_blocks) * g.batch_blocks;
  if (blocks < 1 || blocks > INT32_MAX) return cudaSuccess;
  const size_t smem = static_cast<size_t>(g.smem_elems) * sizeof(float);
  void (*fn)(Params, PersistGeo) = g.grid_sync ? grid_fn : block_fn;
  // Always the device maximum, so concurrent launches of other sizes never see
  // a smaller limit set in between.
  err = clear_error(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin));
  if (err != cudaSuccess) return err;
  if (g.grid_sync) {
    int per_sm = 0;
    err = clear_error(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kThreads, smem));
    if (err != cudaSuccess) return err;
    if (static_cast<int64_t>(per_sm) * dev.sms < blocks) return cudaSuccess;
    Params p = q;
    PersistGeo pg = g;
    void* args[] = {&p, &pg};
    err = clear_error(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fn),
                                                  dim3(static_cast<unsigned>(blocks)), dim3(kThreads), args,
                                                  smem, stream));
    *launched = err == cudaSuccess;
    if (!*launched && persist::cooperative_fallback(err, stream)) return cudaSuccess;
    return err;
  }
  fn<<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(q, g);
  err = clear_error(cudaGetLastError());
  *launched = err == cudaSuccess;
  return err;
}

bool valid(int64_t B, int64_t H, int64_t L, int64_t Tn) { return B >= 1 && H >= 1 && L >= 1 && Tn >= 1; }

}  // namespace

cudaError_t deep_persist_fwd_cuda(const DeepPersistFwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;  // nothing to loop over
  if (!valid(q.B, q.H, q.L, q.Tn) || q.p_all == nullptr || q.w == nullptr || q.h0 == nullptr ||
      q.h_all == nullptr || q.s_all == nullptr || q.state[0] == nullptr || q.state[1] == nullptr ||
      q.sbuf[0] == nullptr || q.sbuf[1] == nullptr)
    return cudaErrorInvalidValue;
  return launch(persist_fwd_kernel<true>, persist_fwd_kernel<false>, q, force_grid, stream, launched);
}

cudaError_t deep_persist_bwd_cuda(const DeepPersistBwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;  // nothing to loop over
  if (!valid(q.B, q.H, q.L, q.Tn) || q.g_all == nullptr || q.w == nullptr || q.h_all == nullptr ||
      q.s_all == nullptr || q.h0 == nullptr || q.dp == nullptr || (q.L > 1 && q.e_rest == nullptr) ||
      q.hprev_all == nullptr || q.dh0 == nullptr || (q.alpha != nullptr && q.da == nullptr) ||
      q.carry[0] == nullptr || q.carry[1] == nullptr || q.ebuf[0] == nullptr || q.ebuf[1] == nullptr)
    return cudaErrorInvalidValue;
  return launch(persist_bwd_kernel<true>, persist_bwd_kernel<false>, q, force_grid, stream, launched);
}

}  // namespace deep
}  // namespace mts
