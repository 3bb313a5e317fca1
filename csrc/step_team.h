#pragma once
// A time loop on the threads of one parallel region: item(k, j) for every step
// k in [0, steps) and item j in [0, m) (the step's column blocks), each item of
// step k after every item of step k - 1, with no fork and join per step.
//
// Items are claimed in order from one ticket counter (ticket t: step t / m, item
// t % m) and a claimed item waits until all items of the previous step have
// finished. Whoever runs, however many threads torch's parallel_for gives (one,
// when nested in another parallel region), every item is done exactly once, and
// no item waits on one claimed after it, so the loop cannot deadlock. An item's
// work must not depend on which thread runs it (the BLAS calls inside run
// sequentially, as in csrc/blas_blocked.h), so the results are bitwise the same on
// any thread count. An exception in an item stops the loop and is rethrown.
//
// Measured on the 2-core Xeon (leaky_rnn forward, B=32, H=256, T=1024): a
// per-step parallel_for around the step's product left the nonlinearity and the
// copies on one thread, 12 of its 28 ms.
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>

#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, cpu)

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

template <typename F>
void run_steps(int64_t steps, int64_t m, F&& item) {
  if (steps <= 0 || m <= 0) return;
  std::atomic<int64_t> ticket{0}, finished{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex error_mutex;
  const int64_t total = steps * m;
  auto worker = [&](int64_t, int64_t) {
    for (;;) {
      const int64_t t = ticket.fetch_add(1, std::memory_order_relaxed);
      if (t >= total) break;
      const int64_t k = t / m;
      // the previous step done; yield after a while (more threads than cores)
      for (int64_t spins = 0; finished.load(std::memory_order_acquire) < k * m; ++spins) {
        if (failed.load(std::memory_order_relaxed)) return;
        if (spins < 4096) spin_pause();
        else std::this_thread::yield();
      }
      if (failed.load(std::memory_order_relaxed)) return;
      try {
        item(k, t % m);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        failed.store(true);
        return;
      }
      finished.fetch_add(1, std::memory_order_release);
    }
  };
  // At least two when torch has more than one thread, even for one item per
  // step: outside a parallel region the BLAS would thread a call itself, and
  // split its reduction by the thread count (csrc/blas_blocked.h).
  const int64_t nt = torch::stable::get_num_threads();
  const int64_t threads = nt > 1 ? std::max<int64_t>(2, std::min<int64_t>(nt, m)) : 1;
  if (threads == 1) {
    worker(0, 1);
  } else {
    torch::stable::parallel_for(0, threads, 1, worker);
  }
  if (error) std::rethrow_exception(error);
}

HIDDEN_NAMESPACE_END(mts, cpu)
