#pragma once
// Host-side helpers of the persistent kernels' launches (the leaky recurrence's
// csrc/rnn/leaky_rnn_cuda_kernels.cuh, the deep transition's
// csrc/deep/deep_transition_rnn_persistent.cu): the device properties a plan
// needs, and the errors a cooperative launch may meet without a bug.
#include <cuda_runtime.h>

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

}  // namespace persist
}  // namespace mts
