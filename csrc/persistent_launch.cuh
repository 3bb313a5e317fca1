#pragma once
// Host-side helpers of the persistent kernels' launches (the leaky recurrence's
// csrc/rnn/leaky_rnn_cuda_kernels.cuh, the deep transition's
// csrc/deep/deep_transition_rnn_persistent.cu): the device properties a plan
// needs, the errors a cooperative launch may meet without a bug, and the launch
// of a phase program's kernels (csrc/persistent_grid.h).
#include <cuda_runtime.h>

#include <cstdint>

#include "persistent_grid.h"

namespace mts {
namespace persist {

struct DeviceInfo {
  int sms;
  int smem_optin;  // bytes of dynamic shared memory a block may opt in to
  bool cooperative;
};

// Every runtime error this file handles or returns is also taken out of the
// runtime's last-error slot: left there, the launch check of the next,
// unrelated kernel (cudaGetLastError) would report it as that kernel's own.
inline cudaError_t clear_error(cudaError_t err) {
  if (err != cudaSuccess) (void)cudaGetLastError();
  return err;
}

inline cudaError_t device_info(DeviceInfo* d) {
  int dev = 0, coop = 0;
  cudaError_t err = cudaGetDevice(&dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, dev);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&d->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev);
  d->cooperative = coop != 0;
  return clear_error(err);
}

// A cooperative launch that failed for want of what the device or the stream
// offers, not through a bug: the caller runs its cuBLAS loop instead. Too
// large: fewer blocks resident than the attributes promised (an MPS client
// limited to fewer SMs, another context's work); not supported: a device or
// driver mode without cooperative launches. A stream-capture error falls back
// only while the capture is still active: once it is invalidated, everything
// later in it fails too, and the error is the caller's to see.
inline bool cooperative_fallback(cudaError_t err, cudaStream_t stream) {
  if (err == cudaErrorCooperativeLaunchTooLarge || err == cudaErrorNotSupported) return true;
  if (err != cudaErrorStreamCaptureUnsupported && err != cudaErrorStreamCaptureImplicit &&
      err != cudaErrorStreamCaptureInvalidated)
    return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (clear_error(cudaStreamIsCapturing(stream, &status)) != cudaSuccess) return false;
  return status != cudaStreamCaptureStatusInvalidated;
}

constexpr int kProgramThreads = 256;

// The kernel of a phase program: every thread runs run_program(q, g, grid)
// (found beside Params, a float parameter struct with B, H, n_mats() and
// partials()). At least one block per multiprocessor is all the plan assumes;
// stating it lets ptxas take the registers a program needs (clockwork's
// backward spilled at the 48 it chose without).
template <class Params, bool kGrid>
__global__ void __launch_bounds__(kProgramThreads, 1) program_kernel(const Params q, const Geo g) {
  extern __shared__ float program_smem[];
  DeviceGrid<float, kGrid> grid{program_smem};
  run_program(q, g, grid);
}

// The launch of a program's kernel: plans the geometry, checks the occupancy a
// grid-synchronised launch needs, and launches (cooperatively when the blocks
// wait on each other). *launched false with cudaSuccess: the problem or the
// device does not fit, the caller's loop runs.
template <class Params>
cudaError_t launch_program(const Params& q, bool force_grid, cudaStream_t stream, bool* launched) {
  *launched = false;
  DeviceInfo dev{};
  cudaError_t err = device_info(&dev);
  if (err != cudaSuccess) return err;
  Geo g{};
  if (!plan(q.B, q.H, q.n_mats(), q.partials(), force_grid, sizeof(float), dev.sms, dev.smem_optin,
            dev.cooperative, kProgramThreads, &g))
    return cudaSuccess;
  const int64_t blocks = static_cast<int64_t>(g.unit_blocks) * g.batch_blocks;
  if (blocks < 1 || blocks > INT32_MAX) return cudaSuccess;
  const size_t smem = static_cast<size_t>(g.smem_elems) * sizeof(float);
  void (*fn)(Params, Geo) = g.grid_sync ? program_kernel<Params, true> : program_kernel<Params, false>;
  // Always the device maximum, so concurrent launches of other sizes never see
  // a smaller limit set in between.
  err = clear_error(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin));
  if (err != cudaSuccess) return err;
  if (g.grid_sync) {
    int per_sm = 0;
    err = clear_error(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kProgramThreads, smem));
    if (err != cudaSuccess) return err;
    if (static_cast<int64_t>(per_sm) * dev.sms < blocks) return cudaSuccess;
    Params p = q;
    Geo pg = g;
    void* args[] = {&p, &pg};
    err = clear_error(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(fn),
                                                  dim3(static_cast<unsigned>(blocks)), dim3(kProgramThreads),
                                                  args, smem, stream));
    *launched = err == cudaSuccess;
    if (!*launched && cooperative_fallback(err, stream)) return cudaSuccess;
    return err;
  }
  fn<<<static_cast<unsigned>(blocks), kProgramThreads, smem, stream>>>(q, g);
  err = clear_error(cudaGetLastError());
  *launched = err == cudaSuccess;
  return err;
}

}  // namespace persist
}  // namespace mts
