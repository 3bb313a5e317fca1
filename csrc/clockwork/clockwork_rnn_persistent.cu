// The persistent CUDA kernels of the clockwork time loop (the program and its
// design: clockwork_persistent.h; the host emulation the CPU tests run:
// clockwork_rnn_persistent_emulate_cpu.cpp). One launch per direction; float
// only (float16/bfloat16 arrive as float32 copies, float64 takes the cuBLAS
// loop). Nothing synchronises with the host.
#include <cuda_runtime.h>

#include "../persistent_launch.cuh"
#include "clockwork_persistent.h"
#include "clockwork_rnn_launch.h"

namespace mts {
namespace clockwork {
namespace {

bool clock_valid(const ClockworkClock& c, int64_t H) {
  if (!modules_valid(c, H)) return false;
  for (int64_t m = 0; m < c.g; ++m)
    if (c.lo[m + 1] <= c.lo[m] || c.period[m] < 1 || c.first[m] < 0) return false;
  return true;
}

}  // namespace

cudaError_t clockwork_persist_fwd_cuda(const CwPersistFwd<float>& q, bool force_grid, cudaStream_t stream,
                                       bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;  // nothing to loop over
  if (q.B < 1 || q.H < 1 || q.Tn < 1 || !clock_valid(q.clock, q.H) || q.mod == nullptr || q.w == nullptr ||
      q.h0 == nullptr || q.p_all == nullptr || q.h_all == nullptr || (q.alpha == nullptr) != (q.u_all == nullptr))
    return cudaErrorInvalidValue;
  return persist::launch_program(q, force_grid, stream, launched);
}

cudaError_t clockwork_persist_bwd_cuda(const CwPersistBwd<float>& q, bool force_grid, cudaStream_t stream,
                                       bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;
  if (q.B < 1 || q.H < 1 || q.Tn < 1 || !clock_valid(q.clock, q.H) || q.mod == nullptr || q.w == nullptr ||
      q.g_all == nullptr || q.u_all == nullptr || q.h_all == nullptr || q.h0 == nullptr || q.e_all == nullptr ||
      q.dh0 == nullptr || (q.alpha != nullptr && q.da == nullptr) || q.carry[0] == nullptr ||
      q.carry[1] == nullptr)
    return cudaErrorInvalidValue;
  return persist::launch_program(q, force_grid, stream, launched);
}

}  // namespace clockwork
}  // namespace mts
