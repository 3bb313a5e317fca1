#pragma once
// Launchers of the CUDA pointwise kernels of the clockwork time loop
// (clockwork_rnn_cuda_step.cu); the parameters and per-element math are in
// clockwork_step.h. Each step launcher returns cudaErrorInvalidValue for inconsistent
// parameters, else the launch's error.
#include <cstdint>
#include <cuda_runtime_api.h>

#include "clockwork_persistent.h"
#include "clockwork_step.h"

namespace mts {
namespace clockwork {

// mod[j] for j < H from the module boundaries (once per call, on the device, so
// the loop needs no host-to-device copy and stays graph-capturable).
cudaError_t clockwork_unit_modules_cuda(const ClockworkCudaModules& m, int64_t H, int32_t* mod,
                                        cudaStream_t stream);
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<float>& q, cudaStream_t stream);
cudaError_t clockwork_step_fwd_cuda(const ClockworkStepFwd<double>& q, cudaStream_t stream);
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<float>& q, cudaStream_t stream);
cudaError_t clockwork_step_bwd_cuda(const ClockworkStepBwd<double>& q, cudaStream_t stream);

// The persistent kernels (clockwork_rnn_persistent.cu): *launched false with
// cudaSuccess when the problem or the device does not fit them (the caller runs
// its cuBLAS loop); force_grid splits the units over grid-synchronised blocks
// even where W fits one block (testing).
cudaError_t clockwork_persist_fwd_cuda(const CwPersistFwd<float>& q, bool force_grid, cudaStream_t stream,
                                       bool* launched);
cudaError_t clockwork_persist_bwd_cuda(const CwPersistBwd<float>& q, bool force_grid, cudaStream_t stream,
                                       bool* launched);

}  // namespace clockwork
}  // namespace mts
