// CUDA registration of deep_transition_rnn_tangent and its adjoint (schemas in
// csrc/registration.cpp): the loop of deep_tangent_loop.h with cuBLAS on the
// current stream and the kernels of deep_transition_rnn_tangent_cuda_step.cu;
// nothing synchronises with the host.
#define MTS_GPU_LOOP_CUDA
#include "deep_tangent_loop.h"
#include "deep_transition_rnn_tangent_launch.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

struct TangentCudaDev : gpu_loop::CudaGemm {
  using CudaGemm::CudaGemm;
  template <class Q>
  void step(const Q& q) {
    gpu_loop::check_cuda(deep_tangent_step_cuda(q, stream), "deep_transition_rnn_tangent step launch");
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("deep_transition_rnn_tangent", TORCH_BOX(&mts::deep::tangent::fwd<mts::deep::TangentCudaDev>));
  m.impl("deep_transition_rnn_tangent_bwd", TORCH_BOX(&mts::deep::tangent::bwd<mts::deep::TangentCudaDev>));
}
