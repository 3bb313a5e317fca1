// CUDA registration of the deep-transition recurrence (schemas in
// csrc/registration.cpp): the loop of deep_loop.h (design there) with cuBLAS
// GEMMs on the current stream and the pointwise kernels of
// deep_transition_rnn_cuda_step.cu, or the whole time loop in the persistent
// kernel of deep_transition_rnn_persistent.cu (float32 compute, where the plan
// fits the device); nothing synchronises with the host.
//
// Environment, MTS_KERNELS_RNN_PERSISTENT (as leaky_rnn's, read at every call):
//   0      the cuBLAS loop always
//   grid   testing: the persistent kernel with the units split over
//          grid-synchronised blocks whenever H > 1 (otherwise only when W_1..W_L
//          and U do not fit one block's shared memory)
//   other values, or unset: the persistent kernel where it fits.
#define MTS_GPU_LOOP_CUDA
#include <cstdlib>
#include <cstring>

#include "deep_loop.h"
#include "deep_transition_rnn_launch.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

struct CudaDev : gpu_loop::CudaGemm {
  static constexpr const char* kFwdName = "deep_transition_rnn_fwd";
  static constexpr const char* kBwdName = "deep_transition_rnn_bwd";
  using CudaGemm::CudaGemm;
  template <class Q>
  void step(const Q& q) {
    gpu_loop::check_cuda(deep_step_cuda(q, stream), "deep_transition_rnn step launch");
  }
  static const char* mode() {
    const char* v = std::getenv("MTS_KERNELS_RNN_PERSISTENT");
    return v == nullptr ? "" : v;
  }
  bool persistent(const DeepPersistFwd<float>& q) {
    if (std::strcmp(mode(), "0") == 0) return false;
    bool launched = false;
    gpu_loop::check_cuda(deep_persist_fwd_cuda(q, std::strcmp(mode(), "grid") == 0, stream, &launched),
                         "deep_transition_rnn persistent forward launch");
    return launched;
  }
  bool persistent(const DeepPersistBwd<float>& q) {
    if (std::strcmp(mode(), "0") == 0) return false;
    bool launched = false;
    gpu_loop::check_cuda(deep_persist_bwd_cuda(q, std::strcmp(mode(), "grid") == 0, stream, &launched),
                         "deep_transition_rnn persistent backward launch");
    return launched;
  }
  // float64: the cuBLAS loop
  template <class Q>
  bool persistent(const Q&) {
    return false;
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("deep_transition_rnn_fwd", TORCH_BOX(&mts::deep::loop::loop_fwd<mts::deep::CudaDev>));
  m.impl("deep_transition_rnn_bwd", TORCH_BOX(&mts::deep::loop::loop_bwd<mts::deep::CudaDev>));
}
