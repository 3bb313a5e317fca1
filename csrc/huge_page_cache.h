#pragma once
// The block cache behind empty_like_cpu (csrc/cpu_alloc.h; the reasons are there).
// Plain C++, no torch types.
#include <cstddef>
#include <cstdlib>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__linux__) && defined(MADV_HUGEPAGE)
#define MTS_HUGE_PAGE_CACHE 1
#endif

namespace mts {
namespace huge_page {

constexpr size_t kHugePage = size_t(2) << 20;
constexpr size_t kThreshold = size_t(2) << 20;  // one huge page
constexpr size_t kCacheLimit = size_t(512) << 20;

// The size a request of n >= kThreshold bytes is served with (and cached under).
inline size_t rounded(size_t n) { return (n + kHugePage - 1) / kHugePage * kHugePage; }

struct Cache {
  std::mutex mutex;
  std::multimap<size_t, void*> blocks;
  size_t total = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown.
inline Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

inline void* take_cached(size_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mutex);
  auto it = c.blocks.find(bytes);
  if (it == c.blocks.end()) return nullptr;
  void* p = it->second;
  c.blocks.erase(it);
  c.total -= bytes;
  return p;
}

#if defined(MTS_HUGE_PAGE_CACHE)
// A block of `bytes` (a multiple of kHugePage), cached or fresh; nullptr when out
// of memory.
inline void* allocate(size_t bytes) {
  void* ptr = take_cached(bytes);
  if (ptr != nullptr) return ptr;
  if (posix_memalign(&ptr, kHugePage, bytes) != 0) return nullptr;
  (void)madvise(ptr, bytes, MADV_HUGEPAGE);
  return ptr;
}
#endif

// Returns a block from allocate() to the cache, or frees it when the cache is full.
inline void release(void* ptr, size_t bytes) {
  {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    if (c.total + bytes <= kCacheLimit) {
      c.blocks.emplace(bytes, ptr);
      c.total += bytes;
      return;
    }
  }
  std::free(ptr);
}

}  // namespace huge_page
}  // namespace mts
