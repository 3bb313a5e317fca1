// CUDA registration of leaky_rnn_tangent (schema in csrc/registration.cpp): the
// loop of tangent_loop.h (design there) with cuBLAS GEMMs on the current stream
// and the pointwise kernel of leaky_rnn_tangent_cuda_step.cu; nothing
// synchronises with the host.
#define MTS_GPU_LOOP_CUDA
#include "leaky_rnn_tangent_launch.h"
#include "tangent_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)
namespace {

struct TangentCudaDev : gpu_loop::CudaGemm {
  static constexpr const char* kName = "leaky_rnn_tangent";
  using CudaGemm::CudaGemm;
  template <typename T>
  void step(const TangentStep<T>& q) {
    gpu_loop::check_cuda(leaky_rnn_tangent_step_cuda(q, stream), "leaky_rnn_tangent step launch");
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, rnn)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("leaky_rnn_tangent", TORCH_BOX(&mts::rnn::tangent_loop::loop<mts::rnn::TangentCudaDev>));
}
