// CUDA registration of the deep-transition recurrence (schemas in
// csrc/registration.cpp): the loop of deep_loop.h (design there) with cuBLAS
// GEMMs on the current stream and the pointwise kernels of
// deep_transition_rnn_cuda_step.cu; nothing synchronises with the host.
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
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("deep_transition_rnn_fwd", TORCH_BOX(&mts::deep::loop::loop_fwd<mts::deep::CudaDev>));
  m.impl("deep_transition_rnn_bwd", TORCH_BOX(&mts::deep::loop::loop_bwd<mts::deep::CudaDev>));
}
