// CUDA registration of the scan ops: fills the raw-pointer launch structs of
// scan_launch.h from prepared tensors and turns launch errors into exceptions.
// The kernels themselves live in scan_cuda_*.cu, which never see torch headers.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "scan_launch.h"
#include "scan_ops.h"

namespace mts {
namespace {

ScanDtype scan_dtype(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return ScanDtype::kFloat32;
    case at::kHalf: return ScanDtype::kFloat16;
    case at::kBFloat16: return ScanDtype::kBFloat16;
    default:
      TORCH_CHECK(false, "mts_kernels: the CUDA scan supports float32, float16 and bfloat16, got ",
                  t.scalar_type(), " (float64 runs on the CPU backend)");
  }
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ", cudaGetErrorString(err));
}

at::Tensor zeroed_workspace(int64_t bytes, const at::Tensor& like) {
  return at::zeros({std::max<int64_t>(bytes, 1)}, like.options().dtype(at::kByte));
}

struct CudaBackend {
  static at::Tensor empty_like(const at::Tensor& t) { return at::empty_like(t); }

  static void fwd(ScanFwd& f, bool reverse, bool leaky) {
    const c10::cuda::CUDAGuard guard(f.x.device());
    ScanFwdParams p{};
    p.B = f.B; p.T = f.T; p.D = f.D;
    const BTDView a = btd_view(f.a, reverse), x = btd_view(f.x, reverse), h = btd_view(f.h, reverse);
    p.a = a.ptr; p.a_sb = a.sb; p.a_st = a.st;
    p.x = x.ptr; p.x_sb = x.sb; p.x_st = x.st;
    p.h0 = f.h0.defined() ? f.h0.const_data_ptr() : nullptr; p.h0_sb = f.D;
    p.h = h.ptr; p.h_sb = h.sb; p.h_st = h.st;
    at::Tensor ws = zeroed_workspace(scan_fwd_cuda_workspace_bytes(f.B, f.T, f.D), f.x);
    check_cuda(scan_fwd_cuda(p, scan_dtype(f.x), leaky, ws.data_ptr(),
                             c10::cuda::getCurrentCUDAStream().stream()),
               "scan forward launch");
  }

  static at::Tensor bwd(ScanBwd& s, bool reverse, bool leaky) {
    const c10::cuda::CUDAGuard guard(s.h.device());
    ScanBwdParams p{};
    p.B = s.B; p.T = s.T; p.D = s.D;
    const BTDView g = btd_view(s.g, reverse), a = btd_view(s.a, reverse),
                  h = btd_view(s.h, reverse), dx = btd_view(s.dx, reverse);
    const BTDView x = s.x.defined() ? btd_view(s.x, reverse) : BTDView{nullptr, 0, 0};
    const BTDView da = s.da.defined() ? btd_view(s.da, reverse) : BTDView{nullptr, 0, 0};
    p.g = g.ptr; p.g_sb = g.sb; p.g_st = g.st;
    p.a = a.ptr; p.a_sb = a.sb; p.a_st = a.st;
    p.x = x.ptr; p.x_sb = x.sb; p.x_st = x.st;
    p.h = h.ptr; p.h_sb = h.sb; p.h_st = h.st;
    p.h0 = s.h0.defined() ? s.h0.const_data_ptr() : nullptr; p.h0_sb = s.D;
    p.dx = dx.ptr; p.dx_sb = dx.sb; p.dx_st = dx.st;
    p.da = da.ptr; p.da_sb = da.sb; p.da_st = da.st;
    p.dh0 = s.dh0.data_ptr();
    at::Tensor rows;
    if (s.per_channel) {
      rows = at::zeros({scan_bwd_cuda_partials(s.B, s.T, s.D), s.D},
                       s.h.options().dtype(at::kFloat));
      p.da_partial = rows.mutable_data_ptr<float>();
    }
    at::Tensor ws = zeroed_workspace(scan_bwd_cuda_workspace_bytes(s.B, s.T, s.D), s.h);
    check_cuda(scan_bwd_cuda(p, scan_dtype(s.h), leaky, s.per_channel, ws.data_ptr(),
                             c10::cuda::getCurrentCUDAStream().stream()),
               "scan backward launch");
    return s.per_channel ? rows.sum(0).to(s.a.scalar_type()) : at::Tensor();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) { ScanOps<CudaBackend>::register_impls(m); }

}  // namespace mts
