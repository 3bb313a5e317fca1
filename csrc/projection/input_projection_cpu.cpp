// The input projection of a recurrent layer over the valid steps of a
// time-major batch (schemas in csrc/registration.cpp):
//   input_projection:        out[t, b] = x[t, b] W^T + b_ih + b_hh   (t < L_b), 0 beyond
//   input_projection_grads:  dW = sum_{t < L_b} g[t, b]^T x[t, b],  db = sum_{t < L_b} g[t, b]
// Without lengths every step is valid. Each is a set of BLAS calls over row
// segments of the valid rows only (ragged_rows.h: the steps every sequence has
// as one matrix, the rest gathered into tiles; per sequence for a transposed
// batch-first x), so a padded step costs no multiply-add (a batch with lengths
// U[T/2, T] is about 3/4 of the full batch's work), and the output comes from
// the block cache (csrc/cpu_alloc.h: a fresh (T, B, N) result's page faults
// cost a third of the GEMM at B=32, T=1024, I=H=256).
//
// Bitwise the same on any thread count: the output rows are cut into blocks fixed
// by the shape and the lengths, each a chain of sequential BLAS calls made from
// inside the parallel region; the reduction of the weight gradient is cut into
// chunks fixed the same way and summed in chunk order (csrc/blas_blocked.h).
#include <algorithm>
#include <vector>

#include "../cpu_alloc.h"
#include "../lengths.h"
#include "ragged_rows.h"

HIDDEN_NAMESPACE_BEGIN(mts, projection)
namespace {

Rows rows_of(const char* op, const Tensor& x, const std::optional<Tensor>& lengths) {
  Rows r{x.size(0), x.size(1), {}, uniform(x), {}};
  if (lengths) {
    check_lengths(op, lengths, r.B, x.device());
    r.len = lengths_on_host(op, *lengths, r.T);
  }
  return r;
}

template <typename T>
std::tuple<Tensor, Tensor> grads(const Tensor& g_in, const Tensor& x_in, const std::optional<Tensor>& lengths,
                                 bool with_bias) {
  const Tensor g = with_unit_rows(g_in), x = with_unit_rows(x_in);
  const Rows r = rows_of("input_projection_grads", x, lengths);
  Tensor dw = torch::stable::new_zeros(x, {g.size(2), x.size(2)});
  Tensor db = torch::stable::new_zeros(x, {with_bias ? g.size(2) : 0});
  ragged_gram<T>(g, x, r, dw, with_bias ? &db : nullptr);
  return {dw, db};
}

template <typename T>
Tensor project(const Tensor& x_in, const Tensor& w, const std::optional<Tensor>& b1,
               const std::optional<Tensor>& b2, const std::optional<Tensor>& lengths) {
  const Tensor x = with_unit_rows(x_in);
  Rows r = rows_of("input_projection", x, lengths);
  const int64_t K = x.size(2), N = w.size(0);
  Tensor out = empty_cpu(x, {r.T, r.B, N});
  if (out.numel() == 0) return out;
  const AlignedVec<T> bias = summed_bias<T>(b1, b2, N);
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
    // rows (n, K) @ W^T: element (k, j) of W^T is w[j * w.stride(0) + k * w.stride(1)]
    cpu::gemm_acc<T>(s.n, K, N, a, lda, 1, wp, w.stride(1), w.stride(0), c, ldc, 1);
    if (tile)
      for (int64_t q = 0; q < s.n; ++q) std::copy_n(c + q * N, N, oo.p + rows[q] * N);
  });
  if (!r.len.empty())
    parallel_tasks(r.B, [&](int64_t b) {
      for (int64_t t = r.len[b]; t < r.T; ++t) std::fill_n(oo.p + t * oo.st + b * oo.sb, N, T(0));
    });
  return out;
}

Tensor input_projection(Tensor x, Tensor weight, std::optional<Tensor> bias_ih, std::optional<Tensor> bias_hh,
                        std::optional<Tensor> lengths) {
  check_projection_args("input_projection", x, weight, bias_ih, bias_hh);
  return dispatch(x.scalar_type(), [&](auto tag) {
    return project<typename decltype(tag)::type>(x, weight, bias_ih, bias_hh, lengths);
  });
}

std::tuple<Tensor, Tensor> input_projection_grads(Tensor grad, Tensor x, std::optional<Tensor> lengths,
                                                  bool with_bias) {
  check_grads_args("input_projection_grads", grad, x);
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
