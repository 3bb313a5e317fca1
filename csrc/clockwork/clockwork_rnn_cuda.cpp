// CUDA registration of the clockwork recurrence in one fused time loop (schemas
// in csrc/registration.cpp): the loop of clockwork_loop.h (design there) with
// cuBLAS GEMMs on the current stream and the pointwise kernels of
// clockwork_rnn_cuda_step.cu; nothing synchronises with the host.
#define MTS_GPU_LOOP_CUDA
#include "clockwork_loop.h"
#include "clockwork_rnn_launch.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace {

using gpu_loop::check_cuda;

struct CudaDev : gpu_loop::CudaGemm {
  static constexpr const char* kFwdName = "clockwork_rnn_fwd";
  static constexpr const char* kBwdName = "clockwork_rnn_bwd";
  using CudaGemm::CudaGemm;
  void unit_modules(const ClockworkCudaModules& mods, int64_t H, int32_t* mod) {
    check_cuda(clockwork_unit_modules_cuda(mods, H, mod, stream), "clockwork_rnn unit-module launch");
  }
  template <typename T>
  void step(const ClockworkStepFwd<T>& q) {
    check_cuda(clockwork_step_fwd_cuda(q, stream), "clockwork_rnn forward step launch");
  }
  template <typename T>
  void step(const ClockworkStepBwd<T>& q) {
    check_cuda(clockwork_step_bwd_cuda(q, stream), "clockwork_rnn backward step launch");
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, clockwork)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("clockwork_rnn_fwd", TORCH_BOX(&mts::clockwork::loop::loop_fwd<mts::clockwork::CudaDev>));
  m.impl("clockwork_rnn_bwd", TORCH_BOX(&mts::clockwork::loop::loop_bwd<mts::clockwork::CudaDev>));
}
