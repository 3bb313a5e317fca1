// The fused pointwise kernels of the CUDA deep-transition time loop
// (deep_loop.h): one launch per sub-layer and step after its GEMM. Parameters and
// the per-element bodies (shared with the host emulation the CPU tests run):
// deep_step.h.
#include "../gpu_step.cuh"
#include "deep_transition_rnn_launch.h"

namespace mts {
namespace deep {

using gpu_step::launch;

cudaError_t deep_step_cuda(const DeepStepFwd<float>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_step_cuda(const DeepStepFwd<double>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_step_cuda(const DeepStepBwdTop<float>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_step_cuda(const DeepStepBwdTop<double>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_step_cuda(const DeepStepBwdLower<float>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t deep_step_cuda(const DeepStepBwdLower<double>& q, cudaStream_t stream) {
  return launch(q, stream);
}

}  // namespace deep
}  // namespace mts
