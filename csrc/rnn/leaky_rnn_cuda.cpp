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
// Variable lengths (leaky_rnn_launch.h): the persistent kernels map each row's
// steps to its own times; in CublasLoop the forward direction keeps its
// per-step (B, H) time rows (all rows of step k are at time k; the step kernel
// zeroes the rows that have ended), while reverse with lengths (rows of step k
// at different times L_b - 1 - k) runs the GEMMs on a ring of max(d, s) + 1
// (B, H) slots in processing order (forward: h_k; backward: the carries into
// delta_k), never on a repacked (T, B, H) copy.
//
// Environment, MTS_KERNELS_RNN_PERSISTENT (read at every call, so an A/B
// comparison can flip it between calls in one process):
//   0      CublasLoop always
//   grid   testing: persistent kernels with the units split over several blocks
//          (cooperative launch, grid barrier per step) whenever H > 4, so small
//          test problems exercise that path too (it is otherwise only taken
//          when W does not fit one block: H > ~240, or ~170 with W_skip)
//   other values, or unset: CudaLoop chooses.
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/generated/c_shim_cuda.h>
#include <torch/csrc/stable/accelerator.h>

#include <cstdlib>
#include <cstring>

#include "leaky_rnn_impl.h"
#include "leaky_rnn_launch.h"

HIDDEN_NAMESPACE_BEGIN(mts, rnn)
namespace {

enum class Mode { kCublas, kAuto, kForceGrid };

Mode persistent_mode() {
  const char* v = std::getenv("MTS_KERNELS_RNN_PERSISTENT");
  if (v == nullptr) return Mode::kAuto;
  if (std::strcmp(v, "0") == 0) return Mode::kCublas;
  return std::strcmp(v, "grid") == 0 ? Mode::kForceGrid : Mode::kAuto;
}

void check_cuda(cudaError_t err, const char* what) {
  MTS_CHECK(err == cudaSuccess, "mts_kernels: ", what, " failed: ",
            cudaGetErrorString(err));
}

cudaStream_t stream_of(const Tensor& t) {
  return static_cast<cudaStream_t>(current_cuda_stream(t.get_device()));
}

// A tensor the persistent kernels can take as is (none stands for an absent operand).
bool usable(const Tensor& t, const Device& dev) {
  return t.scalar_type() == ScalarType::Float && t.device() == dev && t.is_contiguous();
}
bool usable(const std::optional<Tensor>& t, const Device& dev) { return !t || usable(*t, dev); }

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

template <typename T>
const T* ptr(const Tensor& t) {
  return static_cast<const T*>(t.const_data_ptr());
}
template <typename T>
const T* ptr(const std::optional<Tensor>& t) {
  return t ? ptr<T>(*t) : nullptr;
}
template <typename T>
T* mut(const Tensor& t) {
  return static_cast<T*>(t.mutable_data_ptr());
}

// The loop beyond the persistent kernels' limits: per step the GEMM(s) through
// the C shim's addmm.out (cuBLAS; the stable ops have no accumulating GEMM) and
// one fused pointwise kernel, all on the current stream, with no host
// synchronisation (CUDA-graph capturable). delta is completed in place. The
// (B, H) rows of the (T, B, H) tensors are addressed as views from raw pointers.
struct CublasLoop {
  static void fwd(const Problem& pr, const Tensor& p, Tensor& h, std::optional<Tensor>& u) {
    dispatch_compute(p.scalar_type(), "leaky_rnn_fwd_cublas",
                     [&](auto tag) { fwd_typed<typename decltype(tag)::type>(pr, p, h, u); });
  }
  static void bwd(const Problem& pr, const Tensor& u, Tensor& delta, Tensor& e_all, Tensor& dh0) {
    dispatch_compute(u.scalar_type(), "leaky_rnn_bwd_cublas", [&](auto tag) {
      bwd_typed<typename decltype(tag)::type>(pr, u, delta, e_all, dh0);
    });
  }

  // (B, H): row b's sum of x over its first min(delay, L_b) processing steps.
  static Tensor window_sum(const Problem& pr, const Tensor& x_in, int64_t delay) {
    MTS_CHECK(pr.lengths.has_value(), "leaky_rnn: window_sum needs lengths");
    const Tensor x = as_contiguous(x_in);
    Tensor out = torch::stable::new_empty(x, {pr.s.B, pr.s.H});
    const torch::stable::accelerator::DeviceGuard guard(x.get_device());
    dispatch_compute(x.scalar_type(), "leaky_rnn_window_sum_cuda", [&](auto tag) {
      using T = typename decltype(tag)::type;
      LeakyRnnWindowSum<T> q{};
      q.Tn = pr.s.T;
      q.B = pr.s.B;
      q.H = pr.s.H;
      q.delay = delay;
      q.reverse = pr.reverse;
      q.lengths = ptr<int64_t>(pr.lengths);
      q.x = ptr<T>(x);
      q.out = mut<T>(out);
      check_cuda(leaky_rnn_window_sum_cuda(q, stream_of(x)), "leaky_rnn window sum launch");
    });
    return out;
  }

 private:
  // (rows, cols) row-major view of device memory shaped like `like`'s device and dtype.
  static Tensor view(const Tensor& like, const void* data, int64_t rows, int64_t cols) {
    return torch::stable::from_blob(const_cast<void*>(data), {rows, cols}, {cols, 1},
                                    like.device(), like.scalar_type());
  }
  // c = c + a m (cuBLAS)
  static void addmm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_addmm_out(c.get(), c.get(), a.get(), m.get(), 1.0, 1.0));
  }
  // c = a m (cuBLAS)
  static void mm(const Tensor& c, const Tensor& a, const Tensor& m) {
    TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_mm_out(c.get(), a.get(), m.get()));
  }
  static int64_t ring_slots(const Problem& pr) { return std::max(pr.dilation, pr.skip) + 1; }

  // The step kernels' parameters shared by both directions and time layouts
  // (Q = LeakyRnnStepFwd<T> or LeakyRnnStepBwd<T>).
  template <class Q, typename T>
  static Q step_params(const Problem& pr, int64_t k) {
    Q q{};
    q.n = pr.s.B * pr.s.H;
    q.H = pr.s.H;
    q.relu = pr.phi == Phi::kRelu;
    q.alpha = ptr<T>(pr.alpha);
    q.lengths = ptr<int64_t>(pr.lengths);
    q.k = k;
    q.Tn = pr.s.T;
    return q;
  }
  template <typename T>
  static LeakyRnnStepFwd<T> fwd_step(const Problem& pr, int64_t k, const T* hd) {
    LeakyRnnStepFwd<T> q = step_params<LeakyRnnStepFwd<T>, T>(pr, k);
    q.hd = hd;
    return q;
  }
  template <typename T>
  static LeakyRnnStepBwd<T> bwd_step(const Problem& pr, int64_t k, T* target) {
    LeakyRnnStepBwd<T> q = step_params<LeakyRnnStepBwd<T>, T>(pr, k);
    q.target = target;
    return q;
  }

  template <typename T>
  static void fwd_typed(const Problem& pr, const Tensor& p, Tensor& h, std::optional<Tensor>& u) {
    const Shape& s = pr.s;
    const int64_t BH = s.B * s.H;
    const torch::stable::accelerator::DeviceGuard guard(p.get_device());
    const cudaStream_t stream = stream_of(p);
    const Tensor wt = torch::stable::transpose(pr.w, 0, 1);
    // W_skip^T, read only with skip (else an unused view of W^T: a plain Tensor
    // rather than an optional, which GCC 12 misreads as maybe-uninitialized)
    const Tensor wst = torch::stable::transpose(pr.w_skip ? *pr.w_skip : pr.w, 0, 1);
    T* hp = mut<T>(h);
    T* up = u ? mut<T>(*u) : hp;  // the pre-activation, then u_t, in place
    const T* h0 = ptr<T>(pr.h0);
    if (pr.ragged_start()) {
      // Ring slot k % R holds h_k of every row (processing order); the product
      // goes to a (B, H) scratch and the step kernel adds p at each row's time.
      const int64_t R = ring_slots(pr);
      const Tensor ring = torch::stable::new_empty(p, {R, s.B, s.H});
      const Tensor zbuf = torch::stable::new_empty(p, {s.B, s.H});
      T* rp = mut<T>(ring);
      auto slot = [&](int64_t k) { return rp + (k % R) * BH; };
      for (int64_t k = 0; k < s.T; ++k) {
        const T* hd = k >= pr.dilation ? slot(k - pr.dilation) : h0;
        mm(zbuf, view(p, hd, s.B, s.H), wt);
        if (pr.w_skip) addmm(zbuf, view(p, k >= pr.skip ? slot(k - pr.skip) : h0, s.B, s.H), wst);
        LeakyRnnStepFwd<T> q = fwd_step<T>(pr, k, hd);
        q.z = mut<T>(zbuf);
        q.p_all = ptr<T>(p);
        q.u_all = up;
        q.h_all = hp;
        q.ring = slot(k);
        check_cuda(leaky_rnn_step_fwd_cuda(q, stream), "leaky_rnn forward step launch");
      }
      return;
    }
    auto h_at = [&](int64_t k) { return hp + time_of(k, s.T, pr.reverse) * BH; };
    for (int64_t k = 0; k < s.T; ++k) {
      const int64_t off = time_of(k, s.T, pr.reverse) * BH;
      const T* hd = k >= pr.dilation ? h_at(k - pr.dilation) : h0;
      const Tensor z = view(p, up + off, s.B, s.H);
      TORCH_ERROR_CODE_CHECK(aoti_torch_cuda_addmm_out(z.get(), view(p, ptr<T>(p) + off, s.B, s.H).get(),
                                                       view(p, hd, s.B, s.H).get(), wt.get(), 1.0,
                                                       1.0));
      if (pr.w_skip) addmm(z, view(p, k >= pr.skip ? h_at(k - pr.skip) : h0, s.B, s.H), wst);
      // With lengths (forward direction) every row of step k is at time k.
      LeakyRnnStepFwd<T> q = fwd_step<T>(pr, k, hd);
      q.z = up + off;
      q.h = hp + off;
      check_cuda(leaky_rnn_step_fwd_cuda(q, stream), "leaky_rnn forward step launch");
    }
  }

  template <typename T>
  static void bwd_typed(const Problem& pr, const Tensor& u, Tensor& delta, Tensor& e_all,
                        Tensor& dh0) {
    const Shape& s = pr.s;
    const int64_t BH = s.B * s.H;
    const torch::stable::accelerator::DeviceGuard guard(u.get_device());
    const cudaStream_t stream = stream_of(u);
    T* dp = mut<T>(delta);
    T* ep = mut<T>(e_all);
    T* dh0p = mut<T>(dh0);
    if (pr.ragged_start()) {
      // Ring slot k % R accumulates the carries into delta of step k of every row
      // (processing order; contributions from before the start go to dh0); the
      // step kernel adds it to delta at each row's time and zeroes the slot.
      const int64_t R = ring_slots(pr);
      const Tensor ring = torch::stable::new_zeros(u, {R, s.B, s.H});
      const Tensor ebuf = torch::stable::new_empty(u, {s.B, s.H});
      T* rp = mut<T>(ring);
      auto slot = [&](int64_t k) { return k >= 0 ? rp + (k % R) * BH : dh0p; };
      for (int64_t k = s.T - 1; k >= 0; --k) {
        T* target = slot(k - pr.dilation);
        LeakyRnnStepBwd<T> q = bwd_step<T>(pr, k, target);
        q.e = mut<T>(ebuf);
        q.delta_all = dp;
        q.u_all = ptr<T>(u);
        q.e_all = ep;
        q.carry = slot(k);
        check_cuda(leaky_rnn_step_bwd_cuda(q, stream), "leaky_rnn backward step launch");
        addmm(view(u, target, s.B, s.H), ebuf, pr.w);  // carry into delta_{k-d} += e_k W
        if (pr.w_skip) addmm(view(u, slot(k - pr.skip), s.B, s.H), ebuf, *pr.w_skip);
      }
      return;
    }
    auto delta_at = [&](int64_t k) {
      return k >= 0 ? dp + time_of(k, s.T, pr.reverse) * BH : dh0p;
    };
    for (int64_t k = s.T - 1; k >= 0; --k) {
      const int64_t off = time_of(k, s.T, pr.reverse) * BH;
      T* target = delta_at(k - pr.dilation);
      // With lengths (forward direction) ended rows drop grad_h and get e = 0.
      LeakyRnnStepBwd<T> q = bwd_step<T>(pr, k, target);
      q.delta = dp + off;
      q.u = ptr<T>(u) + off;
      q.e = ep + off;
      check_cuda(leaky_rnn_step_bwd_cuda(q, stream), "leaky_rnn backward step launch");
      const Tensor e = view(u, ep + off, s.B, s.H);
      addmm(view(u, target, s.B, s.H), e, pr.w);  // dL/dh_{t-d} += e_t W
      if (pr.w_skip) addmm(view(u, delta_at(k - pr.skip), s.B, s.H), e, *pr.w_skip);
    }
  }
};

struct CudaLoop : LoopDefaults {
  static Tensor window_sum(const Problem& pr, const Tensor& x, int64_t delay) {
    return CublasLoop::window_sum(pr, x, delay);
  }
  static void fwd(const Problem& pr, const Tensor& p, Tensor& h, std::optional<Tensor>& u) {
    const Device dev = p.device();
    const Mode mode = persistent_mode();
    const bool take = mode != Mode::kCublas && usable(p, dev) && usable(h, dev) &&
                      (!pr.leak() || usable(u, dev)) && usable(pr.w, dev) &&
                      usable(pr.w_skip, dev) && usable(pr.h0, dev) && usable(pr.alpha, dev);
    if (take) {
      const torch::stable::accelerator::DeviceGuard guard(p.get_device());
      LeakyRnnFwdParams q{};
      q.s = shape_of(pr, mode);
      q.p = ptr<float>(p);
      q.w = ptr<float>(pr.w);
      q.w_skip = ptr<float>(pr.w_skip);
      q.h0 = ptr<float>(pr.h0);
      q.alpha = ptr<float>(pr.alpha);
      q.h = mut<float>(h);
      q.u = u ? mut<float>(*u) : nullptr;
      q.lengths = ptr<int64_t>(pr.lengths);
      bool launched = false;
      check_cuda(leaky_rnn_fwd_cuda(q, stream_of(p), &launched),
                 "leaky_rnn persistent forward launch");
      if (launched) return;
    }
    CublasLoop::fwd(pr, p, h, u);
  }

  static void bwd(const Problem& pr, const Tensor& u, Tensor& delta, Tensor& e_all, Tensor& dh0) {
    const Device dev = u.device();
    const Mode mode = persistent_mode();
    const bool take = mode != Mode::kCublas && usable(u, dev) && usable(delta, dev) &&
                      usable(e_all, dev) && usable(dh0, dev) && usable(pr.w, dev) &&
                      usable(pr.w_skip, dev) && usable(pr.alpha, dev);
    if (take) {
      const torch::stable::accelerator::DeviceGuard guard(u.get_device());
      LeakyRnnBwdParams q{};
      q.s = shape_of(pr, mode);
      q.u = ptr<float>(u);
      q.w = ptr<float>(pr.w);
      q.w_skip = ptr<float>(pr.w_skip);
      q.alpha = ptr<float>(pr.alpha);
      q.delta = mut<float>(delta);
      q.e = mut<float>(e_all);
      q.dh0 = mut<float>(dh0);
      q.lengths = ptr<int64_t>(pr.lengths);
      bool launched = false;
      check_cuda(leaky_rnn_bwd_cuda(q, stream_of(u), &launched),
                 "leaky_rnn persistent backward launch");
      if (launched) return;
    }
    CublasLoop::bwd(pr, u, delta, e_all, dh0);
  }
};

}  // namespace
HIDDEN_NAMESPACE_END(mts, rnn)

STABLE_TORCH_LIBRARY_IMPL(mts_kernels, CUDA, m) {
  m.impl("leaky_rnn_fwd", TORCH_BOX(&mts::rnn::leaky_rnn_fwd<mts::rnn::CudaLoop>));
  m.impl("leaky_rnn_bwd", TORCH_BOX(&mts::rnn::leaky_rnn_bwd<mts::rnn::CudaLoop>));
}
