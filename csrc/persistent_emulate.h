#pragma once
// Host runs of the persistent kernels' programs (csrc/persistent_grid.h) for the
// test hooks: the geometry persist::plan picks for a described device, then the
// program block by block and thread by thread. The device is the hook call's
// arguments (thread-local for its duration, FakeScope), so the ops' own loops
// (deep_loop.h, clockwork_loop.h) run unchanged around the program.
#include <type_traits>

#include "gpu_loop.h"
#include "persistent_grid.h"
#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, persist)

struct FakeDevice {
  int64_t sms, smem_bytes;  // multiprocessors; opt-in shared memory per block
  bool force_grid;          // as MTS_KERNELS_RNN_PERSISTENT=grid
  bool reverse_order;       // blocks and threads last-first (HostGrid)
  int64_t threads;          // per block
};

inline FakeDevice& fake_device() {
  thread_local FakeDevice d{};
  return d;
}

struct FakeScope {
  explicit FakeScope(const FakeDevice& d) { fake_device() = d; }
  ~FakeScope() { fake_device() = FakeDevice{}; }
  FakeScope(const FakeScope&) = delete;
  FakeScope& operator=(const FakeScope&) = delete;
};

// Plans q's problem (q.B, q.H, q.n_mats(), q.partials()) for the hook's device
// and runs its program, run_program(q, geo, grid) (found beside Q), on the host;
// a plan the device refuses raises. T: q's compute dtype (that of q.w). Returns
// whether it ran (a loop policy's persistent(q)): false without steps.
template <class Q>
bool emulate(const char* hook, const Q& q) {
  if (q.Tn < 1) return false;
  using T = std::remove_cv_t<std::remove_pointer_t<decltype(q.w)>>;
  const FakeDevice& d = fake_device();
  MTS_CHECK(d.threads >= 1 && d.threads <= 1024, hook, ": threads must be in [1, 1024], got ", d.threads);
  Geo g{};
  MTS_CHECK(plan(q.B, q.H, q.n_mats(), q.partials(), d.force_grid, sizeof(T), d.sms, d.smem_bytes, true,
                 static_cast<int>(d.threads), &g),
            hook, ": the plan does not fit B=", q.B, " H=", q.H, " with ", q.n_mats(), " matrices on ", d.sms,
            " SMs with ", d.smem_bytes, " bytes");
  const int blocks = g.unit_blocks * g.batch_blocks;
  MTS_CHECK(!g.grid_sync || blocks <= d.sms, hook, ": plan with ", blocks, " blocks on ", d.sms, " SMs");
  host_run<T>(blocks, static_cast<int>(d.threads), g.smem_elems, g.grid_sync, d.reverse_order,
              [&](auto& grid) { run_program(q, g, grid); });
  return true;
}

// A loop's host test policy that runs its persistent programs here: the loop's
// steps through gpu_loop::host_step (unused once a program ran) and
// persistent(q) through emulate. Names: kFwdName, kBwdName (the hooks' op names)
// and kHook (their messages' prefix).
template <class Names>
struct HostProgramDev : gpu_loop::HostGemm, Names {
  using HostGemm::HostGemm;
  template <class Q>
  void step(const Q& q) {
    gpu_loop::host_step(q, Names::kHook);
  }
  template <class Q>
  bool persistent(const Q& q) {
    return emulate(Names::kHook, q);
  }
};

HIDDEN_NAMESPACE_END(mts, persist)
