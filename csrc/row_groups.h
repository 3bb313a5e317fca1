#pragma once
// A CPU loop call over its batch rows in groups (csrc/lengths.h row_groups), one
// task each: the loops of leaky_rnn and clockwork_rnn.
#include <vector>

#include "blas_blocked.h"
#include "lengths.h"

HIDDEN_NAMESPACE_BEGIN(mts, cpu)

// f(operands, q) for each of Q groups of r's rows, in parallel; r's fields B, Tn,
// len, order, active, n and row0 are set per group, adjust(operands, group) sets
// any others. Q = 1: f(r, 0) on the calling thread.
template <typename R, typename F, typename A>
void run_row_groups(const R& r, const RowOrder& o, int64_t Q, F&& f, A&& adjust) {
  if (Q == 1) {
    f(r, int64_t(0));
    return;
  }
  const std::vector<RowGroup> rows = row_groups(o, r.B, r.Tn, Q);
  std::vector<R> groups(Q, r);
  for (int64_t q = 0; q < Q; ++q) {
    R& g = groups[q];
    g.row0 = rows[q].row0;
    g.n = rows[q].n;
    if (r.len) {
      g.order = rows[q].order.data();
      g.active = rows[q].active.data();
    }
    adjust(g, rows[q]);
  }
  parallel_tasks(Q, [&](int64_t q) { f(groups[q], q); });
}

HIDDEN_NAMESPACE_END(mts, cpu)
