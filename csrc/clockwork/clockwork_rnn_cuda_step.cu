// The fused pointwise kernels of the CUDA clockwork time loop (clockwork_loop.h):
// one launch per step after the active modules' GEMMs, covering every unit: the
// active ones update, the inactive ones hold (forward) or pass their gradient
// through (backward). Parameters and the per-element bodies (shared with the
// host emulation the CPU tests run): clockwork_step.h.
#include "../gpu_step.cuh"
#include "clockwork_rnn_launch.h"

namespace mts {
namespace clockwork {
namespace {

using gpu_step::grid_for;
using gpu_step::kThreads;
using gpu_step::launch;

__global__ void __launch_bounds__(kThreads) unit_modules_kernel(const ClockworkCudaModules m, int64_t H,
                                                               int32_t* mod) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; j < H; j += stride)
    mod[j] = module_of(m, j);
}

}  // namespace

cudaError_t clockwork_unit_modules_cuda(const ClockworkCudaModules& m, int64_t H, int32_t* mod,
                                        cudaStream_t stream) {
  if (!modules_valid(m, H) || mod == nullptr) return cudaErrorInvalidValue;
  unit_modules_kernel<<<grid_for(H), kThreads, 0, stream>>>(m, H, mod);
  return cudaGetLastError();
}
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<float>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<double>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<float>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<double>& q, cudaStream_t stream) {
  return launch(q, stream);
}

}  // namespace clockwork
}  // namespace mts
