#pragma once
// Launcher of the CUDA pointwise kernel of the leaky_rnn_tangent loop
// (leaky_rnn_tangent_cuda_step.cu); parameters and math in tangent_step.h.
// cudaErrorInvalidValue for inconsistent parameters, else the launch's error.
#include <cuda_runtime_api.h>

#include "tangent_step.h"

namespace mts {
namespace rnn {

cudaError_t leaky_rnn_tangent_step_cuda(const TangentStep<float>& q, cudaStream_t stream);
cudaError_t leaky_rnn_tangent_step_cuda(const TangentStep<double>& q, cudaStream_t stream);

}  // namespace rnn
}  // namespace mts
