#pragma once
// Launchers of the CUDA pointwise kernels of deep_transition_rnn_tangent's loops
// (deep_transition_rnn_tangent_cuda_step.cu); parameters and math in
// deep_tangent_step.h. cudaErrorInvalidValue for inconsistent parameters, else
// the launch's error.
#include <cuda_runtime_api.h>

#include "deep_tangent_step.h"

namespace mts {
namespace deep {

cudaError_t deep_tangent_step_cuda(const TanStepFwd<float>& q, cudaStream_t stream);
cudaError_t deep_tangent_step_cuda(const TanStepFwd<double>& q, cudaStream_t stream);
cudaError_t deep_tangent_step_cuda(const TanStepBwdTop<float>& q, cudaStream_t stream);
cudaError_t deep_tangent_step_cuda(const TanStepBwdTop<double>& q, cudaStream_t stream);
cudaError_t deep_tangent_step_cuda(const TanStepBwdLower<float>& q, cudaStream_t stream);
cudaError_t deep_tangent_step_cuda(const TanStepBwdLower<double>& q, cudaStream_t stream);

}  // namespace deep
}  // namespace mts
