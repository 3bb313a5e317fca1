#pragma once
// Variable-length batches (every op's `lengths` argument), host side.
//
// lengths: a 1-D int64 tensor of B entries on the data's device, L_b in [0, T].
// Sequence b is computed exactly as if it were alone, cut to its first L_b steps:
// forward it runs t = 0..L_b-1, with reverse=True t = L_b-1..0 (torch.nn.RNN's
// reverse direction on packed input). Outputs (and input gradients) at t >= L_b
// are 0, and the incoming gradient there is ignored. Processing step k of row b
// is time t = k (forward) or L_b - 1 - k (reverse), for k < L_b.
#include <algorithm>
#include <numeric>
#include <optional>
#include <vector>

#include "stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts)

// Shape, dtype and device checks; the values are read (and checked) by the CPU
// kernels, and clamped to [0, T] by the GPU kernels, which must not read them
// on the host (no synchronisation).
inline void check_lengths(const char* op, const std::optional<Tensor>& lengths, int64_t B,
                          const Device& device) {
  if (!lengths.has_value()) return;
  const Tensor& l = *lengths;
  MTS_CHECK(l.dim() == 1 && l.size(0) == B, op, ": lengths must be a 1-D tensor of B = ", B,
            " sequence lengths, got shape ", shape_str(l.sizes()));
  MTS_CHECK(l.scalar_type() == ScalarType::Long, op, ": lengths must be int64, got ",
            torch::headeronly::toString(l.scalar_type()));
  MTS_CHECK(l.device() == device, op, ": lengths must be on ", device_str(device),
            " (the data's device), got ", device_str(l.device()));
}

// A CPU lengths tensor's values, each checked against [0, T].
inline std::vector<int64_t> lengths_on_host(const char* op, const Tensor& l, int64_t T) {
  const Tensor c = as_contiguous(l);
  const int64_t* p = static_cast<const int64_t*>(c.const_data_ptr());
  std::vector<int64_t> out(p, p + c.numel());
  for (size_t b = 0; b < out.size(); ++b)
    MTS_CHECK(out[b] >= 0 && out[b] <= T, op, ": lengths must be in [0, T] = [0, ", T,
              "], got lengths[", b, "] = ", out[b]);
  return out;
}

// The processing order of a ragged batch in the CPU loops: rows by decreasing
// length (stable, so equal lengths keep the batch order; a permutation of
// indices, not of data), so the rows still running at step k are the first
// active[k] and the others leave the per-step products; pos is order's inverse
// (row b's place in it). Empty without lengths.
struct RowOrder {
  std::vector<int64_t> len, order, active, pos;
};

inline RowOrder row_order(const std::optional<Tensor>& lengths, int64_t B, int64_t T, const char* op) {
  RowOrder o;
  if (!lengths) return o;
  o.len = lengths_on_host(op, *lengths, T);
  o.order.resize(B);
  std::iota(o.order.begin(), o.order.end(), int64_t(0));
  std::stable_sort(o.order.begin(), o.order.end(),
                   [&](int64_t a, int64_t b) { return o.len[a] > o.len[b]; });
  o.pos.resize(B);
  for (int64_t i = 0; i < B; ++i) o.pos[o.order[i]] = i;
  o.active.resize(T);
  int64_t n = B;
  for (int64_t t = 0; t < T; ++t) {
    while (n > 0 && o.len[o.order[n - 1]] <= t) --n;
    o.active[t] = n;
  }
  return o;
}

// Zeros at every padded step (t >= L_b) of a (T, B, H) tensor x, for a CPU loop's
// operands r (fields len: nullptr without lengths, Tn, B, H).
template <typename R, typename T>
inline void zero_padded(const R& r, T* x) {
  if (!r.len) return;
  for (int64_t b = 0; b < r.B; ++b)
    for (int64_t t = r.len[b]; t < r.Tn; ++t)
      std::fill(x + (t * r.B + b) * r.H, x + (t * r.B + b + 1) * r.H, T(0));
}

HIDDEN_NAMESPACE_END(mts)
