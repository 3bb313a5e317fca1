// Test hook, not an API: a host emulation of the chunked CUDA scan's combine
// order, so the CPU test suite (tests/test_scan_combine.py) checks the GPU's
// composition arithmetic and its order on a machine without a GPU. It runs the
// same scan_combine.h functions in the order scan_fwd_chunked_kernel /
// scan_bwd_chunked_kernel do: per tile (one chunk of kFwdChunk / kBwdChunk
// steps) the data warps' segment maps, the control warp's tile map, the
// carry-in by look-back, the published inclusive state, and each warp's replay
// from the state entering its segment. Channels never interact in the kernels,
// so the lane grouping is left out; time is in processing order (a reverse
// scan is this one on flipped inputs).
//
// The look-back's walk depends on timing on a GPU; `lookback` fixes it: the
// walk composes the aggregates of that many predecessors before it meets an
// inclusive state (fewer where it reaches the first chunk, whose inclusive is
// always published at once), and -1 walks every way back to the first chunk,
// the longest composition any schedule can form.
//
//   _scan_chunked_emulate_fwd(a, x, h0, leaky, lookback) -> h
//       a, x: (T, C) float32; h0: (C,) float32 or None; h: (T, C) float32
//   _scan_chunked_emulate_bwd(grad_h, a, lookback) -> (delta, dh0)
//       delta_k = g_k + (carry reaching step k from k + 1); dh0 = carry leaving step 0
//       (dx and da are per-step products of delta: no combine in them)
#include <optional>
#include <tuple>
#include <vector>

#include "../stable_util.h"
#include "scan_combine.h"

HIDDEN_NAMESPACE_BEGIN(mts)
namespace {

using scan_cuda::kBwdSteps;
using scan_cuda::kDataWarps;
using scan_cuda::kFwdSteps;
using F = Affine<float>;

void check_2d(const char* op, const Tensor& t, const char* name) {
  MTS_CHECK(t.dim() == 2 && t.scalar_type() == ScalarType::Float &&
                t.is_cpu(),
            op, ": ", name, " must be a 2-D (T, C) float32 CPU tensor, got ", t.scalar_type(),
            " of shape ", shape_str(t.sizes()), " on ", device_str(t.device()));
}

int64_t check_lookback(const char* op, int64_t lookback) {
  MTS_CHECK(lookback >= -1, op, ": lookback must be -1 (walk to the first chunk) or >= 0, got ",
            lookback);
  return lookback;
}

// Carry entering tile `rank` from the maps `agg` and inclusive states `incl`
// of the tiles before it (look_back in scan_cuda_kernels.cuh): compose the
// predecessors' aggregates, latest last, until one whose inclusive is read.
float look_back(const std::vector<F>& agg, const std::vector<float>& incl, int64_t rank,
                int64_t lookback) {
  F acc = affine_identity<float>();
  int64_t pred = rank - 1;
  for (int64_t walked = 0; pred > 0 && (lookback < 0 || walked < lookback); ++walked, --pred)
    acc = affine_then(agg[pred], acc);
  return affine_apply(acc, incl[pred]);
}

template <bool LEAKY>
void fwd_channel(const float* a, const float* x, float* h, int64_t T, int64_t C, float init,
                 int64_t lookback) {
  constexpr int W = kDataWarps, S = kFwdSteps, L = W * S;
  const int64_t chunks = (T + L - 1) / L;
  std::vector<F> agg(chunks);
  std::vector<float> incl(chunks);
  for (int64_t r = 0; r < chunks; ++r) {
    // Data warps: steps past T are the identity map a = 1, x = 0.
    float av[W][S], xv[W][S];
    F seg[W];
    for (int w = 0; w < W; ++w) {
      seg[w] = affine_identity<float>();
      for (int i = 0; i < S; ++i) {
        const int64_t k = r * L + w * S + i;
        av[w][i] = k < T ? a[k * C] : 1.f;
        xv[w][i] = k < T ? x[k * C] : 0.f;
        seg[w] = affine_fwd_step<LEAKY>(seg[w], av[w][i], xv[w][i]);
      }
    }
    // Control warp.
    F tile = affine_identity<float>();
    for (int w = 0; w < W; ++w) tile = affine_then(tile, seg[w]);
    agg[r] = tile;
    const float carry = r == 0 ? init : look_back(agg, incl, r, lookback);
    incl[r] = affine_apply(tile, carry);
    // Data warps' replay.
    for (int w = 0; w < W; ++w) {
      F pre = affine_identity<float>();
      for (int v = 0; v < W - 1; ++v)
        if (v < w) pre = affine_then(pre, seg[v]);
      float state = affine_apply(pre, carry);
      for (int i = 0; i < S; ++i) {
        state = scan_step<LEAKY>(av[w][i], xv[w][i], state);
        const int64_t k = r * L + w * S + i;
        if (k < T) h[k * C] = state;
      }
    }
  }
}

void bwd_channel(const float* g, const float* a, float* delta, float* dh0, int64_t T, int64_t C,
                 int64_t lookback) {
  constexpr int W = kDataWarps, S = kBwdSteps, L = W * S;
  const int64_t chunks = (T + L - 1) / L;
  std::vector<F> agg(chunks);
  std::vector<float> incl(chunks);
  // Rank r (processing order) is chunk chunks - 1 - r: the last in time first.
  for (int64_t r = 0; r < chunks; ++r) {
    const int64_t chunk = chunks - 1 - r;
    float gv[W][S], av[W][S];
    F seg[W];
    for (int w = 0; w < W; ++w) {
      for (int i = 0; i < S; ++i) {
        const int64_t k = chunk * L + w * S + i;
        gv[w][i] = k < T ? g[k * C] : 0.f;
        av[w][i] = k < T ? a[k * C] : 1.f;
      }
      seg[w] = affine_identity<float>();
      for (int i = S - 1; i >= 0; --i) seg[w] = affine_bwd_step(seg[w], av[w][i], gv[w][i]);
    }
    F tile = affine_identity<float>();
    for (int w = W - 1; w >= 0; --w) tile = affine_then(tile, seg[w]);
    agg[r] = tile;
    const float carry = r == 0 ? 0.f : look_back(agg, incl, r, lookback);
    incl[r] = affine_apply(tile, carry);
    if (chunk == 0) *dh0 = incl[r];
    for (int w = 0; w < W; ++w) {
      F pre = affine_identity<float>();
      for (int v = W - 1; v > 0; --v)
        if (v > w) pre = affine_then(pre, seg[v]);
      float c = affine_apply(pre, carry);
      for (int i = S - 1; i >= 0; --i) {
        const float d = gv[w][i] + c;
        const int64_t k = chunk * L + w * S + i;
        if (k < T) delta[k * C] = d;
        c = av[w][i] * d;
      }
    }
  }
}

Tensor emulate_fwd(Tensor a_in, Tensor x_in, std::optional<Tensor> h0_in, bool leaky,
                   int64_t lookback) {
  const char* op = "_scan_chunked_emulate_fwd";
  check_2d(op, a_in, "a");
  check_2d(op, x_in, "x");
  MTS_CHECK(same_sizes(a_in.sizes(), x_in.sizes()), op, ": a has shape ", shape_str(a_in.sizes()),
            " but x has shape ", shape_str(x_in.sizes()));
  check_lookback(op, lookback);
  const int64_t T = x_in.size(0), C = x_in.size(1);
  std::optional<Tensor> h0;
  if (h0_in) {
    MTS_CHECK(h0_in->dim() == 1 && h0_in->size(0) == C &&
                  h0_in->scalar_type() == ScalarType::Float &&
                  h0_in->is_cpu(),
              op, ": h0 must be a (", C, ",) float32 CPU tensor, got ", h0_in->scalar_type(),
              " of shape ", shape_str(h0_in->sizes()));
    h0 = as_contiguous(*h0_in);
  }
  const Tensor a = as_contiguous(a_in), x = as_contiguous(x_in);
  Tensor h = torch::stable::new_empty(x, {T, C});
  const float* ap = static_cast<const float*>(a.const_data_ptr());
  const float* xp = static_cast<const float*>(x.const_data_ptr());
  const float* h0p = h0 ? static_cast<const float*>(h0->const_data_ptr()) : nullptr;
  float* hp = static_cast<float*>(h.mutable_data_ptr());
  for (int64_t c = 0; c < C; ++c) {
    const float init = h0p ? h0p[c] : 0.f;
    if (leaky)
      fwd_channel<true>(ap + c, xp + c, hp + c, T, C, init, lookback);
    else
      fwd_channel<false>(ap + c, xp + c, hp + c, T, C, init, lookback);
  }
  return h;
}

std::tuple<Tensor, Tensor> emulate_bwd(Tensor g_in, Tensor a_in, int64_t lookback) {
  const char* op = "_scan_chunked_emulate_bwd";
  check_2d(op, g_in, "grad_h");
  check_2d(op, a_in, "a");
  MTS_CHECK(same_sizes(a_in.sizes(), g_in.sizes()), op, ": a has shape ", shape_str(a_in.sizes()),
            " but grad_h has shape ", shape_str(g_in.sizes()));
  check_lookback(op, lookback);
  const int64_t T = g_in.size(0), C = g_in.size(1);
  const Tensor g = as_contiguous(g_in), a = as_contiguous(a_in);
  Tensor delta = torch::stable::new_empty(g, {T, C});
  Tensor dh0 = torch::stable::new_empty(g, {C});
  const float* gp = static_cast<const float*>(g.const_data_ptr());
  const float* ap = static_cast<const float*>(a.const_data_ptr());
  float* dp = static_cast<float*>(delta.mutable_data_ptr());
  float* d0 = static_cast<float*>(dh0.mutable_data_ptr());
  for (int64_t c = 0; c < C; ++c) bwd_channel(gp + c, ap + c, dp + c, d0 + c, T, C, lookback);
  return {delta, dh0};
}

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(mts_kernels, m) {
  // Test hooks (leading underscore): see the top of this file.
  m.def("_scan_chunked_emulate_fwd(Tensor a, Tensor x, Tensor? h0, bool leaky, int lookback)"
        " -> Tensor");
  m.def("_scan_chunked_emulate_bwd(Tensor grad_h, Tensor a, int lookback) -> (Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CPU, m) {
  m.impl("_scan_chunked_emulate_fwd", TORCH_BOX(&emulate_fwd));
  m.impl("_scan_chunked_emulate_bwd", TORCH_BOX(&emulate_bwd));
}

HIDDEN_NAMESPACE_END(mts)
