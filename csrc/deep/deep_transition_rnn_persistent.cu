// The persistent CUDA kernels of the deep-transition time loop (the program and
// its design: deep_persistent.h; the host emulation the CPU tests run:
// deep_transition_rnn_persistent_emulate_cpu.cpp). One launch per direction;
// float only (float16/bfloat16 arrive as float32 copies, float64 takes the
// cuBLAS loop). Nothing synchronises with the host.
#include <cuda_runtime.h>

#include "../persistent_launch.cuh"
#include "deep_persistent.h"
#include "deep_transition_rnn_launch.h"

namespace mts {
namespace deep {
namespace {

bool valid(int64_t B, int64_t H, int64_t L, int64_t Tn) { return B >= 1 && H >= 1 && L >= 1 && Tn >= 1; }

}  // namespace

cudaError_t deep_persist_fwd_cuda(const DeepPersistFwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;  // nothing to loop over
  if (!valid(q.B, q.H, q.L, q.Tn) || q.p_all == nullptr || q.w == nullptr || q.h0 == nullptr ||
      q.h_all == nullptr || q.s_all == nullptr || q.state[0] == nullptr || q.state[1] == nullptr ||
      q.sbuf[0] == nullptr || q.sbuf[1] == nullptr)
    return cudaErrorInvalidValue;
  return persist::launch_program(q, force_grid, stream, launched);
}

cudaError_t deep_persist_bwd_cuda(const DeepPersistBwd<float>& q, bool force_grid, cudaStream_t stream,
                                  bool* launched) {
  *launched = false;
  if (q.Tn == 0) return cudaSuccess;  // nothing to loop over
  if (!valid(q.B, q.H, q.L, q.Tn) || q.g_all == nullptr || q.w == nullptr || q.h_all == nullptr ||
      q.s_all == nullptr || q.h0 == nullptr || q.dp == nullptr || (q.L > 1 && q.e_rest == nullptr) ||
      q.hprev_all == nullptr || q.dh0 == nullptr || (q.alpha != nullptr && q.da == nullptr) ||
      q.carry[0] == nullptr || q.carry[1] == nullptr || q.ebuf[0] == nullptr || q.ebuf[1] == nullptr)
    return cudaErrorInvalidValue;
  return persist::launch_program(q, force_grid, stream, launched);
}

}  // namespace deep
}  // namespace mts
