#pragma once
// leaky_rnn_tangent's argument checks, shared by its CPU registration
// (leaky_rnn_cpu.cpp) and the GPU loop (tangent_loop.h). Returns {T, B, H}.
#include <array>
#include <optional>

#include "../lengths.h"
#include "../stable_util.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)

inline std::array<int64_t, 3> check_tangent_args(const char* op, const Tensor& drive, const Tensor& gain,
                                                 const Tensor& w, const std::optional<Tensor>& keep,
                                                 const std::optional<Tensor>& w_skip,
                                                 const std::optional<Tensor>& start, int64_t skip,
                                                 int64_t dilation, bool gain_inside,
                                                 const std::optional<Tensor>& lengths,
                                                 torch::headeronly::DeviceType device) {
  const auto [T, B, H] = check_sequence(op, "drive", drive, device);
  check_operand(op, "gain", gain, {T, B, H}, drive);
  check_operand(op, "weight_hh", w, {H, H}, drive);
  if (keep && keep->dim() == 3)
    check_operand(op, "keep", *keep, {T, B, H}, drive);
  else if (keep)
    check_operand(op, "keep", *keep, {H}, drive);
  if (start) check_operand(op, "start", *start, {B, H}, drive);
  MTS_CHECK(skip >= 0 && dilation >= 1, op, ": skip must be >= 0 and dilation >= 1, got ", skip, " and ",
            dilation);
  MTS_CHECK((skip > 0) == w_skip.has_value(), op, ": weight_skip must be given exactly when skip > 0");
  if (w_skip) check_operand(op, "weight_skip", *w_skip, {H, H}, drive);
  MTS_CHECK(!(gain_inside && start), op, ": gain_inside takes no start state");
  check_lengths(op, lengths, B, drive.device());
  return {T, B, H};
}

HIDDEN_NAMESPACE_END(mts, rnn)
