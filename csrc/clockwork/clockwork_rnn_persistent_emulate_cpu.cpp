// Test hooks, not an API: the persistent CUDA kernel of the clockwork loop
// (clockwork_persistent.h) run on the host through clockwork_loop.h, in the
// geometry the CUDA launcher's plan picks for a device the arguments describe
// (csrc/persistent_emulate.h), so the CPU test suite
// (tests/test_clockwork_rnn_persistent.py) checks the kernel program, its
// ownership of rows, its on-device clock and its barriers without a GPU.
//
//   _clockwork_rnn_persistent_emulate_fwd / _bwd: clockwork_rnn_fwd / _bwd's
//   schemas, CPU tensors, then sms, smem_bytes, force_grid, reverse_order and
//   threads (persist::FakeDevice). A problem the plan refuses raises.
#include "../persistent_emulate.h"
#include "clockwork_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)
namespace {

struct Names {
  static constexpr const char* kFwdName = "_clockwork_rnn_persistent_emulate_fwd";
  static constexpr const char* kBwdName = "_clockwork_rnn_persistent_emulate_bwd";
  static constexpr const char* kHook = "_clockwork_rnn_persistent_emulate";
};

struct PersistHostDev : persist::HostProgramDev<Names> {
  using HostProgramDev::HostProgramDev;
  void unit_modules(const ClockworkCudaModules& mods, int64_t H, int32_t* mod) {
    loop::host_unit_modules(mods, H, mod, kHook);
  }
};

std::tuple<Tensor, Tensor> emulate_fwd(Tensor p, Tensor w, std::optional<Tensor> h0, std::optional<Tensor> alpha,
                                       std::vector<int64_t> module_sizes, std::vector<int64_t> periods,
                                       std::vector<int64_t> first_steps, std::string nonlinearity,
                                       std::optional<Tensor> lengths, int64_t sms, int64_t smem_bytes,
                                       bool force_grid, bool reverse_order, int64_t threads) {
  const persist::FakeScope scope({sms, smem_bytes, force_grid, reverse_order, threads});
  return loop::loop_fwd<PersistHostDev>(p, w, h0, alpha, module_sizes, periods, first_steps, nonlinearity,
                                        lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> emulate_bwd(
    Tensor grad_h, Tensor w, Tensor h, Tensor u, std::optional<Tensor> h0, std::optional<Tensor> alpha,
    std::vector<int64_t> module_sizes, std::vector<int64_t> periods, std::vector<int64_t> first_steps,
    std::string nonlinearity, std::optional<Tensor> lengths, int64_t sms, int64_t smem_bytes, bool force_grid,
    bool reverse_order, int64_t threads) {
  const persist::FakeScope scope({sms, smem_bytes, force_grid, reverse_order, threads});
  return loop::loop_bwd<PersistHostDev>(grad_h, w, h, u, h0, alpha, module_sizes, periods, first_steps,
                                        nonlinearity, lengths);
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, clockwork)

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hooks (leading underscore): see the top of this file.
  m.def("_clockwork_rnn_persistent_emulate_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? alpha,"
        " int[] module_sizes, int[] periods, int[] first_steps, str nonlinearity, Tensor? lengths, int sms,"
        " int smem_bytes, bool force_grid, bool reverse_order, int threads) -> (Tensor, Tensor)");
  m.def("_clockwork_rnn_persistent_emulate_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor u,"
        " Tensor? h0, Tensor? alpha, int[] module_sizes, int[] periods, int[] first_steps,"
        " str nonlinearity, Tensor? lengths, int sms, int smem_bytes, bool force_grid, bool reverse_order,"
        " int threads) -> (Tensor, Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_clockwork_rnn_persistent_emulate_fwd", TORCH_BOX(&mts::clockwork::emulate_fwd));
  m.impl("_clockwork_rnn_persistent_emulate_bwd", TORCH_BOX(&mts::clockwork::emulate_bwd));
}
