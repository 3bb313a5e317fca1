#pragma once
// The deep-transition ops' argument checks, shared by the CPU
// (deep_transition_rnn_cpu.cpp) and CUDA (deep_transition_rnn_cuda.cpp)
// registrations and the CUDA loop's host emulation.
#include <optional>
#include <string>

#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, deep)

struct Shape {
  int64_t T, B, H, L;
};

// Shapes, dtypes and the device (`device`: the backend's device type) of one call.
inline Shape check_args(const char* op, const char* lead, const Tensor& x, const Tensor& w,
                        const std::optional<Tensor>& h0, const std::optional<Tensor>& bias,
                        const std::optional<Tensor>& ws, const std::optional<Tensor>& alpha,
                        torch::headeronly::DeviceType device) {
  const auto [T, B, H] = check_sequence(op, lead, x, device);
  MTS_CHECK(w.dim() == 3 && w.size(0) >= 1, op, ": weight_hh must be 3-D (L, H, H) with L >= 1, got shape ",
            shape_str(w.sizes()));
  const int64_t L = w.size(0);
  auto same = [&](const Tensor& t, const char* name, std::initializer_list<int64_t> shape) {
    check_operand(op, name, t, IntRef(shape), x);
  };
  same(w, "weight_hh", {L, H, H});
  if (h0) same(*h0, "h0", {B, H});
  if (bias) same(*bias, "bias_hh", {L, H});
  if (ws) {
    MTS_CHECK(L >= 2, op, ": weight_shortcut needs a transition depth L >= 2, got L = ", L);
    same(*ws, "weight_shortcut", {H, H});
  }
  if (alpha) same(*alpha, "alpha", {H});
  return {T, B, H, L};
}

inline bool parse_tanh(const std::string& s, const char* op) {
  MTS_CHECK(s == "tanh" || s == "relu", op, ": nonlinearity must be 'tanh' or 'relu', got '", s, "'");
  return s == "tanh";
}

HIDDEN_NAMESPACE_END(mts, deep)
