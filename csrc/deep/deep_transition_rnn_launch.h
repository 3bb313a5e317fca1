#pragma once
// Launchers of the CUDA pointwise kernels of the deep-transition time loop
// (deep_transition_rnn_cuda_step.cu); the parameters and per-element math are in
// deep_step.h. Each returns cudaErrorInvalidValue for inconsistent parameters,
// else the launch's error.
#include <cuda_runtime_api.h>

#include "deep_step.h"

namespace mts {
namespace deep {

cudaError_t deep_step_cuda(const DeepStepFwd<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepFwd<double>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdTop<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdTop<double>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdLower<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdLower<double>& q, cudaStream_t stream);

}  // namespace deep
}  // namespace mts
