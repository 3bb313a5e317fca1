#pragma once
// Output allocation for the CPU kernels.
//
// A scan writes its output once, front to back, right after allocating it. With
// 4 KiB pages the first-touch page faults of a fresh 64 MiB output cost more than
// the scan itself (measured on the 2-core CI machine: ~30 ms of faults against
// ~10 ms of streaming). Large buffers are therefore 2 MiB-aligned and advised as
// transparent huge pages, as torch itself does under THP_MEM_ALLOC_ENABLE=1, but
// without asking users to set a process-wide variable (advice only: where THP is
// off this is an ordinary aligned allocation). Even huge pages are zeroed by the
// kernel on first touch (~7 ms per 64 MiB there), so freed large blocks are kept
// for reuse, exact size only (a training loop asks for the same sizes every
// step), up to kCacheLimit bytes in all, like a small caching allocator.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mts {

class HugePageCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (n >= kThreshold) {
      const size_t bytes = (n + kHugePage - 1) / kHugePage * kHugePage;
      auto* block = new Block{take_cached(bytes), bytes};
      if (block->ptr == nullptr) {
        if (posix_memalign(&block->ptr, kHugePage, bytes) != 0) block->ptr = nullptr;
        if (block->ptr == nullptr) {
          delete block;
          TORCH_CHECK(false, "mts_kernels: out of CPU memory allocating ", bytes, " bytes");
        }
        (void)madvise(block->ptr, bytes, MADV_HUGEPAGE);
      }
      return {block->ptr, block, &release, c10::Device(c10::DeviceType::CPU)};
    }
#endif
    return c10::GetCPUAllocator()->allocate(n);
  }

  // Small and large blocks carry different deleters, so there is no single raw one.
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }

 private:
  static constexpr size_t kHugePage = size_t(2) << 20;
  static constexpr size_t kThreshold = size_t(2) << 20;  // one huge page
  static constexpr size_t kCacheLimit = size_t(512) << 20;

  struct Block {
    void* ptr;
    size_t bytes;
  };
  struct Cache {
    std::mutex mutex;
    std::multimap<size_t, void*> blocks;
    size_t total = 0;
  };
  // Never destroyed: tensors may be freed during interpreter shutdown.
  static Cache& cache() {
    static Cache* c = new Cache();
    return *c;
  }

  static void* take_cached(size_t bytes) {
    Cache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    auto it = c.blocks.find(bytes);
    if (it == c.blocks.end()) return nullptr;
    void* p = it->second;
    c.blocks.erase(it);
    c.total -= bytes;
    return p;
  }

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    {
      Cache& c = cache();
      std::lock_guard<std::mutex> lock(c.mutex);
      if (c.total + block->bytes <= kCacheLimit) {
        c.blocks.emplace(block->bytes, block->ptr);
        c.total += block->bytes;
        block->ptr = nullptr;
      }
    }
    std::free(block->ptr);
    delete block;
  }
};

// at::empty_like(t) (same sizes and dtype; t's strides when t is non-overlapping
// and dense, else contiguous), allocated by HugePageCPUAllocator.
inline at::Tensor empty_like_cpu(const at::Tensor& t) {
  static HugePageCPUAllocator allocator;
  if (t.is_non_overlapping_and_dense()) {
    return at::detail::empty_strided_generic(t.sizes(), t.strides(), &allocator,
                                             c10::DispatchKeySet(c10::DispatchKey::CPU),
                                             t.scalar_type());
  }
  return at::detail::empty_generic(t.sizes(), &allocator,
                                   c10::DispatchKeySet(c10::DispatchKey::CPU), t.scalar_type(),
                                   c10::MemoryFormat::Contiguous);
}

}  // namespace mts
