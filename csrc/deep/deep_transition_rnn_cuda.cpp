// CUDA registration of the deep-transition recurrence (schemas in
// csrc/registration.cpp): the loop of deep_loop.h (design there) with cuBLAS
// GEMMs on the current stream and the pointwise kernels of
// deep_transition_rnn_cuda_step.cu, or the whole time loop in the persistent
// kernel of deep_transition_rnn_persistent.cu (float32 compute, where the plan
// fits the device); nothing synchronises with the host.
//
// MTS_KERNELS_RNN_PERSISTENT: 0 the cuBLAS loop, grid the persistent kernel's
// grid plan (gpu_loop::try_persistent).
#define MTS_GPU_LOOP_CUDA
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
  bool persistent(const DeepPersistFwd<float>& q) {
    return gpu_loop::try_persistent([&](bool grid, bool* ran) { return deep_persist_fwd_cuda(q, grid, stream, ran); },
                                    "deep_transition_rnn persistent forward launch");
  }
  bool persistent(const DeepPersistBwd<float>& q) {
    return gpu_loop::try_persistent([&](bool grid, bool* ran) { return deep_persist_bwd_cuda(q, grid, stream, ran); },
                                    "deep_transition_rnn persistent backward launch");
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
