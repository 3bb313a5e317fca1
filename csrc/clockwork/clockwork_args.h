#pragma once
// The clockwork ops' argument checks and clock, shared by the CPU
// (clockwork_rnn_cpu.cpp) and CUDA (clockwork_rnn_cuda.cpp) registrations.
#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, clockwork)

// The clock: module m covers units [lo[m], lo[m] + k[m]); active at t when
// t >= first[m] and (t - first[m]) % period[m] == 0. Periods and first steps are
// clamped to T (the same active steps in [0, T)), so no product below overflows.
struct Clock {
  int64_t g = 0;
  std::vector<int64_t> lo, k, period, first;
};

inline Clock make_clock(int64_t T, int64_t H, const std::vector<int64_t>& sizes,
                        const std::vector<int64_t>& periods, const std::vector<int64_t>& firsts,
                        const char* op) {
  const int64_t g = static_cast<int64_t>(sizes.size());
  MTS_CHECK(g >= 1, op, ": module_sizes must name at least one module");
  MTS_CHECK(static_cast<int64_t>(periods.size()) == g && static_cast<int64_t>(firsts.size()) == g,
            op, ": module_sizes, periods and first_steps must have the same length, got ", g, ", ",
            periods.size(), " and ", firsts.size());
  Clock c;
  c.g = g;
  int64_t lo = 0;
  for (int64_t m = 0; m < g; ++m) {
    MTS_CHECK(sizes[m] >= 1, op, ": module_sizes must be >= 1, got ", sizes[m], " for module ", m);
    MTS_CHECK(periods[m] >= 1, op, ": periods must be >= 1, got ", periods[m], " for module ", m);
    MTS_CHECK(firsts[m] >= 0, op, ": first_steps must be >= 0, got ", firsts[m], " for module ", m);
    MTS_CHECK(sizes[m] <= H - lo, op, ": module_sizes must sum to hidden_size ", H);
    c.lo.push_back(lo);
    c.k.push_back(sizes[m]);
    c.period.push_back(std::min(periods[m], T));
    c.first.push_back(std::min(firsts[m], T));
    lo += sizes[m];
  }
  MTS_CHECK(lo == H, op, ": module_sizes must sum to hidden_size ", H, ", got ", lo);
  return c;
}

struct Shape {
  int64_t T, B, H;
};

// Shapes, dtypes and the device (`device`: the backend's device type) of one call.
inline Shape check_args(const char* op, const char* lead, const Tensor& x, const Tensor& w,
                        const std::optional<Tensor>& h0, const std::optional<Tensor>& alpha,
                        torch::headeronly::DeviceType device) {
  const auto [T, B, H] = check_sequence(op, lead, x, device);
  auto same = [&](const Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
    check_operand(op, name, t, IntRef(shape), x);
  };
  same(w, "weight_hh", {H, H});
  if (h0) same(*h0, "h0", {B, H});
  if (alpha) same(*alpha, "alpha", {H});
  return {T, B, H};
}

// The backward's grad_h (and u, with a leak) are read with h's dtype and layout.
inline void check_like_h(const char* op, const Tensor& h, const Tensor& grad_h, const Tensor& u,
                         bool has_alpha) {
  check_like(op, "grad_h", grad_h, h.sizes(), h);
  if (has_alpha) check_like(op, "u", u, h.sizes(), h, " when alpha is given");
}

inline bool parse_tanh(const std::string& s, const char* op) {
  MTS_CHECK(s == "tanh" || s == "relu", op, ": nonlinearity must be 'tanh' or 'relu', got '", s, "'");
  return s == "tanh";
}

HIDDEN_NAMESPACE_END(mts, clockwork)
