// CPU registration of deep_transition_rnn_tangent and its adjoint (schemas in
// csrc/registration.cpp): the loop of deep_tangent_loop.h with CPU BLAS on the
// same strided views the CUDA registration hands cuBLAS, and the per-element
// bodies of deep_tangent_step.h in a plain loop (one call per sub-layer and
// step; its BLAS calls dominate at any size worth a second order).
#include "deep_tangent_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

struct TangentCpuDev : gpu_loop::HostGemm {
  using HostGemm::HostGemm;
  template <class Q>
  void step(const Q& q) {
    gpu_loop::host_step(q, "deep_transition_rnn_tangent");
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("deep_transition_rnn_tangent", TORCH_BOX(&mts::deep::tangent::fwd<mts::deep::TangentCpuDev>));
  m.impl("deep_transition_rnn_tangent_bwd", TORCH_BOX(&mts::deep::tangent::bwd<mts::deep::TangentCpuDev>));
}
