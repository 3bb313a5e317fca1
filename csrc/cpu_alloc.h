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
// step), up to kCacheLimit bytes in all, like a small caching allocator
// (csrc/huge_page_cache.h).
//
// The stable ABI has no c10::Allocator: a block is handed to torch with
// torch::stable::from_blob, whose deleter returns it to the cache.
#include <vector>

#include "huge_page_cache.h"
#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts)

// An uninitialised CPU tensor of `sizes` and t's dtype, large ones from the
// block cache, with the given strides (dense: contiguous ones or a permutation's).
inline Tensor empty_sized_cpu(const Tensor& t, IntRef sizes, const std::vector<int64_t>& strides) {
#if defined(MTS_HUGE_PAGE_CACHE)
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t n = static_cast<size_t>(numel) * t.element_size();
  if (n >= huge_page::kThreshold) {
    const size_t bytes = huge_page::rounded(n);
    void* ptr = huge_page::allocate(bytes);
    MTS_CHECK(ptr != nullptr, "mts_kernels: out of CPU memory allocating ", bytes,
              " bytes");
    try {
      return torch::stable::from_blob(ptr, sizes, strides,
                                      Device(torch::headeronly::DeviceType::CPU),
                                      t.scalar_type(),
                                      [bytes](void* p) { huge_page::release(p, bytes); });
    } catch (...) {
      huge_page::release(ptr, bytes);  // no tensor owns the block
      throw;
    }
  }
#endif
  if (strides == contiguous_strides(sizes)) return torch::stable::new_empty(t, sizes);
  MTS_CHECK(same_sizes(sizes, t.sizes()), "mts_kernels: empty_sized_cpu: non-contiguous strides "
            "need t's sizes");
  return torch::stable::empty_like(t);
}

// An uninitialised CPU tensor of t's sizes and dtype, large ones from the block
// cache, with the given strides: contiguous ones or empty_like_strides(t).
inline Tensor empty_strided_cpu(const Tensor& t, const std::vector<int64_t>& strides) {
  return empty_sized_cpu(t, t.sizes(), strides);
}

// A contiguous uninitialised CPU tensor of `sizes` and t's dtype (the block cache
// as above).
inline Tensor empty_cpu(const Tensor& t, const std::vector<int64_t>& sizes) {
  return empty_sized_cpu(t, sizes, contiguous_strides(sizes));
}

// torch::stable::empty_like(t) (same sizes and dtype; t's strides when t is
// non-overlapping and dense, else contiguous), large outputs from the block cache.
inline Tensor empty_like_cpu(const Tensor& t) { return empty_strided_cpu(t, empty_like_strides(t)); }

// t.contiguous() for a CPU tensor, a needed copy in a block of the cache: the
// backward of a loss like y.sum() hands the kernels an expanded grad_h, and a
// fresh (T, B, H) copy's first-touch page faults cost more than the copy itself
// (17 ms of 81 for ClockworkRNN's backward op at B=32, T=1024, H=512).
inline Tensor contiguous_cpu(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = empty_strided_cpu(t, contiguous_strides(t.sizes()));
  torch::stable::copy_(out, t);
  return out;
}

HIDDEN_NAMESPACE_END(mts)
