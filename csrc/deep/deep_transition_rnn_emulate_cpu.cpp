// Test hook, not an API: the CUDA deep-transition loop (deep_loop.h) run on the
// host, with CPU GEMMs on the same strided views and the kernels' per-element
// bodies (deep_step.h) in a plain loop, so the CPU test suite
// (tests/test_deep_transition_rnn.py) checks everything of the CUDA op but the
// launches and cuBLAS itself.
//
//   _deep_transition_rnn_gpu_loop_emulate_fwd / _bwd: deep_transition_rnn_fwd /
//   _bwd's schemas, CPU tensors.
#include "deep_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

struct HostDev : gpu_loop::HostGemm {
  static constexpr const char* kFwdName = "_deep_transition_rnn_gpu_loop_emulate_fwd";
  static constexpr const char* kBwdName = "_deep_transition_rnn_gpu_loop_emulate_bwd";
  using HostGemm::HostGemm;
  template <class Q>
  void step(const Q& q) {
    gpu_loop::host_step(q, "_deep_transition_rnn_gpu_loop_emulate");
  }
  template <class Q>
  bool persistent(const Q&) {
    return false;  // the cuBLAS loop's schedule (the persistent one: ..._persistent_emulate_cpu.cpp)
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hooks (leading underscore): see the top of this file.
  m.def("_deep_transition_rnn_gpu_loop_emulate_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? bias_hh,"
        " Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse,"
        " Tensor? lengths=None) -> (Tensor, Tensor)");
  m.def("_deep_transition_rnn_gpu_loop_emulate_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor s,"
        " Tensor? h0, Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse,"
        " Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_deep_transition_rnn_gpu_loop_emulate_fwd",
         TORCH_BOX(&mts::deep::loop::loop_fwd<mts::deep::HostDev>));
  m.impl("_deep_transition_rnn_gpu_loop_emulate_bwd",
         TORCH_BOX(&mts::deep::loop::loop_bwd<mts::deep::HostDev>));
}
