// CUDA registration of the dense leaky recurrence. Two time loops, picked per
// call by CudaLoop:
//
//  * Persistent kernels (leaky_rnn_cuda_fwd.cu / _bwd.cu, design and limits in
//    leaky_rnn_cuda_kernels.cuh): the whole forward, or the whole backward time
//    loop, is ONE kernel launch that keeps W_hh (and W_skip) in shared memory
//    for all T steps, with a grid-wide barrier per step when the hidden units
//    are split over several blocks. Used for float32 compute (float16 /
//    bfloat16 inputs run in float32, see compute() in leaky_rnn_impl.h) when
//    the weights fit on chip: about n_mats * H^2 * 4 bytes <= SMs x opt-in
//    shared memory per block (H <= 2640, or 1816 with W_skip, on H100; 2084 /
//    1304 on A100; decided at run time from the device's properties), B <=
//    2^20, and the device supports cooperative launches when the units must be
//    split.
//  * CublasLoop otherwise: per step one cuBLAS GEMM (two with skip) and one
//    fused pointwise kernel (leaky_rnn_cuda_step.cu) on the current stream.
//    float64 always takes this loop.
//
// Neither synchronises with the host inside the loop.
//
// Environment, MTS_KERNELS_RNN_PERSISTENT (read at every call, so an A/B
// comparison can flip it between calls in one process):
//   0      CublasLoop always
//   grid   testing: persistent kernels with the units split over several blocks
//          (cooperative launch, grid barrier per step) whenever H > 4, so small
//          test problems exercise that path too (it is otherwise only taken
//          when W does not fit one block: H > ~240, or ~170 with W_skip)
//   other values, or unset: CudaLoop chooses.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdlib>
#include <cstring>

#include "leaky_rnn_impl.h"
#include "leaky_rnn_launch.h"

namespace mts {
namespace rnn {
namespace {

enum class Mode { kCublas, kAuto, kForceGrid };

Mode persistent_mode() {
  const char* v = std::getenv("MTS_KERNELS_RNN_PERSISTENT");
  if (v == nullptr) return Mode::kAuto;
  if (std::strcmp(v, "0") == 0) return Mode::kCublas;
  return std::strcmp(v, "grid") == 0 ? Mode::kForceGrid : Mode::kAuto;
}

void check_cuda(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ", cudaGetErrorString(err));
}

// A tensor the persistent kernels can take as is (an undefined one stands for
// an absent operand).
bool usable(const at::Tensor& t, const at::Device& dev) {
  return !t.defined() ||
         (t.scalar_type() == at::kFloat && t.device() == dev && t.is_contiguous());
}

LeakyRnnCudaShape shape_of(const Problem& pr, Mode mode) {
  LeakyRnnCudaShape s{};
  s.T = pr.s.T;
  s.B = pr.s.B;
  s.H = pr.s.H;
  s.skip = pr.skip;
  s.dilation = pr.dilation;
  s.reverse = pr.reverse;
  s.relu = pr.phi == Phi::kRelu;
  s.force_grid_sync = mode == Mode::kForceGrid;
  return s;
}

const float* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<float>() : nullptr;
}

// The loop beyond the persistent kernels' limits: per step the GEMM(s) through
// ATen (cuBLAS) and one fused pointwise kernel, all on the current stream, with
// no host synchronisation (CUDA-graph capturable). delta is completed in place.
struct CublasLoop {
  static void fwd(const Problem& pr, const at::Tensor& p, at::Tensor& h, at::Tensor& u) {
    AT_DISPATCH_FLOATING_TYPES(p.scalar_type(), "leaky_rnn_fwd_cublas",
                               [&] { fwd_typed<scalar_t>(pr, p, h, u); });
  }
  static void bwd(const Problem& pr, const at::Tensor& u, at::Tensor& delta, at::Tensor& e_all,
                  at::Tensor& dh0) {
    AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "leaky_rnn_bwd_cublas",
                               [&] { bwd_typed<scalar_t>(pr, u, delta, e_all, dh0); });
  }

 private:
  template <typename T>
  static void fwd_typed(const Problem& pr, const at::Tensor& p, at::Tensor& h, at::Tensor& u) {
    const Shape& s = pr.s;
    const c10::cuda::CUDAGuard guard(p.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const at::Tensor wt = pr.w.t();
    const at::Tensor wst = pr.skip > 0 ? pr.w_skip.t() : at::Tensor();
    for (int64_t k = 0; k < s.T; ++k) {
      const int64_t t = time_of(k, s.T, pr.reverse);
      const at::Tensor hd = k >= pr.dilation ? h[time_of(k - pr.dilation, s.T, pr.reverse)] : pr.h0;
      at::Tensor z = pr.leak ? u[t] : h[t];  // pre-activation, then u_t, in place
      at::addmm_out(z, p[t], hd, wt);
      if (pr.skip > 0) z.addmm_(k >= pr.skip ? h[time_of(k - pr.skip, s.T, pr.reverse)] : pr.h0, wst);
      LeakyRnnStepFwd<T> q{};
      q.n = s.B * s.H;
      q.H = s.H;
      q.relu = pr.phi == Phi::kRelu;
      q.alpha = pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr;
      q.hd = hd.const_data_ptr<T>();
      q.z = z.mutable_data_ptr<T>();
      q.h = h[t].mutable_data_ptr<T>();
      check_cuda(leaky_rnn_step_fwd_cuda(q, stream), "leaky_rnn forward step launch");
    }
  }

  template <typename T>
  static void bwd_typed(const Problem& pr, const at::Tensor& u, at::Tensor& delta,
                        at::Tensor& e_all, at::Tensor& dh0) {
    const Shape& s = pr.s;
    const c10::cuda::CUDAGuard guard(u.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    for (int64_t k = s.T - 1; k >= 0; --k) {
      const int64_t t = time_of(k, s.T, pr.reverse);
      at::Tensor e = e_all[t];
      at::Tensor target = k >= pr.dilation ? delta[time_of(k - pr.dilation, s.T, pr.reverse)] : dh0;
      LeakyRnnStepBwd<T> q{};
      q.n = s.B * s.H;
      q.H = s.H;
      q.relu = pr.phi == Phi::kRelu;
      q.alpha = pr.leak ? pr.alpha.const_data_ptr<T>() : nullptr;
      q.delta = delta[t].const_data_ptr<T>();
      q.u = u[t].const_data_ptr<T>();
      q.e = e.mutable_data_ptr<T>();
      q.target = target.mutable_data_ptr<T>();
      check_cuda(leaky_rnn_step_bwd_cuda(q, stream), "leaky_rnn backward step launch");
      target.addmm_(e, pr.w);  // dL/dh_{t-d} += e_t W
      if (pr.skip > 0) {
        at::Tensor target_s = k >= pr.skip ? delta[time_of(k - pr.skip, s.T, pr.reverse)] : dh0;
        target_s.addmm_(e, pr.w_skip);
      }
    }
  }
};

struct CudaLoop : LoopDefaults {
  static void fwd(const Problem& pr, const at::Tensor& p, at::Tensor& h, at::Tensor& u) {
    const at::Device dev = p.device();
    const Mode mode = persistent_mode();
    const bool take = mode != Mode::kCublas && p.scalar_type() == at::kFloat && usable(p, dev) &&
                      usable(h, dev) && (!pr.leak || (u.defined() && usable(u, dev))) &&
                      usable(pr.w, dev) && usable(pr.w_skip, dev) && usable(pr.h0, dev) &&
                      (!pr.leak || usable(pr.alpha, dev));
    if (take) {
      const c10::cuda::CUDAGuard guard(dev);
      LeakyRnnFwdParams q{};
      q.s = shape_of(pr, mode);
      q.p = p.const_data_ptr<float>();
      q.w = pr.w.const_data_ptr<float>();
      q.w_skip = pr.skip > 0 ? ptr_or_null(pr.w_skip) : nullptr;
      q.h0 = pr.h0.const_data_ptr<float>();
      q.alpha = pr.leak ? pr.alpha.const_data_ptr<float>() : nullptr;
      q.h = h.mutable_data_ptr<float>();
      q.u = pr.leak ? u.mutable_data_ptr<float>() : nullptr;
      bool launched = false;
      check_cuda(leaky_rnn_fwd_cuda(q, c10::cuda::getCurrentCUDAStream().stream(), &launched),
                 "leaky_rnn persistent forward launch");
      if (launched) return;
    }
    CublasLoop::fwd(pr, p, h, u);
  }

  static void bwd(const Problem& pr, const at::Tensor& u, at::Tensor& delta, at::Tensor& e_all,
                  at::Tensor& dh0) {
    const at::Device dev = u.device();
    const Mode mode = persistent_mode();
    const bool take = mode != Mode::kCublas && u.scalar_type() == at::kFloat && usable(u, dev) &&
                      usable(delta, dev) && usable(e_all, dev) && usable(dh0, dev) &&
                      usable(pr.w, dev) && usable(pr.w_skip, dev) &&
                      (!pr.leak || usable(pr.alpha, dev));
    if (take) {
      const c10::cuda::CUDAGuard guard(dev);
      LeakyRnnBwdParams q{};
      q.s = shape_of(pr, mode);
      q.u = u.const_data_ptr<float>();
      q.w = pr.w.const_data_ptr<float>();
      q.w_skip = pr.skip > 0 ? ptr_or_null(pr.w_skip) : nullptr;
      q.alpha = pr.leak ? pr.alpha.const_data_ptr<float>() : nullptr;
      q.delta = delta.mutable_data_ptr<float>();
      q.e = e_all.mutable_data_ptr<float>();
      q.dh0 = dh0.mutable_data_ptr<float>();
      bool launched = false;
      check_cuda(leaky_rnn_bwd_cuda(q, c10::cuda::getCurrentCUDAStream().stream(), &launched),
                 "leaky_rnn persistent backward launch");
      if (launched) return;
    }
    CublasLoop::bwd(pr, u, delta, e_all, dh0);
  }
};

}  // namespace
}  // namespace rnn
}  // namespace mts

TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) { mts::rnn::register_impls<mts::rnn::CudaLoop>(m); }
