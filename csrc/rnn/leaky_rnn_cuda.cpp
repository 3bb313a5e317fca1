// CUDA registration of the dense leaky recurrence: the same loop as on the CPU
// (leaky_rnn_impl.h), each step one cuBLAS GEMM plus in-place pointwise kernels on
// the current stream, with no host synchronisation inside the loop.
#include <c10/cuda/CUDAGuard.h>

#include "leaky_rnn_impl.h"

namespace {

std::tuple<at::Tensor, at::Tensor> fwd_cuda(const at::Tensor& p, const at::Tensor& w,
                                            const c10::optional<at::Tensor>& h0,
                                            const c10::optional<at::Tensor>& alpha,
                                            const c10::optional<at::Tensor>& w_skip, int64_t skip,
                                            int64_t dilation, c10::string_view nonlinearity,
                                            bool reverse) {
  const c10::cuda::CUDAGuard guard(p.device());
  return mts::rnn::leaky_rnn_fwd(p, w, h0, alpha, w_skip, skip, dilation, nonlinearity, reverse);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd_cuda(
    const at::Tensor& grad_h, const at::Tensor& w, const at::Tensor& h, const at::Tensor& u,
    const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& alpha,
    const c10::optional<at::Tensor>& w_skip, int64_t skip, int64_t dilation,
    c10::string_view nonlinearity, bool reverse) {
  const c10::cuda::CUDAGuard guard(h.device());
  return mts::rnn::leaky_rnn_bwd(grad_h, w, h, u, h0, alpha, w_skip, skip, dilation, nonlinearity,
                                 reverse);
}

}  // namespace

TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("leaky_rnn_fwd", &fwd_cuda);
  m.impl("leaky_rnn_bwd", &bwd_cuda);
}
