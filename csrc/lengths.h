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

// Row groups of one CPU loop call. Each batch row's recurrence is independent of
// the others', so a loop may run its rows in Q groups, one task each, every
// group's whole time loop on one thread without synchronisation. Q is fixed by
// the caller from the shape, never from the thread count, so the results are
// bitwise the same on any thread count. Without lengths (o empty) group q is the
// rows [row0, row0 + n); with lengths every Q-th row of the processing order
// (which balances the groups' work), by decreasing length: order and active as
// in RowOrder, pos the group's place of each of its rows (indexed by batch row,
// -1 for the other groups'), asc its rows in ascending batch index.
struct RowGroup {
  int64_t row0 = 0, n = 0;
  std::vector<int64_t> order, active, pos, asc;
};

inline std::vector<RowGroup> row_groups(const RowOrder& o, int64_t B, int64_t T, int64_t Q) {
  std::vector<RowGroup> groups(Q);
  for (int64_t q = 0; q < Q; ++q) {
    RowGroup& g = groups[q];
    if (o.len.empty()) {
      g.row0 = q * B / Q;
      g.n = (q + 1) * B / Q - g.row0;
      continue;
    }
    for (int64_t i = q; i < B; i += Q) g.order.push_back(o.order[i]);
    g.n = static_cast<int64_t>(g.order.size());
    g.active.resize(T);
    for (int64_t t = 0, a = g.n; t < T; ++t) {  // the running rows lead
      while (a > 0 && o.len[g.order[a - 1]] <= t) --a;
      g.active[t] = a;
    }
    g.pos.assign(B, -1);
    for (int64_t i = 0; i < g.n; ++i) g.pos[g.order[i]] = i;
    g.asc = g.order;
    std::sort(g.asc.begin(), g.asc.end());
  }
  return groups;
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
