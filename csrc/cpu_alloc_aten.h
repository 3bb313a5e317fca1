#pragma once
// The regular-API (c10::Allocator) front end of the huge-page block cache, for
// csrc/rnn/, which has not been ported to the stable ABI yet and reaches this
// through csrc/cpu_alloc.h. Delete this file once csrc/rnn/ is ported.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstring>

#include "huge_page_cache.h"

namespace mts {

class HugePageCPUAllocator final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
#if defined(MTS_HUGE_PAGE_CACHE)
    if (n >= huge_page::kThreshold) {
      const size_t bytes = huge_page::rounded(n);
      void* ptr = huge_page::allocate(bytes);
      TORCH_CHECK(ptr != nullptr, "mts_kernels: out of CPU memory allocating ", bytes, " bytes");
      return {ptr, new Block{ptr, bytes}, &release, c10::Device(c10::DeviceType::CPU)};
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
  struct Block {
    void* ptr;
    size_t bytes;
  };

  static void release(void* ctx) {
    auto* block = static_cast<Block*>(ctx);
    huge_page::release(block->ptr, block->bytes);
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
