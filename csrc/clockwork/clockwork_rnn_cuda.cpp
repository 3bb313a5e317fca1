// CUDA registration of the clockwork recurrence in one fused time loop (schemas
// in csrc/registration.cpp): the loop of clockwork_loop.h (design there) with
// cuBLAS GEMMs on the current stream and the pointwise kernels of
// clockwork_rnn_cuda_step.cu, or the whole time loop in the persistent kernel
// of clockwork_rnn_persistent.cu (float32 compute, where its plan fits the
// device); nothing synchronises with the host.
//
// MTS_KERNELS_RNN_PERSISTENT: 0 the cuBLAS loop, grid the persistent kernel's
// grid plan (gpu_loop::try_persistent).
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
  bool persistent(const CwPersistFwd<float>& q) {
    return gpu_loop::try_persistent(
        [&](bool grid, bool* ran) { return clockwork_persist_fwd_cuda(q, grid, stream, ran); },
        "clockwork_rnn persistent forward launch");
  }
  bool persistent(const CwPersistBwd<float>& q) {
    return gpu_loop::try_persistent(
        [&](bool grid, bool* ran) { return clockwork_persist_bwd_cuda(q, grid, stream, ran); },
        "clockwork_rnn persistent backward launch");
  }
  // float64: the cuBLAS loop
  template <class Q>
  bool persistent(const Q&) {
    return false;
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, clockwork)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("clockwork_rnn_fwd", TORCH_BOX(&mts::clockwork::loop::loop_fwd<mts::clockwork::CudaDev>));
  m.impl("clockwork_rnn_bwd", TORCH_BOX(&mts::clockwork::loop::loop_bwd<mts::clockwork::CudaDev>));
}
