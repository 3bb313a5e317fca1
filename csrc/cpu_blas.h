#pragma once
// The per-step products of the CPU recurrence loops (clockwork_rnn,
// deep_transition_rnn): the register-tiled loop of cpu_vec.h for small ones, torch's
// BLAS above kSmallWork multiply-adds, where a BLAS call's fixed cost (a few
// microseconds) is paid back. Also the raw-pointer accessors those loops use.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>

#include "blas_blocked.h"
#include "cpu_vec.h"
#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts)

constexpr int64_t kSmallWork = int64_t(1) << 17;

// A (n,) tensor like `like` (dtype T) from per-unit sums kept in double.
template <typename T>
Tensor from_double(const std::vector<double>& v, const Tensor& like) {
  Tensor out = torch::stable::new_empty(like, {static_cast<int64_t>(v.size())});
  std::copy(v.begin(), v.end(), mut<T>(out));
  return out;
}

// c (n x N, row stride ldc) += a (n x K, lda) @ m (K x N, ldm) through torch's
// BLAS on the loop's buffers, in blocks fixed by the shape (the same result on any
// thread count: blas_blocked.h); out of line, so the cloned loops call it as it is.
template <typename T>
__attribute__((noinline)) void blas_acc(int64_t n, int64_t K, int64_t N, const T* a, int64_t lda,
                                        const T* m, int64_t ldm, T* c, int64_t ldc) {
  cpu::blocked_gemm_acc<T>(n, K, N, {a, lda, 1}, {m, ldm, 1}, {c, ldc, 1});
}

// c += a @ m, tiled below kSmallWork multiply-adds, else BLAS with the exact width
// n_exact (the tiled loop writes the padded width N, a multiple of the vector
// width, which c must have; m carries zero padding columns).
template <typename T>
inline void gemm_acc(int64_t n, int64_t K, int64_t N, int64_t n_exact, const T* a, int64_t lda,
                     const T* m, int64_t ldm, T* c, int64_t ldc) {
  if (n * K * N > kSmallWork)
    blas_acc<T>(n, K, n_exact, a, lda, m, ldm, c, ldc);
  else
    cpu::matmul_acc<T>(n, K, N, a, lda, m, ldm, c, ldc);
}

HIDDEN_NAMESPACE_END(mts)
