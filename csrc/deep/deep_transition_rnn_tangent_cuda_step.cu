// The pointwise kernels of deep_transition_rnn_tangent's CUDA loops
// (deep_tangent_loop.h): one launch per sub-layer and step after its GEMM.
// Parameters and the per-element bodies (the CPU registration runs the same
// ones): deep_tangent_step.h.
#include "../gpu_step.cuh"
#include "deep_transition_rnn_tangent_launch.h"

namespace mts {
namespace deep {

using gpu_step::launch;

cudaError_t deep_tangent_step_cuda(const TanStepFwd<float>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_tangent_step_cuda(const TanStepFwd<double>& q, cudaStream_t stream) { return launch(q, stream); }
cudaError_t deep_tangent_step_cuda(const TanStepBwdTop<float>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t deep_tangent_step_cuda(const TanStepBwdTop<double>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t deep_tangent_step_cuda(const TanStepBwdLower<float>& q, cudaStream_t stream) {
  return launch(q, stream);
}
cudaError_t deep_tangent_step_cuda(const TanStepBwdLower<double>& q, cudaStream_t stream) {
  return launch(q, stream);
}

}  // namespace deep
}  // namespace mts
