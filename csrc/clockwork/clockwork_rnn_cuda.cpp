// CUDA registration of the clockwork recurrence in one fused time loop (schemas
// in csrc/registration.cpp): the loop of clockwork_loop.h (design there) with
// cuBLAS GEMMs on the current stream and the pointwise kernels of
// clockwork_rnn_cuda_step.cu; nothing synchronises with the host.
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>
#include <torch/csrc/stable/accelerator.h>

#include "clockwork_loop.h"
#include "clockwork_rnn_launch.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace {

void check_cuda(cudaError_t err, const char* what) {
  MTS_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ", cudaGetErrorString(err));
}

struct CudaDev {
  static constexpr auto kDevice = torch::headeronly::DeviceType::CUDA;
  static constexpr const char* kFwdName = "clockwork_rnn_fwd";
  static constexpr const char* kBwdName = "clockwork_rnn_bwd";
  torch::stable::accelerator::DeviceGuard guard;
  cudaStream_t stream;
  explicit CudaDev(const Tensor& like)
      : guard(like.get_device()), stream(static_cast<cudaStream_t>(current_cuda_stream(like.get_device()))) {}
  void mm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_mm_out(c.get(), a.get(), m.get()));
  }
  void addmm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_addmm_out(c.get(), c.get(), a.get(), m.get(), 1.0, 1.0));
  }
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
