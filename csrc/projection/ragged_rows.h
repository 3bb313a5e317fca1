#pragma once
// GEMMs over the valid rows of a time-major (T, B, C) batch with lengths, through
// torch's BLAS (csrc/blas_blocked.h: bitwise the same on any thread count): the
// row segments of each call and the weight-gradient reduction sum_{t < L_b}
// g[t, b]^T x[t, b]. Used by the input projection (input_projection_cpu.cpp)
// and the recurrences' weight gradients (csrc/rnn/leaky_rnn_cpu.cpp).
#include <algorithm>
#include <optional>
#include <utility>
#include <vector>

#include "../blas_blocked.h"

HIDDEN_NAMESPACE_BEGIN(mts, projection)

using cpu::AlignedVec;
using cpu::kBlasK;
using cpu::parallel_tasks;

// The projection ops run in float32 / float64 (checked with the argument's name).
inline void check_float(const char* op, const char* name, const Tensor& t) {
  MTS_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double, op, ": ", name,
            " must be float32 or float64 (the modules take F.linear for other dtypes), got ",
            torch::headeronly::toString(t.scalar_type()));
}

template <typename F>
decltype(auto) dispatch(ScalarType t, F&& f) {
  if (t == ScalarType::Double) return f(TypeTag<double>{});
  return f(TypeTag<float>{});
}

// The forward ops' x (T, B, K), weight (N, K) and optional biases (N,); errors name the argument.
inline void check_projection_args(const char* op, const Tensor& x, const Tensor& weight,
                                  const std::optional<Tensor>& bias_ih, const std::optional<Tensor>& bias_hh) {
  MTS_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, K), got shape ", shape_str(x.sizes()));
  check_float(op, "x", x);
  MTS_CHECK(weight.dim() == 2 && weight.size(1) == x.size(2), op, ": weight must be 2-D (N, K) with K = ",
            x.size(2), " (x.size(2)), got shape ", shape_str(weight.sizes()));
  check_operand(op, "weight", weight, weight.sizes(), x);
  for (const auto& [name, v] : {std::pair{"bias_ih", &bias_ih}, std::pair{"bias_hh", &bias_hh}})
    if (*v) check_operand(op, name, **v, {weight.size(0)}, x);
}

// The weight-gradient ops' grad (T, B, N) beside x (T, B, K).
inline void check_grads_args(const char* op, const Tensor& grad, const Tensor& x) {
  MTS_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, K), got shape ", shape_str(x.sizes()));
  check_float(op, "x", x);
  MTS_CHECK(grad.dim() == 3 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1), op,
            ": grad must be 3-D (T, B, N) with x's T and B, got shape ", shape_str(grad.sizes()), " for x of shape ",
            shape_str(x.sizes()));
  check_operand(op, "grad", grad, grad.sizes(), x);
}

// bias_ih + bias_hh (either may be absent) as one (N,) vector in T.
template <typename T>
AlignedVec<T> summed_bias(const std::optional<Tensor>& b1, const std::optional<Tensor>& b2, int64_t N) {
  AlignedVec<T> bias(N, T(0));
  for (const auto* b : {&b1, &b2})
    if (*b) {
      const Tensor v = as_contiguous(**b);
      for (int64_t j = 0; j < N; ++j) bias[j] += static_cast<const T*>(v.const_data_ptr())[j];
    }
  return bias;
}

// Rows of one BLAS call: kFlat: rows [t0, t0 + n) of the flattened (T * B)
// matrix; kTail: entries [t0, t0 + n) of Rows::tail, gathered into a tile; a
// sequence b >= 0: its steps [t0, t0 + n).
constexpr int64_t kFlat = -1, kTail = -2;
struct Segment {
  int64_t seq, t0, n;
};

// Rows per call: large enough for the BLAS's packing of W to pay off, and a
// (T=1024, B=32) batch still gives about 100 tasks, which balance over the
// threads whatever the lengths. A gathered tile (kTail) of 512 rows of x and of
// out (1 MiB at I = H = 256) stays in L2.
constexpr int64_t kRowBlock = 1024;
constexpr int64_t kTileRows = 512;

struct Rows {
  int64_t T, B;
  std::vector<int64_t> len;   // empty: every sequence has T valid steps
  bool flat;                  // the (t, b) rows are uniformly strided (row t * B + b)
  std::vector<int64_t> tail;  // flat with lengths: the valid rows t * B + b past the common steps
  int64_t length(int64_t b) const { return len.empty() ? T : len[b]; }
  // steps valid in every sequence
  int64_t common() const { return len.empty() ? T : *std::min_element(len.begin(), len.end()); }
};

// Rows (t, b) of a (T, B, C) operand x are at x + t * st + b * sb, uniformly
// strided when st == B * sb (for every operand of the call).
inline bool uniform(const Tensor& x) { return x.size(1) == 1 || x.stride(0) == x.size(1) * x.stride(1); }

// The valid rows cut into calls of at most `cap` rows (of equal size, no short
// last call). With uniform strides: the steps every sequence has as rows of one
// matrix (all of them without lengths), then the rest gathered step by step into
// tiles: a call on one sequence's rows, 32 KiB apart at B=32, H=256, took 1.4x
// the time per row of one on neighbouring rows, the more the longer the call.
// Otherwise (a transposed batch-first x, whose sequences are contiguous) each
// sequence's valid steps.
inline std::vector<Segment> segments(Rows& r, int64_t cap) {
  std::vector<Segment> out;
  auto cut = [&](int64_t seq, int64_t lo, int64_t hi, int64_t c) {
    if (hi <= lo) return;
    const int64_t pieces = (hi - lo + c - 1) / c, step = (hi - lo + pieces - 1) / pieces;
    for (int64_t t0 = lo; t0 < hi; t0 += step) out.push_back({seq, t0, std::min(step, hi - t0)});
  };
  if (!r.flat) {
    for (int64_t b = 0; b < r.B; ++b) cut(b, 0, r.length(b), cap);
    return out;
  }
  const int64_t common = r.common();
  cut(kFlat, 0, common * r.B, cap);
  r.tail.clear();
  for (int64_t t = common; t < r.T; ++t)
    for (int64_t b = 0; b < r.B; ++b)
      if (r.length(b) > t) r.tail.push_back(t * r.B + b);
  const size_t nf = out.size();
  cut(kTail, 0, static_cast<int64_t>(r.tail.size()), std::min(cap, kTileRows));
  // The two kinds interleaved evenly: the parallel loop hands each thread a
  // contiguous range of calls, which then holds its share of rows of each (the
  // flat calls first had given one of two threads 3/4 of the work).
  const size_t ng = out.size() - nf;
  if (nf == 0 || ng == 0) return out;
  std::vector<Segment> mixed;
  mixed.reserve(out.size());
  for (size_t f = 0, g = 0; f < nf || g < ng;) {
    const bool take_f = g == ng || (f < nf && (2 * f + 1) * ng <= (2 * g + 1) * nf);
    mixed.push_back(take_f ? out[f++] : out[nf + g++]);
  }
  return mixed;
}

// A strided operand (T, B, C) with unit inner stride.
template <typename T>
struct Operand {
  T* p;
  int64_t st, sb;
  int64_t fs;  // the flattened rows' stride: sb, or st when B = 1
  // the first row of a flat or per-sequence segment, and its row stride
  T* at(const Segment& s) const { return s.seq == kFlat ? p + s.t0 * fs : p + s.t0 * st + s.seq * sb; }
  int64_t row_stride(const Segment& s) const { return s.seq == kFlat ? fs : st; }
  // row t * B + b of a flat operand
  T* row(int64_t flat_row, int64_t B) const { return p + flat_row / B * st + flat_row % B * sb; }
};

// A thread's tile buffer (kTail), reused across calls.
template <typename T>
T* tile_buffer(int which, int64_t elems) {
  thread_local AlignedVec<T> buf[2];
  if (static_cast<int64_t>(buf[which].size()) < elems) buf[which].resize(elems);
  return buf[which].data();
}

// Unit inner stride (the BLAS's rows), else a contiguous copy.
inline Tensor with_unit_rows(const Tensor& x) {
  return x.stride(2) == 1 || x.size(2) == 1 ? x : torch::stable::contiguous(x);
}

template <typename T>
Operand<T> operand(const Tensor& x) {
  return {static_cast<T*>(const_cast<void*>(x.const_data_ptr())), x.stride(0), x.stride(1),
          x.size(1) == 1 ? x.stride(0) : x.stride(1)};
}

// Reduction chunks of the weight gradient (as chunked_gemm_acc's): the segments
// in order, cut where the running row count passes q * total / chunks.
inline std::vector<int64_t> chunk_starts(const std::vector<Segment>& segs, int64_t chunks) {
  int64_t total = 0;
  for (const Segment& s : segs) total += s.n;
  std::vector<int64_t> starts{0};
  int64_t done = 0;
  for (size_t i = 0; i < segs.size(); ++i) {
    if (static_cast<int64_t>(starts.size()) < chunks && done >= total * static_cast<int64_t>(starts.size()) / chunks &&
        static_cast<int64_t>(i) > starts.back())
      starts.push_back(static_cast<int64_t>(i));
    done += segs[i].n;
  }
  starts.push_back(static_cast<int64_t>(segs.size()));
  return starts;
}

// dw (N, K) = sum over r's valid rows of g[t, b]^T x[t, b], and, when db is
// given, db (N,) = sum of g[t, b] there: g (T, B, N), x (T, B, K) with unit inner
// strides, dw and db contiguous and zero on entry (dw of x's dtype T).
template <typename T>
void ragged_gram(const Tensor& g, const Tensor& x, Rows r, Tensor& dw, Tensor* db) {
  r.flat = r.flat && uniform(g) && uniform(x);
  const int64_t N = g.size(2), K = x.size(2);
  const bool with_bias = db != nullptr;
  const std::vector<Segment> segs = segments(r, kBlasK);
  if (segs.empty() || N == 0) return;
  int64_t total = 0;
  for (const Segment& s : segs) total += s.n;
  const int64_t chunks = std::min(cpu::kMaxGramChunks, std::max<int64_t>(1, total / cpu::kGramChunk));
  const std::vector<int64_t> starts = chunk_starts(segs, chunks);
  const int64_t nq = static_cast<int64_t>(starts.size()) - 1;
  AlignedVec<T> partial((nq - 1) * N * K, T(0));
  std::vector<double> sums(with_bias ? nq * N : 0, 0.0);
  const Operand<T> go = operand<T>(g), xo = operand<T>(x);
  parallel_tasks(nq, [&](int64_t q) {
    T* out = q == 0 ? mut<T>(dw) : partial.data() + (q - 1) * N * K;
    AlignedVec<T> rowsum(with_bias ? N : 0);
    for (int64_t i = starts[q]; i < starts[q + 1]; ++i) {
      const Segment& s = segs[i];
      const T* gp = go.at(s);
      const T* xp = xo.at(s);
      int64_t grs = go.row_stride(s), xrs = xo.row_stride(s);
      if (s.seq == kTail) {
        const int64_t* rows = r.tail.data() + s.t0;
        T* gb = tile_buffer<T>(0, s.n * N);
        T* xb = tile_buffer<T>(1, s.n * K);
        for (int64_t e = 0; e < s.n; ++e) {
          std::copy_n(go.row(rows[e], r.B), N, gb + e * N);
          std::copy_n(xo.row(rows[e], r.B), K, xb + e * K);
        }
        gp = gb, xp = xb, grs = N, xrs = K;
      }
      // g rows^T (N, n) @ x rows (n, K)
      cpu::gemm_acc<T>(N, s.n, K, gp, 1, grs, xp, xrs, 1, out, K, 1);
      if (!with_bias) continue;
      // the segment's bias sum in T (vectorised), accumulated across segments in double
      std::fill(rowsum.begin(), rowsum.end(), T(0));
      for (int64_t t = 0; t < s.n; ++t)
        for (int64_t j = 0; j < N; ++j) rowsum[j] += gp[t * grs + j];
      for (int64_t j = 0; j < N; ++j) sums[q * N + j] += double(rowsum[j]);
    }
  });
  T* dwp = mut<T>(dw);
  for (int64_t q = 1; q < nq; ++q)
    for (int64_t e = 0; e < N * K; ++e) dwp[e] += partial[(q - 1) * N * K + e];
  if (with_bias) {
    T* dbp = mut<T>(*db);
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t q = 0; q < nq; ++q) acc += sums[q * N + j];
      dbp[j] = static_cast<T>(acc);
    }
  }
}

// dw (N x K, row stride ldw) += sum over `rows` (flat rows t * B + b, ascending)
// of g[r]^T x[r - shift], and db (N,) += the sum of those g[r] when given: g and
// x are operands offset to the columns wanted (N and K wide), shift = B pairs
// each row with the previous step's. Reduction chunks fixed by the row count (as
// chunked_gemm_acc's), summed in chunk order, so bitwise the same on any thread
// count; inside a chunk calls of at most kTileRows rows, each on the operands in
// place where its rows are consecutive and `in_place` (both uniformly strided),
// else on rows gathered into tiles (L2-resident).
template <typename T>
void gram_rows(const std::vector<int64_t>& rows, int64_t B, const Operand<T>& g, int64_t N, const Operand<T>& x,
               int64_t shift, int64_t K, bool in_place, T* dw, int64_t ldw, T* db) {
  const int64_t n = static_cast<int64_t>(rows.size());
  if (n == 0 || N == 0) return;
  const int64_t nq = std::min(cpu::kMaxGramChunks, std::max<int64_t>(1, n / cpu::kGramChunk));
  AlignedVec<T> partial((nq - 1) * N * K, T(0));
  std::vector<double> sums(db ? nq * N : 0, 0.0);
  parallel_tasks(nq, [&](int64_t q) {
    T* out = q == 0 ? dw : partial.data() + (q - 1) * N * K;
    const int64_t ldo = q == 0 ? ldw : K;
    AlignedVec<T> rowsum(db ? N : 0);
    const int64_t end = n * (q + 1) / nq;
    for (int64_t i0 = n * q / nq; i0 < end; i0 += kTileRows) {
      const int64_t m = std::min(kTileRows, end - i0);
      const int64_t* r = rows.data() + i0;
      const T* gp;
      const T* xp;
      int64_t grs, xrs;
      if (in_place && r[m - 1] - r[0] == m - 1) {
        gp = g.row(r[0], B), grs = g.fs;
        xp = x.row(r[0] - shift, B), xrs = x.fs;
      } else {
        T* gb = tile_buffer<T>(0, m * N);
        T* xb = tile_buffer<T>(1, m * K);
        for (int64_t e = 0; e < m; ++e) {
          std::copy_n(g.row(r[e], B), N, gb + e * N);
          std::copy_n(x.row(r[e] - shift, B), K, xb + e * K);
        }
        gp = gb, grs = N, xp = xb, xrs = K;
      }
      cpu::gemm_acc<T>(N, m, K, gp, 1, grs, xp, xrs, 1, out, ldo, 1);
      if (!db) continue;
      std::fill(rowsum.begin(), rowsum.end(), T(0));
      for (int64_t e = 0; e < m; ++e)
        for (int64_t j = 0; j < N; ++j) rowsum[j] += gp[e * grs + j];
      for (int64_t j = 0; j < N; ++j) sums[q * N + j] += double(rowsum[j]);
    }
  });
  for (int64_t q = 1; q < nq; ++q)
    for (int64_t i = 0; i < N; ++i)
      for (int64_t j = 0; j < K; ++j) dw[i * ldw + j] += partial[((q - 1) * N + i) * K + j];
  if (db)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t q = 0; q < nq; ++q) acc += sums[q * N + j];
      db[j] += static_cast<T>(acc);
    }
}

HIDDEN_NAMESPACE_END(mts, projection)
