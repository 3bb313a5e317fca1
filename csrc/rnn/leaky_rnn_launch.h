#pragma once
// Host-side interface of the persistent CUDA kernels of the dense leaky
// recurrence (leaky_rnn_cuda_fwd.cu / leaky_rnn_cuda_bwd.cu). Deliberately free
// of torch headers, like scan_launch.h: leaky_rnn_cuda.cpp (host compiler)
// checks the tensors and fills these structs; the .cu files only see raw
// pointers.
//
// One layer and direction, processing steps k = 0..T-1 (time t = k, or T-1-k
// when reverse), delays in processing steps, h = h0 before the start:
//   z_t = p_t + h_{t-d} W^T [+ h_{t-s} W_skip^T],  u_t = phi(z_t)
//   h_t = alpha * h_{t-d} + (1 - alpha) * u_t        (alpha == nullptr: h_t = u_t)
// Backward (k = T-1 down to 0), delta = dL/dh accumulated in place:
//   e_t = (1 - alpha) * phi'(u_t) * delta_t
//   delta_{t-d} += alpha * delta_t + e_t W,   delta_{t-s} += e_t W_skip
//   (a delay reaching before the start lands in dh0)
//
// Every operand is float32 and contiguous: (T, B, H) sequences, (B, H) states,
// (H, H) row-major weights, (H) alpha. The whole loop is one kernel launch;
// nothing is synchronised with the host.
//
// Variable lengths (csrc/lengths.h): lengths (B,) int64 on the device or
// nullptr; the kernels clamp L_b to [0, T] and never copy it to the host. Row b
// runs the steps k < L_b at time t_b(k) = k, or L_b - 1 - k when reverse, and
// reads its delayed state from t_b(k - d) (h0 when k < d). At a step k >= L_b
// the row does no recurrent work and writes the zeros of its padded time k
// (h, u; backward: e and delta, so grad_h there is ignored and delta ends 0).
#include <cstdint>
#include <cuda_runtime_api.h>

namespace mts {
namespace rnn {

struct LeakyRnnCudaShape {
  int64_t T, B, H;
  int64_t skip;      // delay of the skip term in steps; 0: no skip term
  int64_t dilation;  // delay of the recurrent term in steps, >= 1
  bool reverse;
  bool relu;         // phi = relu if true, tanh otherwise
  // Testing knob: split the units over several blocks (cooperative launch,
  // grid barrier per step) even when all of W would fit one block (H > 4).
  bool force_grid_sync;
};

struct LeakyRnnFwdParams {
  LeakyRnnCudaShape s;
  const float* p;       // (T, B, H) input projection (both biases included)
  const float* w;       // (H, H) W_hh
  const float* w_skip;  // (H, H) W_skip; nullptr iff s.skip == 0
  const float* h0;      // (B, H)
  const float* alpha;   // (H); nullptr: no leak
  float* h;             // (T, B, H) output
  float* u;             // (T, B, H) output phi(z); nullptr iff alpha == nullptr
  const int64_t* lengths;  // (B,); nullptr: every row runs T steps
};

struct LeakyRnnBwdParams {
  LeakyRnnCudaShape s;
  const float* u;       // (T, B, H) phi(z) of the forward (its h when no leak)
  const float* w;       // (H, H)
  const float* w_skip;  // (H, H); nullptr iff s.skip == 0
  const float* alpha;   // (H); nullptr: no leak
  float* delta;         // (T, B, H) dL/dh of the outputs on entry, completed in place
  float* e;             // (T, B, H) output dL/dp
  float* dh0;           // (B, H) accumulated into (the caller zeroes it)
  const int64_t* lengths;  // (B,); nullptr: every row runs T steps
};

// Launch the persistent kernel on `stream` when the problem fits it (W_hh and
// W_skip must fit in the shared memory of all co-resident blocks: see
// leaky_rnn_cuda_kernels.cuh, "Limit"), and set *launched. When it does not
// fit (or the driver refuses the cooperative grid as too large), nothing is
// launched, *launched is false and cudaSuccess is returned: the caller then
// runs its own loop. Other errors of the CUDA runtime (attribute queries, the
// launch) are returned as they are; invalid parameters give
// cudaErrorInvalidValue.
cudaError_t leaky_rnn_fwd_cuda(const LeakyRnnFwdParams& p, cudaStream_t stream, bool* launched);
cudaError_t leaky_rnn_bwd_cuda(const LeakyRnnBwdParams& p, cudaStream_t stream, bool* launched);

// The pointwise half of one step of the cuBLAS loop (leaky_rnn_cuda_step.cu), one
// fused kernel per step after the step's GEMM, over n = B * H elements of one
// (B, H) row block (row b = i / H, unit i % H), in the compute dtype (float or double):
//   forward:  u = phi(z) in place of z; with alpha also h = alpha * hd + (1 - alpha) * u
//   backward: e = (1 - alpha) * phi'(u) * delta; with alpha also target += alpha * delta
// With lengths, row b runs processing step k iff k < L_b (clamped to [0, T]); a
// row that does not writes zeros instead (forward: u and h; backward: e, and
// delta, so the padded grad_h is dropped) and leaves target alone.
// Ragged mode (reverse with lengths, ring / carry != nullptr): the rows of step k
// sit at different times t_b = L_b - 1 - k (a padded row at its padded time k),
// so the (B, H) operands are scratch rows in processing order and the (T, B, H)
// tensors are addressed per row through the *_all pointers.
template <typename T>
struct LeakyRnnStepFwd {
  int64_t n, H;
  bool relu;
  const T* alpha;  // (H); nullptr: no leak (then h is unused: z itself becomes h_t)
  const T* hd;     // (B, H) h_{t-d}; read only with alpha
  T* z;            // (B, H) pre-activation in, u_t out (ragged: the product only, in)
  T* h;            // (B, H) h_t out (with alpha); unused when ragged
  const int64_t* lengths;  // (B,); nullptr: every row runs step k
  int64_t k, Tn;           // the processing step, the sequence length (with lengths)
  // Ragged: u_t = phi(z + p_all[t_b]) to u_all[t_b] (with alpha), h_t to
  // h_all[t_b] and to ring (the (B, H) slot of step k).
  const T* p_all;
  T* u_all;
  T* h_all;
  T* ring;
};

template <typename T>
struct LeakyRnnStepBwd {
  int64_t n, H;
  bool relu;
  const T* alpha;  // (H); nullptr: no leak
  T* delta;        // (B, H) dL/dh_t, complete (zeroed in padded rows); unused when ragged
  const T* u;      // (B, H) u_t; unused when ragged
  T* e;            // (B, H) dL/dp_t out
  T* target;       // (B, H) dL/dh_{t-d} (or dh0), accumulated into with alpha
  const int64_t* lengths;  // (B,); nullptr: every row runs step k
  int64_t k, Tn;
  // Ragged: delta_t = delta_all[t_b] + carry (the ring slot of step k, zeroed
  // after use) is written back to delta_all; e goes to e_all[t_b] and to e.
  T* delta_all;
  const T* u_all;
  T* e_all;
  T* carry;
};

// out[b] = sum over row b's first min(delay, L_b) processing steps k of
// x[t_b(k), b] ((T, B, H) contiguous in, (B, H) out), one thread per (b, unit).
template <typename T>
struct LeakyRnnWindowSum {
  int64_t Tn, B, H, delay;
  bool reverse;
  const int64_t* lengths;  // (B,), required
  const T* x;
  T* out;
};

// Launch on `stream`; returns the launch's error (cudaErrorInvalidValue for
// invalid parameters). No synchronisation.
cudaError_t leaky_rnn_step_fwd_cuda(const LeakyRnnStepFwd<float>& q, cudaStream_t stream);
cudaError_t leaky_rnn_step_fwd_cuda(const LeakyRnnStepFwd<double>& q, cudaStream_t stream);
cudaError_t leaky_rnn_step_bwd_cuda(const LeakyRnnStepBwd<float>& q, cudaStream_t stream);
cudaError_t leaky_rnn_step_bwd_cuda(const LeakyRnnStepBwd<double>& q, cudaStream_t stream);
cudaError_t leaky_rnn_window_sum_cuda(const LeakyRnnWindowSum<float>& q, cudaStream_t stream);
cudaError_t leaky_rnn_window_sum_cuda(const LeakyRnnWindowSum<double>& q, cudaStream_t stream);

}  // namespace rnn
}  // namespace mts
