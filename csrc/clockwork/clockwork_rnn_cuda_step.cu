// The fused pointwise kernels of the CUDA clockwork time loop (clockwork_loop.h):
// one launch per step after the active modules' GEMMs, covering every unit: the
// active ones update, the inactive ones hold (forward) or pass their gradient
// through (backward). Parameters and the per-element bodies (shared with the
// host emulation the CPU tests run): clockwork_step.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "clockwork_rnn_launch.h"

namespace mts {
namespace clockwork {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) unit_modules_kernel(const ClockworkCudaModules m, int64_t H,
                                                               int32_t* mod) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < H; j += stride)
    mod[j] = module_of(m, j);
}

// Grid-stride over the B * H elements of one step, 64-bit indices.
template <typename T>
__global__ void __launch_bounds__(kThreads) step_fwd_kernel(const ClockworkStepFwd<T> q) {
  const int64_t n = q.B * q.H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    step_fwd_elem(q, i);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) step_bwd_kernel(const ClockworkStepBwd<T> q) {
  const int64_t n = q.B * q.H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    step_bwd_elem(q, i);
}

// Enough blocks to fill a large GPU several times over; the grid-stride loop
// covers the rest (B * H can exceed any grid).
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 4096));
}

template <typename T>
cudaError_t launch_fwd(const ClockworkStepFwd<T>& q, cudaStream_t stream) {
  if (!step_fwd_valid(q)) return cudaErrorInvalidValue;
  step_fwd_kernel<T><<<grid_for(q.B * q.H), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const ClockworkStepBwd<T>& q, cudaStream_t stream) {
  if (!step_bwd_valid(q)) return cudaErrorInvalidValue;
  step_bwd_kernel<T><<<grid_for(q.B * q.H), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

}  // namespace

cudaError_t clockwork_unit_modules_cuda(const ClockworkCudaModules& m, int64_t H, int32_t* mod,
                                        cudaStream_t stream) {
  if (!modules_valid(m, H) || mod == nullptr) return cudaErrorInvalidValue;
  unit_modules_kernel<<<grid_for(H), kThreads, 0, stream>>>(m, H, mod);
  return cudaGetLastError();
}
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<float>& q, cudaStream_t stream) {
  return launch_fwd(q, stream);
}
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<double>& q, cudaStream_t stream) {
  return launch_fwd(q, stream);
}
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<float>& q, cudaStream_t stream) {
  return launch_bwd(q, stream);
}
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<double>& q, cudaStream_t stream) {
  return launch_bwd(q, stream);
}

}  // namespace clockwork
}  // namespace mts
