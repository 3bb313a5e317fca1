#pragma once
// GEMMs through torch's BLAS whose result does not depend on the thread count.
//
// A threaded MKL / OpenBLAS GEMM splits its work by the number of threads: the
// reduction dimension from K ~ 1024 (K ~ 256 for one row), and the output too,
// which moves the boundaries between full and edge micro-kernels, whose
// accumulation orders differ (measured with torch 2.14's MKL 2024.2: leaky_rnn's
// per-step product at B = 64, H = 200 differs between 1 and 2 threads). Here the
// output is cut into blocks fixed by the shape alone, and each block is a chain
// of BLAS calls made from inside torch::stable::parallel_for, where the BLAS runs on the
// calling thread only (MKL and OpenMP OpenBLAS do not open a nested team): every
// block's summation order is the sequential BLAS's for that block's shape, on any
// thread count. There are always at least two tasks, so that with more than one
// thread the calls really are inside the parallel region (at::parallel_for runs a
// single task inline, where the BLAS would thread it); with one thread the BLAS
// is sequential anyway. Even a sequential MKL call splits a long reduction by
// the thread count it believes it has (see kBlasK), so no call sees more than
// kBlasK of it. Block edges are multiples of 16 elements and every base
// pointer handed in is 64-byte aligned (AlignedVec, torch's allocations), so the
// alignment of each block's operands is fixed by the shape too.
#if defined(__linux__) || defined(__APPLE__)
#include <dlfcn.h>
#define MTS_HAVE_DLSYM 1
#endif

#include <algorithm>
#include <cstdlib>
#include <new>
#include <optional>
#include <type_traits>
#include <vector>

#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cpu.h>

#include "cpu_vec.h"
#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, cpu)

// 64-byte aligned storage for buffers handed to the BLAS.
template <typename T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <typename U>
  AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) {
    void* p = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const AlignedAlloc<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAlloc<U>&) const { return false; }
};
template <typename T>
using AlignedVec = std::vector<T, AlignedAlloc<T>>;

// A strided matrix operand: element (i, j) at p[i * rs + j * cs].
template <typename T>
struct Mat {
  T* p;
  int64_t rs, cs;
};

// Reduction slice of one sequential BLAS call. MKL's sgemm on AVX-512 (measured:
// torch 2.14's MKL 2024.2 on an Intel Xeon) cuts the reduction of a call from
// K ~ 1024 by the thread count it believes it has, even when the call runs on
// one thread inside torch's parallel region: a (70, 1100) @ (1100, 256) block
// summed differently with 2 threads than with 1 or 3 (MKL_CBWR=COMPATIBLE, not
// MKL_DYNAMIC, removed it).
// Calls never see more than kBlasK of the reduction: longer ones are a chain of
// calls accumulating into the same output in slice order, fixed by the shape.
constexpr int64_t kBlasK = 512;

// The Fortran GEMM of the BLAS torch itself links (MKL's sgemm_ / dgemm_ in the
// x86 wheels), looked up at run time in libtorch_cpu and its dependencies (not
// the whole process, where another library's sgemm_ might take 64-bit integers),
// and checked on a small product; or nullptr: then every call goes through
// torch's addmm_out. Called directly it saves the three tensor views and the
// dispatcher call of each product, about 4 us, which at B=32, H=256 is an
// eighth of a whole recurrence step. 32-bit integers (the LP64 interface).
template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                             const int*, const T*, const int*, const T*, T*, const int*);
template <typename T>
FortranGemm<T> fortran_gemm() {
  static const FortranGemm<T> f = []() -> FortranGemm<T> {
#if defined(MTS_HAVE_DLSYM)
    if (const char* v = std::getenv("MTS_KERNELS_BLAS_DIRECT"); v && v[0] == '0') return nullptr;
    void* torch_cpu = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!torch_cpu) return nullptr;
    auto gemm = reinterpret_cast<FortranGemm<T>>(dlsym(torch_cpu, std::is_same_v<T, float> ? "sgemm_" : "dgemm_"));
    dlclose(torch_cpu);  // NOLOAD: only drops the reference just taken
    if (!gemm) return nullptr;
    // c (2 x 2, column-major) = a (2 x 3) b (3 x 2), exact in any precision
    const T a[6] = {1, 2, 3, 4, 5, 6}, b[6] = {1, 0, 2, 1, 0, 1};
    T c[4] = {0, 0, 0, 0};
    const int m = 2, n = 2, k = 3;
    const T one = 1, zero = 0;
    gemm("N", "N", &m, &n, &k, &one, a, &m, b, &k, &zero, c, &m);
    const T want[4] = {11, 14, 6, 8};  // a b, column by column
    for (int i = 0; i < 4; ++i)
      if (c[i] != want[i]) return nullptr;
    return gemm;
#else
    return nullptr;
#endif
  }();
  return f;
}

// c (m x n, row stride crs, unit columns) += a (m x k) @ b (k x n) through the
// Fortran GEMM, as the column-major c^T = b^T a^T; false (nothing done) where it
// cannot take the operands (no unit stride, a leading dimension it rejects, or
// sizes beyond int).
template <typename T>
bool direct_gemm(int64_t m, int64_t k, int64_t n, const T* a, int64_t ars, int64_t acs, const T* b,
                 int64_t brs, int64_t bcs, T* c, int64_t crs) {
  const FortranGemm<T> gemm = fortran_gemm<T>();
  constexpr int64_t kMax = 2147483647;
  if (!gemm || std::max({m, k, n, ars, acs, brs, bcs, crs}) > kMax) return false;
  // b^T (n x k) column-major: 'N' with ld brs when b's columns are unit, 'T' (of
  // a k x n with ld bcs) when its rows are; likewise a^T (k x m).
  char tb, ta;
  int64_t ldb, lda;
  if (bcs == 1 && brs >= std::max<int64_t>(1, n)) tb = 'N', ldb = brs;
  else if (brs == 1 && bcs >= std::max<int64_t>(1, k)) tb = 'T', ldb = bcs;
  else return false;
  if (acs == 1 && ars >= std::max<int64_t>(1, k)) ta = 'N', lda = ars;
  else if (ars == 1 && acs >= std::max<int64_t>(1, m)) ta = 'T', lda = acs;
  else return false;
  if (crs < std::max<int64_t>(1, n)) return false;
  const int M = static_cast<int>(n), N = static_cast<int>(m), K = static_cast<int>(k);
  const int LDB = static_cast<int>(ldb), LDA = static_cast<int>(lda), LDC = static_cast<int>(crs);
  const T one = 1;
  gemm(&tb, &ta, &M, &N, &K, &one, b, &LDB, a, &LDA, &one, c, &LDC);
  return true;
}

template <typename T>
constexpr ScalarType scalar_type_of() {
  return std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
}

// The narrow products (cpu_vec.h narrow_matmul_acc), float32 compiled per target
// (one copy per translation unit: these have internal linkage).
[[maybe_unused]] MTS_CPU_CLONES static void narrow_acc(int64_t m, int64_t K, int64_t n, const float* a,
                                                       int64_t ars, int64_t acs, const float* b, int64_t brs,
                                                       int64_t bcs, float* c, int64_t ldc) {
  narrow_matmul_acc<float>(m, K, n, a, ars, acs, b, brs, bcs, c, ldc);
}
[[maybe_unused]] static void narrow_acc(int64_t m, int64_t K, int64_t n, const double* a, int64_t ars,
                                        int64_t acs, const double* b, int64_t brs, int64_t bcs, double* c,
                                        int64_t ldc) {
  narrow_matmul_acc<double>(m, K, n, a, ars, acs, b, brs, bcs, c, ldc);
}

// c (m x n, row stride crs, column stride ccs) += a (m x K) @ b (K x n), from a
// (row stride ars, column stride acs) and b (rs brs, cs bcs): sequential calls of
// at most kBlasK of the reduction each, each the direct Fortran GEMM where it
// takes the operands, else torch's addmm_out (on a view of c made once, when
// first needed).
template <typename T>
void gemm_acc(int64_t m, int64_t K, int64_t n, const T* a, int64_t ars, int64_t acs, const T* b, int64_t brs,
              int64_t bcs, T* c, int64_t crs, int64_t ccs) {
  if (m <= 0 || n <= 0) return;
  if (n <= 2 * kLanes<T> && ccs == 1) {  // a BLAS's worst shapes: see narrow_matmul_acc
    narrow_acc(m, K, n, a, ars, acs, b, brs, bcs, c, crs);
    return;
  }
  const Device cpu(torch::headeronly::DeviceType::CPU);
  std::optional<Tensor> cv;
  for (int64_t k0 = 0; k0 < K; k0 += kBlasK) {
    const int64_t k = std::min(kBlasK, K - k0);
    if (ccs == 1 && direct_gemm<T>(m, k, n, a + k0 * acs, ars, acs, b + k0 * brs, brs, bcs, c, crs)) continue;
    if (!cv) cv = torch::stable::from_blob(c, {m, n}, {crs, ccs}, cpu, scalar_type_of<T>());
    const Tensor av =
        torch::stable::from_blob(const_cast<T*>(a + k0 * acs), {m, k}, {ars, acs}, cpu, scalar_type_of<T>());
    const Tensor bv =
        torch::stable::from_blob(const_cast<T*>(b + k0 * brs), {k, n}, {brs, bcs}, cpu, scalar_type_of<T>());
    TORCH_ERROR_CODE_CHECK(aoti_torch_cpu_addmm_out(cv->get(), cv->get(), av.get(), bv.get(), 1.0, 1.0));
  }
}

// The same for row-major operands (unit column strides).
template <typename T>
void gemm_acc_rows(int64_t m, int64_t K, int64_t n, const T* a, int64_t lda, const T* b, int64_t ldb, T* c,
                   int64_t ldc) {
  gemm_acc<T>(m, K, n, a, lda, 1, b, ldb, 1, c, ldc, 1);
}

// f(task) for task in [0, n) inside torch's parallel region, always with at
// least two tasks (see the file comment: a single task would run inline, where
// the BLAS would thread the call itself).
template <typename F>
inline void parallel_tasks(int64_t n, F&& f) {
  if (n <= 0) return;
  torch::stable::parallel_for(0, std::max<int64_t>(n, 2), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < std::min(end, n); ++i) f(i);
  });
}

// Output block edge: 256 x 256 keeps each call large enough for the BLAS's own
// packing to pay off (K is the full reduction; measured: 128 x 128 cost ~20% more
// single-threaded time in leaky_rnn at B = 64, H = 1024) while a (64, 1024) step
// product still makes 4 tasks, a (1024, 1024) weight gradient 16.
constexpr int64_t kBlasBlock = 256;

constexpr int64_t kSplitWork = int64_t(1) << 19;

// c (M x N) += a (M x K) @ b (K x N), in fixed blocks of c (see the file comment).
template <typename T>
__attribute__((noinline)) void blocked_gemm_acc(int64_t M, int64_t K, int64_t N, Mat<const T> a,
                                                Mat<const T> b, Mat<T> c) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  if (M <= 0 || N <= 0 || K <= 0) return;
  // Block edges: kBlasBlock, except that an output of one block with at least
  // kSplitWork multiply-adds is cut in two along its longer side (at a multiple
  // of 16, still fixed by the shape) so that a second thread shares it: a step
  // product of (32, 256) @ (256, 256) ran on one core (measured on the 2-core
  // Xeon, fwd+bwd: LeakyRNN B=32, T=1024, I=H=256 121 -> 107 ms; ClockworkRNN's
  // forward op at H=512 38 -> 33 ms).
  int64_t bm = kBlasBlock, bn = kBlasBlock;
  if (M <= kBlasBlock && N <= kBlasBlock && M * N * K >= kSplitWork && std::max(M, N) >= 32) {
    if (N >= M)
      bn = (N / 2 + 15) / 16 * 16;
    else
      bm = (M / 2 + 15) / 16 * 16;
  }
  const int64_t mb = (M + bm - 1) / bm, nb = (N + bn - 1) / bn;
  parallel_tasks(mb * nb, [&](int64_t task) {
    const int64_t i0 = task / nb * bm, j0 = task % nb * bn;
    const int64_t m = std::min(bm, M - i0), n = std::min(bn, N - j0);
    gemm_acc<T>(m, K, n, a.p + i0 * a.rs, a.rs, a.cs, b.p + j0 * b.cs, b.rs, b.cs, c.p + i0 * c.rs + j0 * c.cs,
                c.rs, c.cs);
  });
}

// Reduction chunks of a weight gradient (a^T b over all steps and rows, K up to
// T * B): at least kGramChunk long each, at most kMaxGramChunks of them. Cutting
// K rather than the (H, H) output keeps every call as large as the whole output,
// so each operand is packed once (measured at H = 1024, K = 3200, one thread:
// 16 output blocks of 256 x 256 cost ~27% more than one call, 2-4 K chunks
// 4-8%),
// at the price of one (M, N) partial sum per chunk after the first.
constexpr int64_t kGramChunk = 512;
constexpr int64_t kMaxGramChunks = 8;

// c (M x N) += a (M x K) @ b (K x N) with a long reduction: chunks of K fixed by
// the shape, one sequential BLAS call each (as in blocked_gemm_acc), the first
// into c, the others into partial sums added to c in chunk order.
template <typename T>
__attribute__((noinline)) void chunked_gemm_acc(int64_t M, int64_t K, int64_t N, Mat<const T> a,
                                                Mat<const T> b, Mat<T> c) {
  if (M <= 0 || N <= 0 || K <= 0) return;
  const int64_t chunks = std::min(kMaxGramChunks, std::max<int64_t>(1, K / kGramChunk));
  const int64_t len = (K + chunks - 1) / chunks;
  AlignedVec<T> partial((chunks - 1) * M * N, T(0));
  parallel_tasks(chunks, [&](int64_t q) {
    const int64_t k0 = q * len, k = std::min(len, K - k0);
    if (k <= 0) return;
    const T *ap = a.p + k0 * a.cs, *bp = b.p + k0 * b.rs;
    if (q == 0)
      gemm_acc<T>(M, k, N, ap, a.rs, a.cs, bp, b.rs, b.cs, c.p, c.rs, c.cs);
    else
      gemm_acc<T>(M, k, N, ap, a.rs, a.cs, bp, b.rs, b.cs, partial.data() + (q - 1) * M * N, N, 1);
  });
  for (int64_t q = 1; q < chunks; ++q) {
    const T* part = partial.data() + (q - 1) * M * N;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) c.p[i * c.rs + j * c.cs] += part[i * N + j];
  }
}

// a^T @ b of 2-D tensors a (K x M) and b (K x N) of dtype T, any strides, into
// out (M x N): out += a^T b, or a new tensor when out is not given.
template <typename T>
Tensor blocked_gram(const Tensor& a, const Tensor& b, std::optional<Tensor> out = std::nullopt) {
  const int64_t K = a.size(0), M = a.size(1), N = b.size(1);
  if (!out) out = torch::stable::new_zeros(a, {M, N});
  chunked_gemm_acc<T>(M, K, N, {static_cast<const T*>(a.const_data_ptr()), a.stride(1), a.stride(0)},
                      {static_cast<const T*>(b.const_data_ptr()), b.stride(0), b.stride(1)},
                      {static_cast<T*>(out->mutable_data_ptr()), out->stride(0), out->stride(1)});
  return *out;
}

HIDDEN_NAMESPACE_END(mts, cpu)
