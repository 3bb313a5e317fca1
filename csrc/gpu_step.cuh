#pragma once
// The one launch shape of the GPU loops' pointwise kernels (clockwork_rnn,
// deep_transition_rnn): a grid-stride loop over the B * H elements of one step
// calling step_elem(q, i) for the parameter struct Q (found by argument-dependent
// lookup in the op's namespace, beside step_valid(q)), 64-bit indices.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace mts {
namespace gpu_step {

constexpr int kThreads = 256;

template <class Q>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const Q q) {
  const int64_t n = q.B * q.H;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    step_elem(q, i);
}

// Enough blocks to fill a large GPU several times over; the grid-stride loop
// covers the rest (B * H can exceed any grid).
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 4096));
}

// cudaErrorInvalidValue when step_valid(q) fails, else the launch's error.
template <class Q>
cudaError_t launch(const Q& q, cudaStream_t stream) {
  if (!step_valid(q)) return cudaErrorInvalidValue;
  elementwise_kernel<Q><<<grid_for(q.B * q.H), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

}  // namespace gpu_step
}  // namespace mts
