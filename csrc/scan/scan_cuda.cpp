// CUDA registration of the scan ops: fills the raw-pointer launch structs of
// scan_launch.h from prepared tensors and turns launch errors into exceptions.
// The kernels themselves live in scan_cuda_*.cu, which never see torch headers.
// Stable ABI only (csrc/stable_util.h); setup.py defines USE_CUDA for the shim's
// CUDA stream call.
#include <torch/csrc/stable/accelerator.h>

#include <algorithm>

#include "scan_launch.h"
#include "scan_ops.h"

HIDDEN_NAMESPACE_BEGIN(mts)
namespace {

ScanDtype scan_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case ScalarType::Float: return ScanDtype::kFloat32;
    case ScalarType::Half: return ScanDtype::kFloat16;
    case ScalarType::BFloat16: return ScanDtype::kBFloat16;
    default: break;
  }
  throw std::runtime_error(detail::cat("mts_kernels: the CUDA scan supports float32, float16 and ",
                                       "bfloat16, got ", t.scalar_type(),
                                       " (float64 runs on the CPU backend)"));
}

void check_cuda(cudaError_t err, const char* what) {
  MTS_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ", cudaGetErrorString(err));
}

Tensor zeroed_workspace(int64_t bytes, const Tensor& like) {
  return torch::stable::new_zeros(like, {std::max<int64_t>(bytes, 1)}, ScalarType::Byte);
}

cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_cuda_stream(t.get_device_index()));
}

struct CudaBackend {
  static Tensor empty_like(const Tensor& t) { return torch::stable::empty_like(t); }

  static void fwd(ScanFwd& f, bool reverse, bool leaky) {
    const torch::stable::accelerator::DeviceGuard guard(f.x.get_device_index());
    ScanFwdParams p{};
    p.B = f.B; p.T = f.T; p.D = f.D;
    const BTDView a = btd_view(f.a, reverse), x = btd_view(f.x, reverse), h = btd_view(f.h, reverse);
    p.a = a.ptr; p.a_sb = a.sb; p.a_st = a.st;
    p.x = x.ptr; p.x_sb = x.sb; p.x_st = x.st;
    p.h0 = data_or_null(f.h0); p.h0_sb = f.D;
    p.h = h.ptr; p.h_sb = h.sb; p.h_st = h.st;
    p.lengths = static_cast<const int64_t*>(data_or_null(f.lengths));
    p.len_reversed = reverse;
    Tensor ws = zeroed_workspace(scan_fwd_cuda_workspace_bytes(f.B, f.T, f.D), f.x);
    check_cuda(scan_fwd_cuda(p, scan_dtype(f.x), leaky, ws.data_ptr(), stream_of(f.x)),
               "scan forward launch");
  }

  static std::optional<Tensor> bwd(ScanBwd& s, bool reverse, bool leaky) {
    const torch::stable::accelerator::DeviceGuard guard(s.h.get_device_index());
    ScanBwdParams p{};
    p.B = s.B; p.T = s.T; p.D = s.D;
    const BTDView g = btd_view(s.g, reverse), a = btd_view(s.a, reverse),
                  h = btd_view(s.h, reverse), dx = btd_view(s.dx, reverse);
    const BTDView x = btd_view_or_null(s.x, reverse);
    const BTDView da = btd_view_or_null(s.da, reverse);
    p.g = g.ptr; p.g_sb = g.sb; p.g_st = g.st;
    p.a = a.ptr; p.a_sb = a.sb; p.a_st = a.st;
    p.x = x.ptr; p.x_sb = x.sb; p.x_st = x.st;
    p.h = h.ptr; p.h_sb = h.sb; p.h_st = h.st;
    p.h0 = data_or_null(s.h0); p.h0_sb = s.D;
    p.dx = dx.ptr; p.dx_sb = dx.sb; p.dx_st = dx.st;
    p.da = da.ptr; p.da_sb = da.sb; p.da_st = da.st;
    p.dh0 = s.dh0.data_ptr();
    p.lengths = static_cast<const int64_t*>(data_or_null(s.lengths));
    p.len_reversed = reverse;
    std::optional<Tensor> rows;
    if (s.per_channel) {
      rows = torch::stable::new_zeros(s.h, {scan_bwd_cuda_partials(s.B, s.T, s.D), s.D},
                                      ScalarType::Float);
      p.da_partial = static_cast<float*>(rows->mutable_data_ptr());
    }
    Tensor ws = zeroed_workspace(scan_bwd_cuda_workspace_bytes(s.B, s.T, s.D), s.h);
    check_cuda(scan_bwd_cuda(p, scan_dtype(s.h), leaky, s.per_channel, ws.data_ptr(),
                             stream_of(s.h)),
               "scan backward launch");
    if (!rows.has_value()) return std::nullopt;
    return sum_rows_to(*rows, s.a.scalar_type());
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) { ScanOps<CudaBackend>::register_impls(m); }

HIDDEN_NAMESPACE_END(mts)
