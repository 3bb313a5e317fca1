#pragma once
// Launchers of the CUDA pointwise kernels of the deep-transition time loop
// (deep_transition_rnn_cuda_step.cu); the parameters and per-element math are in
// deep_step.h. Each step launcher returns cudaErrorInvalidValue for inconsistent parameters,
// else the launch's error.
#include <cuda_runtime_api.h>

#include "deep_persistent.h"
#include "deep_step.h"

namespace mts {
namespace deep {

cudaError_t deep_step_cuda(const DeepStepFwd<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepFwd<double>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdTop<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdTop<double>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdLower<float>& q, cudaStream_t stream);
cudaError_t deep_step_cuda(const DeepStepBwdLower<double>& q, cudaStream_t stream);

// The persistent kernels (deep_transition_rnn_persistent.cu): *launched false
// with cudaSuccess when the problem or the device does not fit them (the caller
// runs its cuBLAS loop); force_grid splits the units over grid-synchronised
// blocks even where W fits one block (testing).
cudaError_t deep_persist_fwd_cuda(const DeepPersistFwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched);
cudaError_t deep_persist_bwd_cuda(const DeepPersistBwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched);

}  // namespace deep
}  // namespace mts
