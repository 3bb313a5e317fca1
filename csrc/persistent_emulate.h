#pragma once
// Host runs of the persistent kernels' programs (csrc/persistent_grid.h) for the
// test hooks: the geometry persist::plan picks for a described device, then the
// program block by block and thread by thread. The device is the hook call's
// arguments (thread-local for its duration, FakeScope), so the ops' own loops
// (deep_loop.h, clockwork_loop.h) run unchanged around the program.
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

// Plans (B, H, n_mats, partials) for the hook's device and runs
// program(geo, grid) on the host; a plan the device refuses raises.
template <typename T, class Program>
void emulate(const char* hook, int64_t B, int64_t H, int64_t n_mats, bool partials, Program&& program) {
  const FakeDevice& d = fake_device();
  MTS_CHECK(d.threads >= 1 && d.threads <= 1024, hook, ": threads must be in [1, 1024], got ", d.threads);
  Geo g{};
  MTS_CHECK(plan(B, H, n_mats, partials, d.force_grid, sizeof(T), d.sms, d.smem_bytes, true,
                 static_cast<int>(d.threads), &g),
            hook, ": the plan does not fit B=", B, " H=", H, " with ", n_mats, " matrices on ", d.sms,
            " SMs with ", d.smem_bytes, " bytes");
  const int blocks = g.unit_blocks * g.batch_blocks;
  MTS_CHECK(!g.grid_sync || blocks <= d.sms, hook, ": plan with ", blocks, " blocks on ", d.sms, " SMs");
  host_run<T>(blocks, static_cast<int>(d.threads), g.smem_elems, g.grid_sync, d.reverse_order,
              [&](auto& grid) { program(g, grid); });
}

HIDDEN_NAMESPACE_END(mts, persist)
