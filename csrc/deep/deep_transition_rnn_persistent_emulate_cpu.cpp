// Test hooks, not an API: the persistent CUDA kernel of the deep-transition
// loop (deep_persistent.h) run on the host through deep_loop.h, with the
// geometry the CUDA launcher's plan chooses for a device described by the
// arguments, so the CPU test suite (tests/test_deep_transition_rnn_persistent.py)
// checks the kernel program, its ownership of rows and its barriers without a GPU.
//
//   _deep_transition_rnn_persistent_emulate_fwd / _bwd: deep_transition_rnn_fwd /
//   _bwd's schemas, CPU tensors, then the device: sms, smem_bytes (opt-in shared
//   memory per block, in bytes of the compute dtype's elements), force_grid (as
//   MTS_KERNELS_RNN_PERSISTENT=grid), reverse_order (blocks and threads run
//   last-first, see csrc/persistent_grid.h) and threads per block. A problem
//   the plan refuses raises.
//   _persistent_plan(B, H, n_mats, partials, force_grid, elem, sms, smem_bytes,
//   cooperative, threads) -> int64 (7,): persist::plan's geometry (units,
//   unit_blocks, rows, batch_blocks, grid_sync, shared-memory bytes per block)
//   and whether it fits (0/1), for every persistent program.
#include "../persistent_emulate.h"
#include "deep_loop.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)
namespace {

struct Names {
  static constexpr const char* kFwdName = "_deep_transition_rnn_persistent_emulate_fwd";
  static constexpr const char* kBwdName = "_deep_transition_rnn_persistent_emulate_bwd";
  static constexpr const char* kHook = "_deep_transition_rnn_persistent_emulate";
};
using PersistHostDev = persist::HostProgramDev<Names>;

std::tuple<Tensor, Tensor> emulate_fwd(Tensor p, Tensor w, std::optional<Tensor> h0, std::optional<Tensor> bias,
                                       std::optional<Tensor> ws, std::optional<Tensor> alpha,
                                       std::string nonlinearity, bool reverse, std::optional<Tensor> lengths,
                                       int64_t sms, int64_t smem_bytes, bool force_grid, bool reverse_order,
                                       int64_t threads) {
  const persist::FakeScope scope({sms, smem_bytes, force_grid, reverse_order, threads});
  return loop::loop_fwd<PersistHostDev>(p, w, h0, bias, ws, alpha, nonlinearity, reverse, lengths);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> emulate_bwd(
    Tensor grad_h, Tensor w, Tensor h, Tensor s, std::optional<Tensor> h0, std::optional<Tensor> ws,
    std::optional<Tensor> alpha, std::string nonlinearity, bool reverse, std::optional<Tensor> lengths, int64_t sms,
    int64_t smem_bytes, bool force_grid, bool reverse_order, int64_t threads) {
  const persist::FakeScope scope({sms, smem_bytes, force_grid, reverse_order, threads});
  return loop::loop_bwd<PersistHostDev>(grad_h, w, h, s, h0, ws, alpha, nonlinearity, reverse, lengths);
}

Tensor plan(int64_t B, int64_t H, int64_t n_mats, bool partials, bool force_grid, int64_t elem, int64_t sms,
            int64_t smem_bytes, bool cooperative, int64_t threads) {
  MTS_CHECK(elem == 4 || elem == 8, "_persistent_plan: elem must be 4 or 8, got ", elem);
  MTS_CHECK(threads >= 1 && threads <= 1024, "_persistent_plan: threads must be in [1, 1024]");
  persist::Geo g{};
  const bool fits = persist::plan(B, H, n_mats, partials, force_grid, elem, sms, smem_bytes, cooperative,
                                 static_cast<int>(threads), &g);
  Tensor out = torch::stable::empty({7}, ScalarType::Long);
  int64_t* o = mut<int64_t>(out);
  o[0] = g.units;
  o[1] = g.unit_blocks;
  o[2] = g.rows;
  o[3] = g.batch_blocks;
  o[4] = g.grid_sync ? 1 : 0;
  o[5] = g.smem_elems * elem;
  o[6] = fits ? 1 : 0;
  return out;
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, deep)

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hooks (leading underscore): see the top of this file.
  m.def("_deep_transition_rnn_persistent_emulate_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? bias_hh,"
        " Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse, Tensor? lengths, int sms,"
        " int smem_bytes, bool force_grid, bool reverse_order, int threads) -> (Tensor, Tensor)");
  m.def("_deep_transition_rnn_persistent_emulate_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor s,"
        " Tensor? h0, Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse, Tensor? lengths,"
        " int sms, int smem_bytes, bool force_grid, bool reverse_order, int threads)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("_persistent_plan(int B, int H, int n_mats, bool partials, bool force_grid, int elem,"
        " int sms, int smem_bytes, bool cooperative, int threads) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_deep_transition_rnn_persistent_emulate_fwd", TORCH_BOX(&mts::deep::emulate_fwd));
  m.impl("_deep_transition_rnn_persistent_emulate_bwd", TORCH_BOX(&mts::deep::emulate_bwd));
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CompositeExplicitAutograd, m) {
  m.impl("_persistent_plan", TORCH_BOX(&mts::deep::plan));
}
