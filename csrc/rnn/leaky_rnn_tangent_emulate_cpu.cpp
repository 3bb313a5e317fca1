// Test hook, not an API: the CUDA leaky_rnn_tangent loop (tangent_loop.h) run on
// the host, with CPU GEMMs on the same views and the kernel's per-element body
// (tangent_step.h) in a plain loop, so the CPU test suite
// (tests/test_leaky_rnn_tangent.py) checks everything of the CUDA op but the
// launches and cuBLAS itself.
//
//   _leaky_rnn_tangent_gpu_loop_emulate: leaky_rnn_tangent's schema, CPU tensors.
#include "tangent_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)
namespace {

struct TangentHostDev : gpu_loop::HostGemm {
  static constexpr const char* kName = "_leaky_rnn_tangent_gpu_loop_emulate";
  using HostGemm::HostGemm;
  template <typename T>
  void step(const TangentStep<T>& q) {
    gpu_loop::host_step(q, kName);
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, rnn)

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hook (leading underscore): see the top of this file.
  m.def("_leaky_rnn_tangent_gpu_loop_emulate(Tensor drive, Tensor gain, Tensor weight_hh, Tensor? keep,"
        " Tensor? weight_skip, Tensor? start, int skip, int dilation, bool gain_inside,"
        " bool reverse, Tensor? lengths=None) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_leaky_rnn_tangent_gpu_loop_emulate",
         TORCH_BOX(&mts::rnn::tangent_loop::loop<mts::rnn::TangentHostDev>));
}
