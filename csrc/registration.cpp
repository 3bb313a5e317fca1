// Schemas of every op, defined once. Backends register per dispatch key in
// csrc/<op>/; fake kernels and autograd are registered from Python
// (mts_kernels/ops/), so torch.compile traces the ops without graph breaks.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing mts_kernels._C only has to load this shared object so the static
// TORCH_LIBRARY initialisers run; there is no Python-level API in it.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(mts_kernels, m) {
  // (B, T, D) operands of any strides; a/alpha is (B, T, D) or (D,) per channel;
  // h0 is (B, D) or None. Backwards return the gradient of every input, dh0
  // always as a (B, D) tensor.
  m.def("linear_scan_fwd(Tensor a, Tensor x, Tensor? h0, bool reverse) -> Tensor");
  m.def(
      "linear_scan_bwd(Tensor grad_h, Tensor a, Tensor h, Tensor? h0, bool reverse)"
      " -> (Tensor, Tensor, Tensor)");
  m.def("leaky_integrate_fwd(Tensor v, Tensor alpha, Tensor? h0, bool reverse) -> Tensor");
  m.def(
      "leaky_integrate_bwd(Tensor grad_h, Tensor v, Tensor alpha, Tensor h, Tensor? h0,"
      " bool reverse) -> (Tensor, Tensor, Tensor)");
}
