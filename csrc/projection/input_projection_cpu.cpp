// The input projection of a recurrent layer over the valid steps of a
// time-major batch (schemas in csrc/registration.cpp):
//   input_projection:        out[t, b] = x[t, b] W^T + b_ih + b_hh   (t < L_b), 0 beyond
//   input_projection_grads:  dW = sum_{t < L_b} g[t, b]^T x[t, b],  db = sum_{t < L_b} g[t, b]
// Without lengths every step is valid. Each is a set of BLAS calls over
// row segments: the whole (T * B) rows when they are uniformly strided (no
// lengths, x contiguous), else sequence b's first L_b rows at stride x.stride(0),
// so a padded step costs no multiply-add (a batch with lengths U[T/2, T] is
// about 3/4 of the full batch's work), and the output comes from the block
// cache (csrc/cpu_alloc.h: a fresh (T, B, N) result's page faults cost a
// third of the GEMM at B=32, T=1024, I=H=256).
//
// Bitwise the same on any thread count: the output rows are cut into blocks fixed
// by the shape and the lengths, each a chain of sequential BLAS calls made from
// inside the parallel region; the reduction of the weight gradient is cut into
// chunks fixed the same way and summed in chunk order (csrc/blas_blocked.h).
#include <algorithm>
#include <vector>

#include "../blas_blocked.h"
#include "../cpu_alloc.h"
#include "../lengths.h"

HIDDEN_NAMESPACE_BEGIN(mts, projection)
namespace {

using cpu::AlignedVec;
using cpu::kBlasK;

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
bool uniform(const Tensor& x) { return x.size(1) == 1 || x.stride(0) == x.size(1) * x.stride(1); }

Rows rows_of(const char* op, const Tensor& x, const std::optional<Tensor>& lengths) {
  Rows r{x.size(0), x.size(1), {}, uniform(x), {}};
  if (lengths) {
    check_lengths(op, lengths, r.B, x.device());
    r.len = lengths_on_host(op, *lengths, r.T);
  }
  return r;
}

// The valid rows cut into calls of at most `cap` rows (of equal size, no short
// last call). With uniform strides: the steps every sequence has as rows of one
// matrix (all of them without lengths), then the rest gathered step by step into
// tiles: a call on one sequence's rows, 32 KiB apart at B=32, H=256, took 1.4x
// the time per row of one on neighbouring rows, the more the longer the call.
// Otherwise (a transposed batch-first x, whose sequences are contiguous) each
// sequence's valid steps.
std::vector<Segment> segments(Rows& r, int64_t cap) {
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
Tensor with_unit_rows(const Tensor& x) {
  return x.stride(2) == 1 || x.size(2) == 1 ? x : torch::stable::contiguous(x);
}

template <typename T>
Operand<T> operand(const Tensor& x) {
  return {static_cast<T*>(const_cast<void*>(x.const_data_ptr())), x.stride(0), x.stride(1),
          x.size(1) == 1 ? x.stride(0) : x.stride(1)};
}

template <typename T>
constexpr ScalarType dtype_of() {
  return std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
}

void check_float(const char* op, const char* name, const Tensor& t) {
  MTS_CHECK(t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double, op, ": ", name,
            " must be float32 or float64 (the modules take F.linear for other dtypes), got ",
            torch::headeronly::toString(t.scalar_type()));
}

void check_vector(const char* op, const char* name, const std::optional<Tensor>& v, int64_t N, const Tensor& x) {
  if (v) check_operand(op, name, *v, {N}, x);
}

template <typename T>
Tensor view_of(T* p, int64_t m, int64_t n, int64_t rs) {
  return torch::stable::from_blob(p, {m, n}, {rs, 1}, Device(torch::headeronly::DeviceType::CPU), dtype_of<T>());
}

// f(task) for task in [0, n) inside the parallel region, always at least two
// tasks (see csrc/blas_blocked.h: a single task would run inline, where the BLAS
// would thread it).
template <typename F>
void parallel_tasks(int64_t n, F&& f) {
  if (n <= 0) return;
  torch::stable::parallel_for(0, std::max<int64_t>(n, 2), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < std::min(end, n); ++i) f(i);
  });
}

template <typename T>
Tensor project(const Tensor& x_in, const Tensor& w, const std::optional<Tensor>& b1,
               const std::optional<Tensor>& b2, const std::optional<Tensor>& lengths) {
  const Tensor x = with_unit_rows(x_in);
  Rows r = rows_of("input_projection", x, lengths);
  const int64_t K = x.size(2), N = w.size(0);
  Tensor out = empty_cpu(x, {r.T, r.B, N});
  if (out.numel() == 0) return out;
  AlignedVec<T> bias(N, T(0));
  for (const auto* b : {&b1, &b2})
    if (*b) {
      const Tensor c = as_contiguous(**b);
      for (int64_t j = 0; j < N; ++j) bias[j] += ptr<T>(c)[j];
    }
  const Operand<T> xo = operand<T>(x), oo{mut<T>(out), r.B * N, N, N};
  const T* wp = ptr<T>(w);
  const std::vector<Segment> segs = segments(r, kRowBlock);
  parallel_tasks(static_cast<int64_t>(segs.size()), [&](int64_t i) {
    const Segment& s = segs[i];
    const bool tile = s.seq == kTail;
    const int64_t* rows = tile ? r.tail.data() + s.t0 : nullptr;
    const T* a = xo.at(s);
    int64_t lda = xo.row_stride(s);
    T* c = tile ? tile_buffer<T>(1, s.n * N) : oo.at(s);
    const int64_t ldc = tile ? N : oo.row_stride(s);
    if (tile) {
      T* xb = tile_buffer<T>(0, s.n * K);
      for (int64_t q = 0; q < s.n; ++q) std::copy_n(xo.row(rows[q], r.B), K, xb + q * K);
      a = xb;
      lda = K;
    }
    for (int64_t q = 0; q < s.n; ++q) std::copy(bias.begin(), bias.end(), c + q * ldc);
    Tensor cv = view_of(c, s.n, N, ldc);
    // rows (n, K) @ W^T: element (k, j) of W^T is w[j * w.stride(0) + k * w.stride(1)]
    cpu::addmm_k_sliced<T>(cv, s.n, K, N, a, lda, 1, wp, w.stride(1), w.stride(0));
    if (tile)
      for (int64_t q = 0; q < s.n; ++q) std::copy_n(c + q * N, N, oo.p + rows[q] * N);
  });
  if (!r.len.empty())
    parallel_tasks(r.B, [&](int64_t b) {
      for (int64_t t = r.len[b]; t < r.T; ++t) std::fill_n(oo.p + t * oo.st + b * oo.sb, N, T(0));
    });
  return out;
}

// Reduction chunks of the weight gradient (as chunked_gemm_acc's): the segments
// in order, cut where the running row count passes q * total / chunks.
std::vector<int64_t> chunk_starts(const std::vector<Segment>& segs, int64_t chunks) {
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

template <typename T>
std::tuple<Tensor, Tensor> grads(const Tensor& g_in, const Tensor& x_in, const std::optional<Tensor>& lengths,
                                 bool with_bias) {
  const Tensor g = with_unit_rows(g_in), x = with_unit_rows(x_in);
  Rows r = rows_of("input_projection_grads", x, lengths);
  r.flat = r.flat && uniform(g);
  const int64_t N = g.size(2), K = x.size(2);
  Tensor dw = torch::stable::new_zeros(x, {N, K});
  Tensor db = torch::stable::new_zeros(x, {with_bias ? N : 0});
  const std::vector<Segment> segs = segments(r, kBlasK);
  if (segs.empty() || N == 0) return {dw, db};
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
    Tensor ov = view_of(out, N, K, K);
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
      cpu::addmm_k_sliced<T>(ov, N, s.n, K, gp, 1, grs, xp, xrs, 1);
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
    T* dbp = mut<T>(db);
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0;
      for (int64_t q = 0; q < nq; ++q) acc += sums[q * N + j];
      dbp[j] = static_cast<T>(acc);
    }
  }
  return {dw, db};
}

template <typename F>
decltype(auto) dispatch(ScalarType t, F&& f) {
  if (t == ScalarType::Double) return f(TypeTag<double>{});
  return f(TypeTag<float>{});
}

Tensor input_projection(Tensor x, Tensor weight, std::optional<Tensor> bias_ih, std::optional<Tensor> bias_hh,
                        std::optional<Tensor> lengths) {
  const char* op = "input_projection";
  MTS_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, K), got shape ", shape_str(x.sizes()));
  check_float(op, "x", x);
  MTS_CHECK(weight.dim() == 2 && weight.size(1) == x.size(2), op, ": weight must be 2-D (N, K) with K = ",
            x.size(2), " (x.size(2)), got shape ", shape_str(weight.sizes()));
  check_operand(op, "weight", weight, weight.sizes(), x);
  check_vector(op, "bias_ih", bias_ih, weight.size(0), x);
  check_vector(op, "bias_hh", bias_hh, weight.size(0), x);
  return dispatch(x.scalar_type(), [&](auto tag) {
    return project<typename decltype(tag)::type>(x, weight, bias_ih, bias_hh, lengths);
  });
}

std::tuple<Tensor, Tensor> input_projection_grads(Tensor grad, Tensor x, std::optional<Tensor> lengths,
                                                  bool with_bias) {
  const char* op = "input_projection_grads";
  MTS_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, K), got shape ", shape_str(x.sizes()));
  check_float(op, "x", x);
  MTS_CHECK(grad.dim() == 3 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1), op,
            ": grad must be 3-D (T, B, N) with x's T and B, got shape ", shape_str(grad.sizes()), " for x of shape ",
            shape_str(x.sizes()));
  check_operand(op, "grad", grad, grad.sizes(), x);
  return dispatch(x.scalar_type(), [&](auto tag) {
    return grads<typename decltype(tag)::type>(grad, x, lengths, with_bias);
  });
}

}  // namespace
HIDDEN_NAMESPACE_END(mts, projection)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("input_projection", TORCH_BOX(&mts::projection::input_projection));
  m.impl("input_projection_grads", TORCH_BOX(&mts::projection::input_projection_grads));
}
