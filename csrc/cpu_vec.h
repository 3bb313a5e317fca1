#pragma once
// Vectorized building blocks of the CPU recurrence loops (leaky_rnn, clockwork_rnn):
// GCC vector types, a register-tiled product for small per-step GEMMs, the
// narrow products (at most two vectors of output columns, any GEMM's), a fast
// float32 tanh, a lane-wise loop helper and the loops' row prefetch. Header-only
// and inline, so each target clone of a loop (MTS_CPU_CLONES) compiles them for
// its own ISA.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"

// Vec<T> values are passed between these helpers and those of
// rnn/leaky_rnn_math.h, all inline and inlined into one target's code (the clones
// are flattened), so the AVX-vs-SSE calling-convention difference GCC warns about
// never applies.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace mts {
namespace cpu {

// One 32-byte register: 8 floats / 4 doubles (AVX2; the baseline clone lowers it
// to SSE pairs). GCC vector types rather than intrinsics, so one source serves
// every target and both dtypes.
template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

// V is T or Vec<T>: unaligned moves of one element or one vector.
template <typename V, typename T>
inline void ld(V& v, const T* p) {
  std::memcpy(&v, p, sizeof v);
}
template <typename V, typename T>
inline void st(T* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// A store that bypasses the caches (x86 movntps / movntpd on 16-byte-aligned
// addresses: SSE2, so every clone has it; a plain store elsewhere), for rows a
// loop writes once and does not read back: an ordinary store first reads the line
// it writes (read for ownership). A ragged backward's scattered e rows (B=32,
// H=256, T=1024) went from 45.9 to 40.7 ms with it. The writing thread calls
// stream_fence() before others read them.
template <typename V, typename T>
inline void st_stream(T* p, const V& v) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (sizeof(V) % 16 == 0) {
    if ((reinterpret_cast<uintptr_t>(p) & 15) == 0) {
      typedef float f4 __attribute__((vector_size(16)));
      typedef double d2 __attribute__((vector_size(16)));
      for (size_t o = 0; o < sizeof(V); o += 16) {
        char* dst = reinterpret_cast<char*>(p) + o;
        if constexpr (sizeof(T) == 4) {
          f4 w;
          std::memcpy(&w, reinterpret_cast<const char*>(&v) + o, 16);
          __builtin_ia32_movntps(reinterpret_cast<float*>(dst), w);
        } else {
          d2 w;
          std::memcpy(&w, reinterpret_cast<const char*>(&v) + o, 16);
          __builtin_ia32_movntpd(reinterpret_cast<double*>(dst), w);
        }
      }
      return;
    }
  }
#endif
  st(p, v);
}
inline void stream_fence() {
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_ia32_sfence();
#endif
}

// c[r, 0:C*L] += sum_k a[r, k] m[k, 0:C*L] for r < R: an R x C register tile of
// accumulators lives across the whole k loop, each m row segment is loaded once
// for R rows, each a[r, k] broadcast once for C vectors. R*C = 6-8 independent FMA
// chains cover the FMA latency (4 cycles x 2 pipes) at the small sizes this loop
// serves, where one step's product is too short to amortise anything bigger.
// Smaller tiles (a 4-row batch times one vector: a clockwork module 16 units
// wide) keep S = 2 or 4 sets of accumulators, over k modulo S, summed at the end,
// so they too have 8 chains: 4 chains of K = 64 had made the forward's product
// latency-bound (ClockworkRNN B=4, H=64: half of each step).
template <typename T, int R, int C>
inline void tile(int64_t K, const T* __restrict__ a, int64_t lda, const T* __restrict__ m,
                 int64_t ldm, T* __restrict__ c, int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  constexpr int S = R * C >= 6 ? 1 : R * C >= 3 ? 2 : 4;
  Vec<T> acc[S][R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
      ld(acc[0][r][j], c + r * ldc + j * L);
#pragma GCC unroll 4
      for (int q = 1; q < S; ++q) acc[q][r][j] = Vec<T>{};
    }
  int64_t k = 0;
  for (; k + S <= K; k += S) {
#pragma GCC unroll 4
    for (int q = 0; q < S; ++q) {
      Vec<T> mv[C];
#pragma GCC unroll 8
      for (int j = 0; j < C; ++j) ld(mv[j], m + (k + q) * ldm + j * L);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const T av = a[r * lda + k + q];
#pragma GCC unroll 8
        for (int j = 0; j < C; ++j) acc[q][r][j] += av * mv[j];
      }
    }
  }
  for (; k < K; ++k) {
    Vec<T> mv[C];
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) ld(mv[j], m + k * ldm + j * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T av = a[r * lda + k];
#pragma GCC unroll 8
      for (int j = 0; j < C; ++j) acc[0][r][j] += av * mv[j];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
#pragma GCC unroll 4
      for (int q = 1; q < S; ++q) acc[0][r][j] += acc[q][r][j];
      st(c + r * ldc + j * L, acc[0][r][j]);
    }
}

// Rows [0, R) of c (row stride ldc) += a (R x K) @ m (K x N, row stride ldm); N a
// multiple of the vector width.
template <typename T, int R, int C = (R >= 4 ? 2 : 8 / R)>
inline void tile_row(int64_t K, int64_t N, const T* a, int64_t lda, const T* m, int64_t ldm, T* c,
                     int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = 0;
  for (; j + C * L <= N; j += C * L) tile<T, R, C>(K, a, lda, m + j, ldm, c + j, ldc);
  // the remainder in the widest tiles that fit (one clockwork module of 16 units
  // at R = 2 is one 2 x 2 tile, not two 2 x 1 ones of half the chains)
  if constexpr (C > 1)
    if (j < N) tile_row<T, R, C / 2>(K, N - j, a, lda, m + j, ldm, c + j, ldc);
}

// c (B x N, row stride ldc) += a (B x K, row stride lda) @ m (K x N, row stride
// ldm); N is a multiple of the vector width (m carries zero padding columns, c
// columns there are written and must exist).
template <typename T>
inline void matmul_acc(int64_t B, int64_t K, int64_t N, const T* a, int64_t lda, const T* m,
                       int64_t ldm, T* c, int64_t ldc) {
  int64_t r = 0;
  for (; r + 4 <= B; r += 4) tile_row<T, 4>(K, N, a + r * lda, lda, m, ldm, c + r * ldc, ldc);
  switch (B - r) {
    case 3: tile_row<T, 3>(K, N, a + r * lda, lda, m, ldm, c + r * ldc, ldc); break;
    case 2: tile_row<T, 2>(K, N, a + r * lda, lda, m, ldm, c + r * ldc, ldc); break;
    case 1: tile_row<T, 1>(K, N, a + r * lda, lda, m, ldm, c + r * ldc, ldc); break;
    default: break;
  }
}

// c (B x Np) += a (B x K, row stride lda) @ m (K x Np); Np is a multiple of the
// vector width (m and c carry zero / ignored padding columns).
template <typename T>
inline void matmul_acc(int64_t B, int64_t K, int64_t Np, const T* a, int64_t lda, const T* m,
                       T* c) {
  matmul_acc<T>(B, K, Np, a, lda, m, Np, c, Np);
}

// float32 tanh as a clamped odd rational function (Eigen's ptanh_float: a few ulp),
// branch-free and written once for a scalar or a Vec<float> (GCC vector types take
// ?: and scalar operands), since std::tanh is a scalar libm call that costs more
// than the rest of a small step.
template <typename V>
inline V fast_tanh(V x) {
  const V hi = V{} + 7.90531110763549805f, lo = -hi;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const V x2 = x * x;
  V p = V{} - 2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  V q = V{} + 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

inline float tanh_of(float z) { return fast_tanh(z); }
inline Vec<float> tanh_of(const Vec<float>& z) { return fast_tanh(z); }
inline double tanh_of(double z) { return std::tanh(z); }  // float64: exact, not fast
inline Vec<double> tanh_of(const Vec<double>& z) {
  Vec<double> out;
  for (int i = 0; i < kLanes<double>; ++i) out[i] = std::tanh(z[i]);
  return out;
}

// f(j, V{}) for j over [0, H): whole vectors, then single elements for the tail,
// so the pointwise passes read and write the unpadded (B, H) rows in place.
template <typename T, typename F>
inline void for_lanes(int64_t H, F&& f) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = 0;
  for (; j + L <= H; j += L) f(j, Vec<T>{});
  for (; j < H; ++j) f(j, T{});
}
// The same over [j0, j1) (j0 a multiple of the vector width).
template <typename T, typename F>
inline void for_lanes(int64_t j0, int64_t j1, F&& f) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = j0;
  for (; j + L <= j1; j += L) f(j, Vec<T>{});
  for (; j < j1; ++j) f(j, T{});
}

// c (R rows, row stride ldc) += a (R x K; element (r, k) at a[r * ars + k * acs])
// @ bp (K x C vectors, packed: row stride C * L, zero beyond n), for n columns of
// c (the last vector partial where n < C * L: its lanes past n are neither read
// nor written). The tile of the narrow products (narrow_acc), where a's rows may
// be its columns (a weight gradient's g^T).
template <typename T, int R, int C>
inline void strided_tile(int64_t K, const T* __restrict__ a, int64_t ars, int64_t acs,
                         const T* __restrict__ bp, T* __restrict__ c, int64_t ldc, int64_t n) {
  constexpr int64_t L = kLanes<T>;
  const int64_t last = n - (C - 1) * L;  // 1..L columns in the last vector
  // a whole last vector moves as one (a variable-length memcpy per row is a call)
  const bool whole = last == L;
  Vec<T> acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j + 1 < C; ++j) ld(acc[r][j], c + r * ldc + j * L);
    T* cl = c + r * ldc + (C - 1) * L;
    if (whole) {
      ld(acc[r][C - 1], cl);
    } else {
      T tail[L] = {};
      std::memcpy(tail, cl, last * sizeof(T));
      ld(acc[r][C - 1], tail);
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    Vec<T> bv[C];
#pragma GCC unroll 2
    for (int j = 0; j < C; ++j) ld(bv[j], bp + (k * C + j) * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T av = a[r * ars + k * acs];
#pragma GCC unroll 2
      for (int j = 0; j < C; ++j) acc[r][j] += av * bv[j];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j + 1 < C; ++j) st(c + r * ldc + j * L, acc[r][j]);
    T* cl = c + r * ldc + (C - 1) * L;
    if (whole) {
      st(cl, acc[r][C - 1]);
    } else {
      T tail[L];
      st(tail, acc[r][C - 1]);
      std::memcpy(cl, tail, last * sizeof(T));
    }
  }
}

// Reduction rows of b packed per call of the narrow product (on the stack: 16 KB).
constexpr int64_t kNarrowK = 256;

// c (m x n, row stride ldc) += a (m x K, strides ars / acs) @ b (K x n, strides
// brs / bcs) for n <= 2 vectors: the shapes where a BLAS is slowest (a weight
// gradient or an input gradient of a narrow input, (64 x 8) from 16384 rows: MKL
// at a quarter of this loop's speed). b is packed kNarrowK rows at a time into
// zero-padded vectors; R rows of a per tile make 8 accumulation chains.
template <typename T>
inline void narrow_matmul_acc(int64_t m, int64_t K, int64_t n, const T* a, int64_t ars, int64_t acs,
                              const T* b, int64_t brs, int64_t bcs, T* c, int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  alignas(32) T bp[kNarrowK * 2 * L];
  const int C = n > L ? 2 : 1;
  for (int64_t k0 = 0; k0 < K; k0 += kNarrowK) {
    const int64_t kb = std::min(kNarrowK, K - k0);
    for (int64_t k = 0; k < kb; ++k)
      for (int64_t j = 0; j < C * L; ++j) bp[k * C * L + j] = j < n ? b[(k0 + k) * brs + j * bcs] : T(0);
    const T* ak = a + k0 * acs;
    int64_t i = 0;
    if (C == 1) {
      for (; i + 8 <= m; i += 8) strided_tile<T, 8, 1>(kb, ak + i * ars, ars, acs, bp, c + i * ldc, ldc, n);
      for (; i < m; ++i) strided_tile<T, 1, 1>(kb, ak + i * ars, ars, acs, bp, c + i * ldc, ldc, n);
    } else {
      for (; i + 4 <= m; i += 4) strided_tile<T, 4, 2>(kb, ak + i * ars, ars, acs, bp, c + i * ldc, ldc, n);
      for (; i < m; ++i) strided_tile<T, 1, 2>(kb, ak + i * ars, ars, acs, bp, c + i * ldc, ldc, n);
    }
  }
}

// c[u, j : j + C*L] += sum_{r < R} a[r * lda + u] x[r][j : j + C*L] for u < U: a
// U x C register tile of c accumulates over all R rows before it is stored once
// (the micro-kernel of a GEMM's a^T x, with x given as row pointers).
template <typename T, int U, int C>
inline void outer_tile(int64_t R, const T* __restrict__ a, int64_t lda, const T* const* x, int64_t j,
                       T* __restrict__ c, int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> acc[U][C];
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 2
    for (int q = 0; q < C; ++q) ld(acc[u][q], c + u * ldc + j + q * L);
  for (int64_t r = 0; r < R; ++r) {
    Vec<T> xv[C];
#pragma GCC unroll 2
    for (int q = 0; q < C; ++q) ld(xv[q], x[r] + j + q * L);
#pragma GCC unroll 4
    for (int u = 0; u < U; ++u) {
      const T b = a[r * lda + u];
#pragma GCC unroll 2
      for (int q = 0; q < C; ++q) acc[u][q] += b * xv[q];
    }
  }
#pragma GCC unroll 4
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 2
    for (int q = 0; q < C; ++q) st(c + u * ldc + j + q * L, acc[u][q]);
}

template <typename T, int U>
inline void outer_units(int64_t R, int64_t K, const T* a, int64_t lda, const T* const* x, T* c,
                        int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  int64_t j = 0;
  for (; j + 2 * L <= K; j += 2 * L) outer_tile<T, U, 2>(R, a, lda, x, j, c, ldc);
  for (; j + L <= K; j += L) outer_tile<T, U, 1>(R, a, lda, x, j, c, ldc);
  for (; j < K; ++j)
    for (int u = 0; u < U; ++u) {
      T s = c[u * ldc + j];
      for (int64_t r = 0; r < R; ++r) s += a[r * lda + u] * x[r][j];
      c[u * ldc + j] = s;
    }
}

// c (k x K, row stride ldc) += a^T x = sum_r a_r^T x_r over R rows (a: R x k, row
// stride lda; x: R row pointers of K elements): a weight gradient's block formed
// from rows a time loop collected, with 4 x 2-vector register tiles of c.
template <typename T>
inline void outer_acc(int64_t R, int64_t k, int64_t K, const T* a, int64_t lda, const T* const* x, T* c,
                      int64_t ldc) {
  int64_t u = 0;
  for (; u + 4 <= k; u += 4) outer_units<T, 4>(R, K, a + u, lda, x, c + u * ldc, ldc);
  for (; u < k; ++u) outer_units<T, 1>(R, K, a + u, lda, x, c + u * ldc, ldc);
}

// Software prefetch of one row of n elements (kWrite: for a store). The
// recurrence loops touch each step's rows of their (T, B, H) operands once, a
// few hundred bytes per row at small B * H: too short a stream for the hardware
// prefetcher to run ahead, so a step that comes cold from memory stalls on every
// row (ClockworkRNN B=4, H=64: the backward op 1.7 ms with its operands in cache,
// 2.8 ms cold, as it runs inside a training step). The loops prefetch kAhead
// steps ahead.
constexpr int64_t kAhead = 8;
template <bool kWrite, typename T>
inline void prefetch_row(const T* p, int64_t n) {
  constexpr int64_t line = 64 / sizeof(T);
  for (int64_t j = 0; j < n; j += line) __builtin_prefetch(p + j, kWrite ? 1 : 0, 3);
}

}  // namespace cpu
}  // namespace mts

// float32 is the common case: on x86-64 it is compiled twice, for the baseline
// and for x86-64-v3 (AVX2 + FMA), and the loader picks per machine (ifunc), since
// wheels cannot assume AVX2 but most machines have it. `flatten` inlines the
// templated loop into each clone, so the loop itself is compiled per target.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MTS_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default"), flatten))
#else
#define MTS_CPU_CLONES
#endif
