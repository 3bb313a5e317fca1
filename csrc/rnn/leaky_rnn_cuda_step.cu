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

// Row b's length clamped to [0, T] (device values, never checked on the host).
__device__ __forceinline__ int64_t row_len(const int64_t* lengths, int64_t b, int64_t T) {
  const int64_t L = lengths[b];
  return L < 0 ? 0 : (L > T ? T : L);
}

// Whether row b = i / H runs step k.
template <class Q>
__device__ __forceinline__ bool row_runs(const Q& q, int64_t i) {
  return q.lengths == nullptr || q.k < row_len(q.lengths, i / q.H, q.Tn);
}

// Offset in a (T, B, H) tensor of element i of row b = i / H at step k in
// ragged mode: time L_b - 1 - k while the row runs, else its padded time k.
template <class Q>
__device__ __forceinline__ int64_t ragged_offset(const Q& q, int64_t i, bool* runs) {
  const int64_t L = row_len(q.lengths, i / q.H, q.Tn);
  *runs = q.k < L;
  return (*runs ? L - 1 - q.k : q.k) * q.n + i;
}

// Grid-stride over the n elements of one (B, H) step, 64-bit indices.
template <typename T>
__global__ void __launch_bounds__(kThreads) step_fwd_kernel(const LeakyRnnStepFwd<T> q) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < q.n; i += stride) {
    if (q.ring != nullptr) {  // ragged
      bool runs = false;
      const int64_t o = ragged_offset(q, i, &runs);
      T hv = T(0);
      if (runs) {
        const T z = q.z[i] + q.p_all[o];
        const T u = q.relu ? relu_of(z) : tanh_dev(z);
        hv = u;
        if (q.alpha != nullptr) {
          hv = leak_mix(q.alpha[i % q.H], q.hd[i], u);
          q.u_all[o] = u;
        }
      } else if (q.alpha != nullptr) {
        q.u_all[o] = T(0);
      }
      q.h_all[o] = hv;
      q.ring[i] = hv;
      continue;
    }
    if (!row_runs(q, i)) {  // a padded row at time k
      q.z[i] = T(0);
      if (q.alpha != nullptr) q.h[i] = T(0);
      continue;
    }
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
    if (q.carry != nullptr) {  // ragged
      bool runs = false;
      const int64_t o = ragged_offset(q, i, &runs);
      T e = T(0);
      if (runs) {
        const T d = q.delta_all[o] + q.carry[i];
        q.delta_all[o] = d;
        e = dphi_times(d, q.u_all[o], q.relu);
        if (q.alpha != nullptr) {
          const T a = q.alpha[i % q.H];
          e *= 1 - a;
          q.target[i] += a * d;
        }
      } else {
        q.delta_all[o] = T(0);
      }
      q.carry[i] = T(0);  // the slot is step k - R's next
      q.e_all[o] = e;
      q.e[i] = e;
      continue;
    }
    if (!row_runs(q, i)) {  // a padded row at time k: grad_h ignored
      q.delta[i] = T(0);
      q.e[i] = T(0);
      continue;
    }
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

template <typename T>
__global__ void __launch_bounds__(kThreads) window_sum_kernel(const LeakyRnnWindowSum<T> q) {
  const int64_t n = q.B * q.H, BH = n;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const int64_t L = row_len(q.lengths, i / q.H, q.Tn);
    const int64_t m = q.delay < L ? q.delay : L;
    T acc = T(0);
    for (int64_t k = 0; k < m; ++k) acc += q.x[(q.reverse ? L - 1 - k : k) * BH + i];
    q.out[i] = acc;
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
  const bool ragged = q.ring != nullptr;
  if (q.n <= 0 || q.H <= 0 || q.z == nullptr || (q.alpha != nullptr && q.hd == nullptr) ||
      (!ragged && q.alpha != nullptr && q.h == nullptr) || (q.lengths != nullptr && q.Tn < 1) ||
      (ragged && (q.lengths == nullptr || q.p_all == nullptr || q.h_all == nullptr ||
                  (q.alpha != nullptr && q.u_all == nullptr))))
    return cudaErrorInvalidValue;
  step_fwd_kernel<T><<<grid_for(q.n), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const LeakyRnnStepBwd<T>& q, cudaStream_t stream) {
  const bool ragged = q.carry != nullptr;
  if (q.n <= 0 || q.H <= 0 || q.e == nullptr || (q.alpha != nullptr && q.target == nullptr) ||
      (!ragged && (q.delta == nullptr || q.u == nullptr)) || (q.lengths != nullptr && q.Tn < 1) ||
      (ragged && (q.lengths == nullptr || q.delta_all == nullptr || q.u_all == nullptr ||
                  q.e_all == nullptr)))
    return cudaErrorInvalidValue;
  step_bwd_kernel<T><<<grid_for(q.n), kThreads, 0, stream>>>(q);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_window_sum(const LeakyRnnWindowSum<T>& q, cudaStream_t stream) {
  if (q.B <= 0 || q.H <= 0) return cudaSuccess;
  if (q.Tn < 1 || q.delay < 0 || q.lengths == nullptr || q.x == nullptr || q.out == nullptr)
    return cudaErrorInvalidValue;
  window_sum_kernel<T><<<grid_for(q.B * q.H), kThreads, 0, stream>>>(q);
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
cudaError_t leaky_rnn_window_sum_cuda(const LeakyRnnWindowSum<float>& q, cudaStream_t stream) {
  return launch_window_sum(q, stream);
}
cudaError_t leaky_rnn_window_sum_cuda(const LeakyRnnWindowSum<double>& q, cudaStream_t stream) {
  return launch_window_sum(q, stream);
}

}  // namespace rnn
}  // namespace mts
