// Schemas of every op, defined once. Backends register per dispatch key in
// csrc/<op>/; fake kernels and autograd are registered from Python
// (mts_kernels/ops/), so torch.compile traces the ops without graph breaks.
// Defined through the stable ABI (csrc/stable_util.h); kernels registered with the
// regular TORCH_LIBRARY_IMPL (csrc/rnn/) attach to these schemas all the same,
// since both end up in the one dispatcher.
#include <Python.h>

#include "stable_util.h"

extern "C" {
// Importing mts_kernels._C only has to load this shared object so the static
// STABLE_TORCH_LIBRARY initialisers run; there is no Python-level API in it.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

STABLE_TORCH_LIBRARY(mts_kernels, m) {
  // (B, T, D) operands of any strides; a/alpha is (B, T, D) or (D,) per channel;
  // h0 is (B, D) or None. Backwards return the gradient of every input, dh0
  // always as a (B, D) tensor. lengths (every op): None, or (B,) int64 on the
  // data's device with values in [0, T] (csrc/lengths.h has the semantics);
  // outputs at padded steps are 0 and grad_h there is ignored.
  m.def("linear_scan_fwd(Tensor a, Tensor x, Tensor? h0, bool reverse, Tensor? lengths=None) -> Tensor");
  m.def(
      "linear_scan_bwd(Tensor grad_h, Tensor a, Tensor h, Tensor? h0, bool reverse,"
      " Tensor? lengths=None) -> (Tensor, Tensor, Tensor)");
  m.def("leaky_integrate_fwd(Tensor v, Tensor alpha, Tensor? h0, bool reverse,"
        " Tensor? lengths=None) -> Tensor");
  m.def(
      "leaky_integrate_bwd(Tensor grad_h, Tensor v, Tensor alpha, Tensor h, Tensor? h0,"
      " bool reverse, Tensor? lengths=None) -> (Tensor, Tensor, Tensor)");

  // The input projection of a recurrent layer over the valid steps of a
  // time-major batch (csrc/projection/): x (T, B, K), weight (N, K), biases (N,),
  //   out[t, b] = x[t, b] W^T + bias_ih + bias_hh   for t < L_b (every t without
  //   lengths), 0 at padded steps;
  // and its weight gradients over the same steps: (sum g[t, b]^T x[t, b] (N, K),
  // sum g[t, b] (N,); an empty tensor when with_bias is false).
  m.def("input_projection(Tensor x, Tensor weight, Tensor? bias_ih, Tensor? bias_hh,"
        " Tensor? lengths=None) -> Tensor");
  m.def("input_projection_grads(Tensor grad, Tensor x, Tensor? lengths, bool with_bias)"
        " -> (Tensor, Tensor)");

  // The input projection of a clockwork layer at its modules' active steps only
  // (csrc/projection/clockwork_projection_cpu.cpp), with clockwork_rnn_fwd's clock
  // (module_sizes summing to N, periods, first_steps) and M[t, b, i] = 1 where
  // unit i's module is active at t and t < L_b, else 0:
  //   clockwork_projection:        M * (x W^T + bias_ih + bias_hh)   (T, B, N)
  //   clockwork_projection_dx:     (M * grad) W                      (T, B, K)
  //   clockwork_projection_grads:  ((M * grad)^T x (N, K), sum of M * grad (N,);
  //                                an empty tensor when with_bias is false)
  m.def("clockwork_projection(Tensor x, Tensor weight, Tensor? bias_ih, Tensor? bias_hh,"
        " int[] module_sizes, int[] periods, int[] first_steps, Tensor? lengths=None) -> Tensor");
  m.def("clockwork_projection_dx(Tensor grad, Tensor weight, int[] module_sizes, int[] periods,"
        " int[] first_steps, Tensor? lengths=None) -> Tensor");
  m.def("clockwork_projection_grads(Tensor grad, Tensor x, int[] module_sizes, int[] periods,"
        " int[] first_steps, Tensor? lengths, bool with_bias) -> (Tensor, Tensor)");

  // One layer and direction of the dense leaky recurrence (csrc/rnn/):
  //   z_t = p_t + W_hh h_{t-d} [+ W_skip h_{t-s}],  u_t = phi(z_t),
  //   h_t = alpha * h_{t-d} + (1 - alpha) * u_t       (alpha None: h_t = u_t)
  // p: (T, B, H) input projection with both biases; h_tau = h0 for tau <= 0.
  // skip = 0 means no skip connection (weight_skip None). The forward returns u
  // for the backward (an empty tensor when alpha is None: then u = h).
  m.def(
      "leaky_rnn_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? alpha, Tensor? weight_skip,"
      " int skip, int dilation, str nonlinearity, bool reverse, Tensor? lengths=None)"
      " -> (Tensor, Tensor)");
  // -> (dp, dweight_hh, dh0, dalpha, dweight_skip); dalpha / dweight_skip are empty
  // tensors when alpha / weight_skip are None.
  m.def(
      "leaky_rnn_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor u, Tensor? h0,"
      " Tensor? alpha, Tensor? weight_skip, int skip, int dilation, str nonlinearity,"
      " bool reverse, Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The linearised leaky recurrence in processing order k (x_{k-d} = start, or 0
  // with gain_inside, before the first d steps; keep: None, (H,) (alpha) or
  // (T, B, H) per step, read at k or, with gain_inside, at k - d):
  //   h_k = drive_k + keep_k h_{k-d} + gain_k (W x_{k-d} + Ws x_{k-s})               (gain_inside false)
  //   h_k = drive_k + keep_{k-d} h_{k-d} + W (gain_{k-d} x_{k-d}) + Ws (gain_{k-s} x_{k-s})  (true)
  // The first is leaky_rnn's tangent, the second (transposed weights, the other
  // processing order) its adjoint. h is 0 at padded steps.
  m.def(
      "leaky_rnn_tangent(Tensor drive, Tensor gain, Tensor weight_hh, Tensor? keep,"
      " Tensor? weight_skip, Tensor? start, int skip, int dilation, bool gain_inside,"
      " bool reverse, Tensor? lengths=None) -> Tensor");

  // The clockwork recurrence in one fused time loop (csrc/clockwork/): modules of
  // module_sizes units, fast to slow; module i is active at step t when
  // t >= first_steps[i] and (t - first_steps[i]) % periods[i] == 0 (the caller's
  // (-t0) mod T_i: the clock phase enters as the first active step, so a t0 of any
  // size never reaches int64), and then
  //   u_i = phi(p_i(t) + sum_{j >= i} W_ij h_j(t-1)),  h_i(t) = alpha_i h_i(t-1) + (1 - alpha_i) u_i
  // (only W's block-upper-triangular part is read); inactive modules hold. p:
  // (T, B, H) with both biases. The forward returns u (0 at inactive steps; an
  // empty tensor when alpha is None, then u = h at active steps).
  m.def(
      "clockwork_rnn_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? alpha, int[] module_sizes,"
      " int[] periods, int[] first_steps, str nonlinearity, Tensor? lengths=None) -> (Tensor, Tensor)");
  // -> (dp, dweight_hh, dh0, dalpha): dp is 0 at inactive steps, dweight_hh 0 in
  // the blocks j < i, dalpha an empty tensor when alpha is None.
  m.def(
      "clockwork_rnn_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor u, Tensor? h0,"
      " Tensor? alpha, int[] module_sizes, int[] periods, int[] first_steps, str nonlinearity,"
      " Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor)");

  // The sequential part of deep_transition_rnn's tangent (csrc/deep/deep_tangent_loop.h),
  // processing step k, x^0 = h_{k-1}, h_{-1} = start (zeros when None):
  //   a^l = x^{l-1} W_l^T (l = L: + h_{k-1} U^T),  x^l = gains[l] a^l,
  //   h_k = x^L + drive_k + keep h_{k-1}
  // -> (h, a): a (L, T, B, H) the pre-gain products; 0 at padded steps. Its
  // gradient: deep_transition_rnn_tangent_bwd -> (ddrive, dgains, dweight_hh, dkeep,
  // dweight_shortcut, dstart) (dkeep / dweight_shortcut empty when None).
  m.def(
      "deep_transition_rnn_tangent(Tensor drive, Tensor gains, Tensor weight_hh, Tensor? keep,"
      " Tensor? weight_shortcut, Tensor? start, bool reverse, Tensor? lengths=None) -> (Tensor, Tensor)");
  m.def(
      "deep_transition_rnn_tangent_bwd(Tensor grad_h, Tensor gains, Tensor weight_hh, Tensor? keep,"
      " Tensor? weight_shortcut, Tensor? start, Tensor h, Tensor a, bool reverse, Tensor? lengths=None)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // One layer and direction of the deep-transition recurrence (csrc/deep/), L =
  // weight_hh.size(0) >= 1 sub-layers per step, s^0_t = h_{t-1}:
  //   s^1_t = phi(W_1 h_{t-1} + p_t + b_1),  s^l_t = phi(W_l s^{l-1}_t + b_l)  (l = 2..L;
  //   weight_shortcut U, L >= 2: s^L_t also + U h_{t-1}),
  //   h_t = alpha * h_{t-1} + (1 - alpha) * s^L_t   (alpha None: h_t = s^L_t)
  // p: (T, B, H), W_ih x_t + b_ih; weight_hh (L, H, H); bias_hh (L, H). The forward
  // returns (h, s) with s (L, T, B, H) holding every s^l_t (0 at padded steps).
  m.def(
      "deep_transition_rnn_fwd(Tensor p, Tensor weight_hh, Tensor? h0, Tensor? bias_hh,"
      " Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse,"
      " Tensor? lengths=None) -> (Tensor, Tensor)");
  // -> (dp, dweight_hh, dbias_hh, dh0, dweight_shortcut, dalpha); dweight_shortcut /
  // dalpha are empty tensors when weight_shortcut / alpha are None.
  m.def(
      "deep_transition_rnn_bwd(Tensor grad_h, Tensor weight_hh, Tensor h, Tensor s, Tensor? h0,"
      " Tensor? weight_shortcut, Tensor? alpha, str nonlinearity, bool reverse,"
      " Tensor? lengths=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}
