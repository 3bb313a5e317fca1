// Test hook, not an API: the CUDA clockwork loop (clockwork_loop.h) run on the
// host. The same loop code (schedule, strided GEMM views, carry ping-pong,
// weight-gradient GEMMs, dalpha) with CPU GEMMs on the same views and the same
// per-element bodies (clockwork_step.h) in a plain loop instead of the CUDA
// kernels, so the CPU test suite (tests/test_clockwork_fused.py) checks
// everything of the CUDA op but the launches and cuBLAS itself.
//
//   _clockwork_rnn_gpu_loop_emulate_fwd / _bwd: clockwork_rnn_fwd / _bwd's
//   schemas, CPU tensors.
#include "clockwork_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace {

struct HostDev : gpu_loop::HostGemm {
  static constexpr const char* kFwdName = "_clockwork_rnn_gpu_loop_emulate_fwd";
  static constexpr const char* kBwdName = "_clockwork_rnn_gpu_loop_emulate_bwd";
  using HostGemm::HostGemm;
  void unit_modules(const ClockworkCudaModules& mods, int64_t H, int32_t* mod) {
    loop::host_unit_modules(mods, H, mod, kFwdName);
  }
  template <class Q>
  void step(const Q& q) {
    gpu_loop::host_step(q, "_clockwork_rnn_gpu_loop_emulate");
  }
  template <class Q>
  bool persistent(const Q&) {
    return false;  // the cuBLAS loop's schedule (the persistent one: ..._persistent_emulate_cpu.cpp)
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, clockwork)

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hooks (leading underscore): see the top of this file.
  m.def("_clockwork_rnn_gpu_loop_emulate_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? alpha,"
        " int[] module_sizes, int[] periods, int[] first_steps, str nonlinearity,"
        " Tensor? lengths=None) -> (Tensor, Tensor)");
  m.def("_clockwork_rnn_gpu_loop_emulate_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor u,"
        " Tensor? h0, Tensor? alpha, int[] module_sizes, int[] periods, int[] first_steps,"
        " str nonlinearity, Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_clockwork_rnn_gpu_loop_emulate_fwd",
         TORCH_BOX(&mts::clockwork::loop::loop_fwd<mts::clockwork::HostDev>));
  m.impl("_clockwork_rnn_gpu_loop_emulate_bwd",
         TORCH_BOX(&mts::clockwork::loop::loop_bwd<mts::clockwork::HostDev>));
}
