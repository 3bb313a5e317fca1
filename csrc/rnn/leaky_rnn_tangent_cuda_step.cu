// The fused pointwise kernel of the CUDA leaky_rnn_tangent loop (tangent_loop.h):
// one launch per step after its product(s). Parameters and the per-element body
// (shared with the host emulation the CPU tests run): tangent_step.h.
#include "../gpu_step.cuh"
#include "leaky_rnn_tangent_launch.h"

namespace mts {
namespace rnn {

cudaError_t leaky_rnn_tangent_step_cuda(const TangentStep<float>& q, cudaStream_t stream) {
  return gpu_step::launch(q, stream);
}
cudaError_t leaky_rnn_tangent_step_cuda(const TangentStep<double>& q, cudaStream_t stream) {
  return gpu_step::launch(q, stream);
}

}  // namespace rnn
}  // namespace mts
