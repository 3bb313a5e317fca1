// The fused pointwise kernels of the cuBLAS time loop (leaky_rnn_cuda.cpp): one
// launch per step after the step's GEMM(s), instead of 2-4 ATen pointwise ops.
// Interface and math: leaky_rnn_launch.h, leaky_rnn_math.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "leaky_rnn_launch.h"
#include "leaky_rnn_math.h"

namespace mts {
namespace rnn {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float tanh_dev(float z) { return tanhf(z); }
__device__ __forceinline__ double tanh_dev(double z) { return tanh(z); }

// Grid-stride over the n elements of one (B, H) step, 64-bit indices.
template <typename T>
__global__ void __launch_bounds__(kThreads) step_fwd_kernel(const LeakyRnnStepFwd<T> q) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < q.n; i += stride) {
    const T z = q.z[i];
    const T u = q.relu ? relu_of(z) : tanh_dev(z);
    q.z[i] = u;
    if (q.alpha != nullptr) q.h[i] = leak_mix(q.alpha[i % q.H], q.hd[i], u);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) step_bwd_kernel(const LeakyRnnStepBwd<T> q) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < q.n; i += stride) {
    const T d = q.delta[i];
    T e = dphi_times(d, q.u[i], q.relu);
    if (q.alpha != nullptr) {
      const T a = q.alpha[i % q.H];
      e *= 1 - a;
      q.target[i] += a * d;
    }
    q.e[i] = e;
  }
}

// Enough blocks to fill a large GPU several times over; the grid-stride loop
// covers the rest (n = B * H can exceed any grid).
unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 4096));
}

template <typename T>
cudaError_t launch_fwd(const LeakyRnnStepFwd<T>& q, cudaStream_t stream) {
  if (q.n <= 0 || q.H <= 0 || q.z == nullptr ||
      (q.alpha != nullptr && (q.hd == nullptr || q.h == nullptr)))
    return cudaErrorInvalidValue;
  step_fwd_kernel<T><<<grid_for(q.n), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const LeakyRnnStepBwd<T>& q, cudaStream_t stream) {
  if (q.n <= 0 || q.H <= 0 || q.delta == nullptr || q.u == nullptr || q.e == nullptr ||
      (q.alpha != nullptr && q.target == nullptr))
    return cudaErrorInvalidValue;
  step_bwd_kernel<T><<<grid_for(q.n), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

}  // namespace

cudaError_t leaky_rnn_step_fwd_cuda(const LeakyRnnStepFwd<float>& q, cudaStream_t stream) {
  return launch_fwd(q, stream);
}
cudaError_t leaky_rnn_step_fwd_cuda(const LeakyRnnStepFwd<double>& q, cudaStream_t stream) {
  return launch_fwd(q, stream);
}
cudaError_t leaky_rnn_step_bwd_cuda(const LeakyRnnStepBwd<float>& q, cudaStream_t stream) {
  return launch_bwd(q, stream);
}
cudaError_t leaky_rnn_step_bwd_cuda(const LeakyRnnStepBwd<double>& q, cudaStream_t stream) {
  return launch_bwd(q, stream);
}

}  // namespace rnn
}  // namespace mts
